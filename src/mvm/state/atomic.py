"""Atomic JSON files and advisory locks: a reader never sees half a record."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from mvm.errors import StateError


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a file that replaces ``path`` (temp file + fsync + rename) only if
    the block completes; on any error the temp file is removed and ``path`` is
    untouched."""
    if not path.parent.is_dir():
        from mvm.paths import ensure_private_dir

        ensure_private_dir(path.parent)
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


def private_tempdir(root: Path, prefix: str) -> Path:
    """A fresh 0700 directory ``root/{prefix}{pid}-XXXX`` for staging work that appears
    later with one rename; directories of dead owners (a killed build, pull or fetch)
    are swept first, so a crash leaves debris only until the next run."""
    from mvm.paths import ensure_private_dir

    ensure_private_dir(root)
    sweep_dead(root, prefix)
    return Path(tempfile.mkdtemp(dir=root, prefix=f"{prefix}{os.getpid()}-"))


def sweep_dead(root: Path, prefix: str) -> None:
    """Remove ``root/{prefix}{pid}-*`` directories whose process ``pid`` is gone."""
    import shutil

    for d in root.glob(f"{prefix}*"):
        pid = d.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        for dirpath, _dirs, _files in os.walk(d):  # a staging tree may hold read-only dirs
            with contextlib.suppress(OSError):
                os.chmod(dirpath, 0o700)
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def locked(path: Path, *, blocking: bool = True, timeout: float = 60.0) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing, 0600).

    Waits at most ``timeout`` seconds (every blocking call has a bound): a
    stuck mvmctl must produce a clear error, not a silent hang.
    """
    if not path.parent.is_dir():
        from mvm.paths import ensure_private_dir

        ensure_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "a") as f:
        deadline = time.monotonic() + (timeout if blocking else 0.0)
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() >= deadline:
                    waited = f" (waited {timeout:.0f}s)" if blocking else ""
                    raise StateError(f"{path} is locked by another mvmctl{waited}") from exc
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def publish_dir(staged: Path, dest: Path) -> None:
    """Move the finished directory ``staged`` to ``dest`` with one rename; an existing
    ``dest`` (a forced rebuild) is replaced only now that the new one is whole."""
    import shutil

    if dest.exists():
        old = dest.parent / f".old-{dest.name}-{os.getpid()}"
        os.replace(dest, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(staged, dest)
