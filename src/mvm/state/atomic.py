"""Atomic JSON files and advisory locks: a reader never sees half a record."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mvm.errors import StateError


def write_json(path: Path, data: Any, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable state file ({exc})") from exc


@contextlib.contextmanager
def locked(path: Path, *, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(f, flags)
        except BlockingIOError as exc:
            raise StateError(f"{path} is locked by another mvmctl") from exc
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
