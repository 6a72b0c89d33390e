"""A project's ``copy`` sources: scanned once, hashed, then copied into the image.

The host side of a copy is as hostile as the image side.  A project (or a
template someone else wrote) must not bake the host's files into an image,
and must not hang or flood the build, so:

* the source must lie inside the project directory once symlinks are resolved;
* directories are opened relative to their parent with ``O_NOFOLLOW``
  (:mod:`mvm.image.fdwalk`), so a symlink inside the tree is never followed
  on the host: it is copied as a symlink, and what it points to is the
  guest's business;
* files are opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with
  ``fstat`` on the open descriptor, so a FIFO cannot block the build and a
  device cannot stream ``/dev/zero`` into it; FIFOs, sockets and devices are
  refused with an error naming them;
* names that cannot be written safely (:func:`mvm.config.guestpaths.unsafe_name`)
  are refused.

One scan serves both the input hash and the copy: the copy takes the scan's
list of entries and checks that each file it opens is still the one that was
hashed (same inode, size, mtime and ctime), so the image always matches its
input hash.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mvm.config.guestpaths import name_problem
from mvm.errors import BuildError
from mvm.image.fdwalk import DIR_FLAGS, FILE_FLAGS, walk
from mvm.image.hashcache import ContentHashes
from mvm.image.staging import Staging
from mvm.proc import is_disk_full

Kind = Literal["dir", "file", "link"]
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device"}  # fmt: skip


@dataclass(frozen=True)
class Item:
    rel: str  # "/"-separated below the source; "" is the source itself
    kind: Kind
    mode: int  # permission bits
    target: str = ""  # a symlink's target
    stamp: tuple[int, ...] = ()  # a file's (dev, ino, size, mtime_ns, ctime_ns)


@dataclass(frozen=True)
class Source:
    path: Path
    what: str  # "copy[0].from", for messages
    items: tuple[Item, ...]
    digest: str  # names, kinds, modes, symlink targets and file contents

    @property
    def is_dir(self) -> bool:
        return self.items[0].kind == "dir"


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _refuse(what: str, rel: str, mode: int) -> BuildError:
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    return BuildError(f"{what}: {rel!r} is {kind}; only regular files, directories and "
                      "symlinks can be copied")  # fmt: skip


def scan(path: Path, project_root: Path, what: str, hashes: ContentHashes) -> Source:
    """Scan and hash the copy source ``path`` (which must lie inside ``project_root``)."""
    real = os.path.realpath(path)
    root = os.path.realpath(project_root)
    if os.path.commonpath([real, root]) != root:
        raise BuildError(f"{what}: {str(path)!r} is outside the project directory {root!r}")
    h = hashlib.sha256()
    items: list[Item] = []

    def add(item: Item, content: str = "") -> None:
        items.append(item)
        h.update(f"{item.kind}\0{item.rel}\0{item.mode:o}\0{item.target}\0{content}\0".encode())

    try:
        top = os.open(real, FILE_FLAGS)
    except OSError as exc:
        raise BuildError(f"{what}: cannot open {real!r}: {exc.strerror}") from exc
    try:
        st = os.fstat(top)
        if stat.S_ISREG(st.st_mode):
            add(Item("", "file", stat.S_IMODE(st.st_mode), stamp=_stamp(st)), hashes.of_fd(top, st))
        elif stat.S_ISDIR(st.st_mode):
            add(Item("", "dir", stat.S_IMODE(st.st_mode)))
            for e in walk(top):
                problem = name_problem(what, e.rel)
                if problem:
                    raise BuildError(problem)
                mode = stat.S_IMODE(e.st.st_mode)
                if stat.S_ISDIR(e.st.st_mode):
                    add(Item(e.rel, "dir", mode))
                elif stat.S_ISLNK(e.st.st_mode):
                    add(Item(e.rel, "link", 0o777, target=os.readlink(e.name, dir_fd=e.dir_fd)))
                elif stat.S_ISREG(e.st.st_mode):
                    fd = os.open(e.name, FILE_FLAGS, dir_fd=e.dir_fd)
                    try:
                        fst = os.fstat(fd)
                        if not stat.S_ISREG(fst.st_mode):
                            raise _refuse(what, e.rel, fst.st_mode)
                        add(Item(e.rel, "file", mode, stamp=_stamp(fst)), hashes.of_fd(fd, fst))
                    finally:
                        os.close(fd)
                else:
                    raise _refuse(what, e.rel, e.st.st_mode)
        else:
            raise _refuse(what, os.path.basename(real), st.st_mode)
    except OSError as exc:
        raise BuildError(f"{what}: cannot read {real!r}: {exc.strerror or exc}") from exc
    finally:
        os.close(top)
    return Source(Path(real), what, tuple(items), h.hexdigest())


def _open_file(top: int, item: Item, what: str) -> int:
    """Open ``item`` below the directory ``top`` again, without following anything,
    and check it is the file the scan hashed."""
    parts = item.rel.split("/") if item.rel else []
    fds: list[int] = []
    try:
        for part in parts[:-1]:
            fds.append(os.open(part, DIR_FLAGS, dir_fd=fds[-1] if fds else top))
        if parts:
            fd = os.open(parts[-1], FILE_FLAGS, dir_fd=fds[-1] if fds else top)
        else:
            fd = os.dup(top)
    finally:
        for d in fds:
            os.close(d)
    if _stamp(os.fstat(fd)) != item.stamp:
        os.close(fd)
        raise BuildError(f"{what}: {item.rel or '.'!r} changed during the build; build again")
    return fd


Guard = Callable[[str, str], None]  # (resolved guest path, item rel) → raise if not allowed


def copy_into(src: Source, staging: Staging, dest: str, guard: Guard) -> None:
    """Copy the scanned ``src`` to guest path ``dest`` through ``staging``.

    A directory is merged into ``dest``; a single file goes to ``dest``, or into
    it when ``dest`` is a directory in the image.  ``guard`` sees the resolved
    guest path of every entry written."""
    try:
        top = os.open(src.path, FILE_FLAGS)
    except OSError as exc:
        raise BuildError(f"{src.what}: cannot open {str(src.path)!r}: {exc.strerror}") from exc
    try:
        if not src.is_dir:
            item = src.items[0]
            target = dest
            if staging.is_dir(dest):
                target = f"{dest.rstrip('/')}/{src.path.name}"
            fd = _open_file(top, item, src.what)
            with os.fdopen(fd, "rb") as f:
                guard(staging.write(target, f, item.mode), src.path.name)
            return
        base = dest.rstrip("/")
        for item in src.items:
            path = f"{base}/{item.rel}" if item.rel else (base or "/")
            if item.kind == "dir":  # merging into an existing directory writes nothing
                existed = staging.is_dir(path)
                resolved = staging.mkdir(path, item.mode)
                if not existed:
                    guard(resolved, item.rel)
            elif item.kind == "link":
                guard(staging.symlink(path, item.target), item.rel)
            else:
                fd = _open_file(top, item, src.what)
                with os.fdopen(fd, "rb") as f:
                    guard(staging.write(path, f, item.mode), item.rel)
    except OSError as exc:
        if is_disk_full(exc):
            raise  # the builder turns it into DiskFullError
        raise BuildError(f"{src.what}: copying {str(src.path)!r}: {exc.strerror or exc}") from exc
    finally:
        os.close(top)
