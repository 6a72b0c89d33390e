"""Typed messages of the agent protocol: what the guest sends, validated.

Guest messages are untrusted input on the host, so every reply is checked
into a typed object here (types, ranges, lengths) before anything else reads
it; a bad one is a :class:`~mvm.agent.codec.ProtocolError`.  The two on
``mvmctl exec``'s path (:class:`Hello`, :class:`ExecResult`) are plain slotted
classes; status and directory listings are dataclasses in :mod:`.models`.
"""

from __future__ import annotations

from mvm.agent.codec import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
MAX_NAME = 255
MAX_ENTRIES = 10000


def _int(msg: dict[str, Any], key: str, lo: int, hi: int, default: int | None = None) -> int:
    v = msg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProtocolError(f"the guest agent sent a bad {key!r} in {msg.get('op')!r}")
    return v


def _str(msg: dict[str, Any], key: str, cap: int = MAX_NAME, default: str | None = None) -> str:
    v = msg.get(key, default)
    if not isinstance(v, str) or len(v) > cap:
        raise ProtocolError(f"the guest agent sent a bad {key!r} in {msg.get('op')!r}")
    return v


class Hello:
    """The agent's greeting: protocol version, sealed or not, the verbs it serves."""

    __slots__ = ("nonce", "sealed", "verbs", "version")

    def __init__(self, version: int, sealed: bool, verbs: tuple[str, ...], nonce: int) -> None:
        self.version, self.sealed, self.verbs, self.nonce = version, sealed, verbs, nonce

    def __repr__(self) -> str:
        return f"Hello(version={self.version}, sealed={self.sealed}, verbs={self.verbs})"

    @classmethod
    def parse(cls, msg: dict[str, Any]) -> Hello:
        verbs = msg.get("verbs", [])
        ok = isinstance(verbs, list) and all(isinstance(v, str) and len(v) < 32 for v in verbs)
        if not ok:
            raise ProtocolError("the guest agent sent a bad verb list")
        sealed = msg.get("sealed")
        if not isinstance(sealed, bool):
            raise ProtocolError("the guest agent's hello lacks 'sealed'")
        return cls(_int(msg, "version", 0, 1 << 16), sealed, tuple(verbs[:64]),
                   _int(msg, "nonce", -1, (1 << 62)))  # fmt: skip


class ExecResult:
    """A finished command: its exit code (128+N when killed by signal N) and, when
    captured, its stdout and stderr."""

    __slots__ = ("code", "signal", "stderr", "stdout")

    def __init__(self, code: int, signal: int, stdout: bytes = b"", stderr: bytes = b"") -> None:
        self.code, self.signal, self.stdout, self.stderr = code, signal, stdout, stderr

    def __repr__(self) -> str:
        return (f"ExecResult(code={self.code}, signal={self.signal}, "
                f"stdout={self.stdout!r:.60}, stderr={self.stderr!r:.60})")  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExecResult):
            return NotImplemented
        return (self.code, self.signal, self.stdout, self.stderr) == (
            other.code, other.signal, other.stdout, other.stderr)  # fmt: skip

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def parse(cls, msg: dict[str, Any], stdout: bytes = b"", stderr: bytes = b"") -> ExecResult:
        return cls(_int(msg, "code", 0, 255), _int(msg, "signal", 0, 64, 0), stdout, stderr)


def error_text(msg: dict[str, Any]) -> str:
    """An error message from the guest, made safe to print on one line."""
    text = msg.get("message")
    if not isinstance(text, str):
        return "the guest agent reported an error"
    return "".join(c if c.isprintable() else "?" for c in text[:500])
