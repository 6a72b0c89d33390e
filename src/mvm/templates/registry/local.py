"""A registry in a local directory (``file:///path``): the default for one machine.

Objects are plain files at ``ROOT/PREFIX/KEY``.  Every write goes to a temp
file in the same directory and appears with ``os.replace``, so a reader (or
a crash) never sees half an object.  Files have no metadata, so
``verify_object`` re-hashes the stored copy — cheap on a local disk.

The directory may be shared or hand-edited, so reads open only regular
files (never following a final symlink, never blocking on a FIFO) and stop
at ``max_bytes``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mvm.errors import RegistryError
from mvm.image.builder import sha256_file
from mvm.state.atomic import atomic_file
from mvm.templates.registry.base import (
    SMALL_OBJECT_MAX,
    Callback,
    ObjectInfo,
    Registry,
    check_key,
    too_large,
)

CHUNK = 4 << 20


class LocalRegistry(Registry):
    def __init__(self, root: Path, prefix: str = ""):
        self.root = root
        self.base = root / prefix if prefix else root
        self.description = f"file://{self.base}"

    def _path(self, key: str) -> Path:
        return self.base / check_key(key)

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """The one seam where OSError becomes RegistryError."""
        try:
            yield
        except OSError as exc:
            raise RegistryError(
                f"registry {self.description}: {action} {key}: {exc.strerror or exc}"
            ) from exc

    def _open(self, key: str) -> BinaryIO:
        """Open an object for reading: a regular file, not through a final symlink."""
        fd = os.open(self._path(key), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            raise RegistryError(f"registry {self.description}: {key} is not a regular file")
        return f

    def get_bytes(self, key: str, max_bytes: int = SMALL_OBJECT_MAX) -> bytes | None:
        with self._errors("reading", key):
            try:
                f = self._open(key)
            except FileNotFoundError:
                return None
            with f:
                data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise too_large(self, key, max_bytes)
        return data

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        with self._errors("writing", key), atomic_file(dest) as f:
            f.write(data)

    def stat(self, key: str) -> ObjectInfo | None:
        with self._errors("checking", key):
            try:
                return ObjectInfo(self._path(key).stat().st_size, None)
            except FileNotFoundError:
                return None

    def verify_object(self, key: str, size: int, sha256: str) -> bool:
        path = self._path(key)
        with self._errors("verifying", key):
            try:
                return path.stat().st_size == size and sha256_file(path) == sha256
            except FileNotFoundError:
                return False

    def upload(self, key: str, src: Path, sha256: str, progress: Callback) -> None:
        dest = self._path(key)
        with self._errors("writing", key), atomic_file(dest) as out, open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                out.write(chunk)
                progress(len(chunk))

    def download(self, key: str, dest: Path, progress: Callback, *, max_bytes: int) -> None:
        with self._errors("reading", key):
            try:
                src = self._open(key)
            except FileNotFoundError as exc:
                raise RegistryError(f"registry {self.description}: {key} is missing") from exc
            with src, open(dest, "wb") as out:
                total = 0
                while chunk := src.read(min(CHUNK, max_bytes - total + 1)):
                    total += len(chunk)
                    if total > max_bytes:
                        raise too_large(self, key, max_bytes)
                    out.write(chunk)
                    progress(len(chunk))

    def list_dirs(self, key: str) -> list[str]:
        path = self._path(key)
        with self._errors("listing", key):
            try:
                return sorted(p.name for p in path.iterdir() if p.is_dir())
            except FileNotFoundError:
                return []
