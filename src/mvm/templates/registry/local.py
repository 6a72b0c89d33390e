"""A registry in a local directory (``file:///path``): the default for one machine.

Objects are plain files at ``ROOT/PREFIX/KEY``.  Every write goes to a temp
file in the same directory and appears with ``os.replace``, so a reader (or
a crash) never sees half an object.  Files have no metadata, so
``verify_object`` re-hashes the stored copy — cheap on a local disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mvm.errors import RegistryError
from mvm.image.builder import sha256_file
from mvm.state.atomic import atomic_file
from mvm.templates.registry.base import Callback, ObjectInfo, Registry, check_key

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

    def get_bytes(self, key: str) -> bytes | None:
        with self._errors("reading", key):
            try:
                return self._path(key).read_bytes()
            except FileNotFoundError:
                return None

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
        with self._errors("writing", key), atomic_file(dest) as out:
            _copy(src, out, progress)

    def download(self, key: str, dest: Path, progress: Callback) -> None:
        src = self._path(key)
        with self._errors("reading", key):
            try:
                with open(dest, "wb") as out:
                    _copy(src, out, progress)
            except FileNotFoundError as exc:
                raise RegistryError(f"registry {self.description}: {key} is missing") from exc

    def list_dirs(self, key: str) -> list[str]:
        path = self._path(key)
        with self._errors("listing", key):
            try:
                return sorted(p.name for p in path.iterdir() if p.is_dir())
            except FileNotFoundError:
                return []


def _copy(src: Path, out: BinaryIO, progress: Callback) -> None:
    with open(src, "rb") as f:
        while chunk := f.read(CHUNK):
            out.write(chunk)
            progress(len(chunk))
