"""Atomic JSON files and advisory locks: a reader never sees half a record."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from mvm.errors import StateError


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a file that replaces ``path`` (temp file + fsync + rename) only if
    the block completes; on any error the temp file is removed and ``path`` is
    untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Any, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path, mode) as f:
        f.write(json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")


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
