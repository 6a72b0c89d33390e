"""Every write into an image's staging tree, confined to that tree.

The staging tree is hostile: Debian packages and a project's ``copy`` trees
put symlinks in it, and a later write that followed one on the host would
land outside the tree (``/opt/app/evil -> /tmp/T``, then
``[files."/opt/app/evil/pwned"]`` created ``/tmp/T/pwned``).  So nothing here
ever follows a symlink on the host:

* a guest path is resolved the way the guest will see it, like
  ``openat2(RESOLVE_IN_ROOT)``: a symlink component is read and resolved
  again *relative to the staging root*, ``..`` stops at the root, and at
  most :data:`MAX_LINKS` links are followed;
* every directory is opened relative to its parent's descriptor with
  ``O_NOFOLLOW``, and every file is created with ``O_CREAT | O_EXCL |
  O_NOFOLLOW`` in its parent's descriptor, so even a tree that changed under
  us could not redirect a write to the host;
* the last component of a path is never followed: writing a file or a
  symlink over an existing symlink replaces the symlink (as dpkg does).

Each write returns the resolved guest path, so callers can key owners on it
and refuse paths that belong to mvm (:mod:`mvm.config.reserved`).
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mvm.errors import BuildError
from mvm.image.fdwalk import DIR_FLAGS as _DIR_FLAGS
from mvm.image.fdwalk import lstat_at as _lstat
from mvm.image.fdwalk import walk

MAX_LINKS = 40
CACHED_DIRS = 64  # open descriptors of recently resolved directories
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1 << 20
_READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


class Staging:
    """A staging root that only this object writes into (use as a context manager)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o755, exist_ok=True)
        self.root = root
        self._fd = os.open(root, _DIR_FLAGS)
        # a package writes thousands of files into a few directories: resolving each
        # directory once saves most syscalls.  Entries hold only existing directories,
        # which never move; replacing a symlink (the one change that could alter a
        # resolution) empties the cache.
        self._dirs: OrderedDict[str, tuple[int, list[str]]] = OrderedDict()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._forget()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- resolution ---------------------------------------------------------

    def _forget(self) -> None:
        while self._dirs:
            os.close(self._dirs.popitem()[1][0])

    def _open_dir(self, path: str, *, create: bool) -> tuple[int, list[str]]:
        """Open the directory ``path`` resolves to inside the root, creating missing
        directories (0755) when ``create``.  Returns a descriptor the caller closes
        and the resolved components."""
        key = "/".join(_parts(path))
        hit = self._dirs.get(key)
        if hit is not None:
            self._dirs.move_to_end(key)
            return os.dup(hit[0]), list(hit[1])
        fd, names = self._resolve_dir(path, create=create)
        self._dirs[key] = (os.dup(fd), list(names))
        if len(self._dirs) > CACHED_DIRS:
            os.close(self._dirs.popitem(last=False)[1][0])
        return fd, names

    def _resolve_dir(self, path: str, *, create: bool) -> tuple[int, list[str]]:
        todo = list(reversed(_parts(path)))
        fds: list[int] = []  # one per resolved component; the root is self._fd
        names: list[str] = []
        links = 0
        try:
            while todo:
                name = todo.pop()
                if name == "..":
                    if fds:
                        os.close(fds.pop())
                        names.pop()
                    continue
                parent = fds[-1] if fds else self._fd
                st = _lstat(parent, name)
                created = st is None
                if st is None:
                    if not create:
                        raise FileNotFoundError(path)
                    os.mkdir(name, 0o700, dir_fd=parent)
                elif stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > MAX_LINKS:
                        raise BuildError(f"image path {path!r}: too many levels of symlinks")
                    target = os.readlink(name, dir_fd=parent)
                    if target.startswith("/"):
                        while fds:
                            os.close(fds.pop())
                        names.clear()
                    todo.extend(reversed(_parts(target)))
                    continue
                elif not stat.S_ISDIR(st.st_mode):
                    shown = "/" + "/".join([*names, name])
                    raise BuildError(f"image path {path!r}: {shown!r} is not a directory")
                fds.append(os.open(name, _DIR_FLAGS, dir_fd=parent))
                names.append(name)
                if created:  # explicit: the image's modes never depend on our umask
                    os.fchmod(fds[-1], 0o755)
            result = fds.pop() if fds else os.dup(self._fd)
            return result, names
        finally:
            for fd in fds:
                os.close(fd)

    def _parent(self, path: str) -> tuple[int, list[str], str]:
        """(descriptor of the resolved parent, its components, the last name)."""
        parts = _parts(path)
        if not parts or parts[-1] == "..":
            raise BuildError(f"image path {path!r}: not a file name")
        fd, names = self._open_dir("/".join(parts[:-1]), create=True)
        return fd, names, parts[-1]

    def resolve(self, path: str) -> str:
        """The guest path ``path`` resolves to (missing parents are not created)."""
        parts = _parts(path)
        if not parts:
            return "/"
        try:
            fd, names = self._open_dir("/".join(parts[:-1]), create=False)
        except FileNotFoundError:
            return "/" + "/".join(parts)
        os.close(fd)
        return _join(names, parts[-1])

    def lexists(self, path: str) -> bool:
        """Whether something (a symlink included) is at ``path``."""
        parts = _parts(path)
        try:
            fd, _names = self._open_dir("/".join(parts[:-1]), create=False)
        except (FileNotFoundError, BuildError):
            return False
        try:
            return _lstat(fd, parts[-1]) is not None
        finally:
            os.close(fd)

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` resolves (symlinks in the image included) to a directory."""
        try:
            fd, _names = self._open_dir(path, create=False)
        except (FileNotFoundError, BuildError):
            return False
        os.close(fd)
        return True

    def read(self, path: str, limit: int) -> bytes | None:
        """The bytes of the regular file ``path`` resolves to in the image (at most
        ``limit``: larger is an error), or None when there is none."""
        parts = _parts(path)
        try:
            fd, _names = self._open_dir("/".join(parts[:-1]), create=False)
        except (FileNotFoundError, BuildError):
            return None
        try:
            for _ in range(MAX_LINKS):
                st = _lstat(fd, parts[-1])
                if st is None or not stat.S_ISLNK(st.st_mode):
                    break
                # the last component is a symlink: resolve it in the image, not on the host
                target = os.readlink(parts[-1], dir_fd=fd)
                base = [] if target.startswith("/") else _names
                os.close(fd)
                fd = -1
                parts = [*base, *_parts(target)]
                try:
                    fd, _names = self._open_dir("/".join(parts[:-1]), create=False)
                except (FileNotFoundError, BuildError):
                    return None
            if st is None or not stat.S_ISREG(st.st_mode):
                return None
            ffd = os.open(parts[-1], _READ_FILE, dir_fd=fd)
            with os.fdopen(ffd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    return None
                data = f.read(limit + 1)
        finally:
            if fd >= 0:
                os.close(fd)
        if len(data) > limit:
            raise BuildError(f"image file {path!r} is larger than {limit} bytes")
        return data

    def listdir(self, path: str) -> list[str]:
        """The names in the directory ``path`` resolves to ([] when it is none)."""
        try:
            fd, _names = self._open_dir(path, create=False)
        except (FileNotFoundError, BuildError):
            return []
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    # -- writes -------------------------------------------------------------

    def mkdir(self, path: str, mode: int | None = None) -> str:
        """Create ``path`` and its parents (an existing directory, or a symlink to one,
        is kept as it is); a new last directory gets ``mode``.  Returns the resolved path."""
        if not _parts(path):
            return "/"
        fd, names, name = self._parent(path)
        try:
            st = _lstat(fd, name)
            if st is None:
                os.mkdir(name, 0o700, dir_fd=fd)
                dfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                try:
                    os.fchmod(dfd, 0o755 if mode is None else mode)
                finally:
                    os.close(dfd)
                return _join(names, name)
            if stat.S_ISDIR(st.st_mode):
                return _join(names, name)
        finally:
            os.close(fd)
        if stat.S_ISLNK(st.st_mode):  # a directory over a symlink: merge into its target
            dfd, resolved = self._open_dir(path, create=True)
            os.close(dfd)
            return "/" + "/".join(resolved)
        raise BuildError(f"image path {path!r}: a file is in the way of a directory")

    def write(self, path: str, data: bytes | IO[bytes], mode: int) -> str:
        """Write a regular file (replacing a file or symlink there, never a directory)."""
        fd, names, name = self._parent(path)
        try:
            self._clear(fd, names, name, path)
            out = os.open(name, _NEW_FILE, 0o600, dir_fd=fd)
            with os.fdopen(out, "wb") as f:
                if isinstance(data, bytes):
                    f.write(data)
                else:
                    while chunk := data.read(CHUNK):
                        f.write(chunk)
                os.fchmod(f.fileno(), mode)
            return _join(names, name)
        finally:
            os.close(fd)

    def symlink(self, path: str, target: str) -> str:
        """Create a symlink (replacing a file or symlink there); its target is the guest's
        business and is never followed here."""
        if "\0" in target:
            raise BuildError(f"image path {path!r}: symlink target contains NUL")
        fd, names, name = self._parent(path)
        try:
            self._clear(fd, names, name, path)
            os.symlink(target, name, dir_fd=fd)
            return _join(names, name)
        finally:
            os.close(fd)

    def link(self, path: str, existing: str) -> str:
        """Hard-link ``path`` to the file at ``existing`` (both inside the root)."""
        parts = _parts(existing)
        try:
            sfd, _names = self._open_dir("/".join(parts[:-1]), create=False)
        except FileNotFoundError:
            raise BuildError(f"image path {path!r}: hard link to missing {existing!r}") from None
        sname = parts[-1] if parts else "."
        try:
            st = _lstat(sfd, sname)
            if st is None or not stat.S_ISREG(st.st_mode):
                raise BuildError(f"image path {path!r}: hard link to {existing!r}, not a file")
            fd, names, name = self._parent(path)
            try:
                self._clear(fd, names, name, path)
                os.link(sname, name, src_dir_fd=sfd, dst_dir_fd=fd, follow_symlinks=False)
                return _join(names, name)
            finally:
                os.close(fd)
        finally:
            os.close(sfd)

    def _clear(self, fd: int, names: list[str], name: str, path: str) -> None:
        st = _lstat(fd, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            shown = _join(names, name)
            raise BuildError(f"image path {path!r}: {shown!r} is a directory")
        os.unlink(name, dir_fd=fd)
        if stat.S_ISLNK(st.st_mode):
            self._forget()

    # -- whole tree -----------------------------------------------------------

    def walk(self) -> Iterator[tuple[str, os.stat_result]]:
        """Yield (guest path, lstat) for every entry below the root, sorted."""
        for e in walk(self._fd):
            yield "/" + e.rel, e.st

    def set_times(self, epoch: int) -> None:
        """Give every entry (the root included) atime = mtime = ``epoch``: the time of
        the build must not leak into the image's bytes."""
        ns = (epoch * 10**9, epoch * 10**9)
        for e in walk(self._fd):
            os.utime(e.name, ns=ns, dir_fd=e.dir_fd, follow_symlinks=False)
        os.utime(self._fd, ns=ns)


def _join(names: list[str], name: str) -> str:
    return "/" + "/".join([*names, name])
