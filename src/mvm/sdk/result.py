"""What a command in a sandbox gives back: a result, or chunks while it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CommandResult:
    """A finished command: its exit code (128 + N when killed by signal N, as a
    shell reports it), and its stdout and stderr, kept apart, as bytes and text."""

    exit_code: int
    stdout_bytes: bytes
    stderr_bytes: bytes
    signal: int = 0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_json(self) -> dict[str, object]:
        return {"exit_code": self.exit_code, "signal": self.signal,
                "stdout": self.stdout, "stderr": self.stderr}  # fmt: skip


@dataclass(frozen=True)
class Chunk:
    """A piece of a running command's output."""

    stream: Literal["stdout", "stderr"]
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")
