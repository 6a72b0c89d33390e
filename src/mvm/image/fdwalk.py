"""Walk a directory tree through descriptors, never following a symlink.

``os.walk`` and even ``os.fwalk`` stat (and ``fwalk`` opens) the target of a
symlink to a directory, and both recurse, so a deep tree raises
``RecursionError``.  Hostile trees (a project's ``copy`` sources, an image's
staging tree) need a walk that opens each directory relative to its parent
with ``O_NOFOLLOW`` and keeps its own stack.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# a regular file, opened without following a symlink and without blocking on a FIFO
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    rel: str  # path relative to the top, "/"-separated, no leading slash
    dir_fd: int  # the parent directory (valid until the walk moves on)
    name: str
    st: os.stat_result  # lstat


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def walk(top_fd: int) -> Iterator[Entry]:
    """Yield every entry below ``top_fd``: sorted by name, parents before children."""
    stack: list[tuple[int, str, Iterator[str]]] = [(top_fd, "", iter(sorted(os.listdir(top_fd))))]
    try:
        while stack:
            fd, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                if fd != top_fd:
                    os.close(fd)
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            yield Entry(prefix + name, fd, name, st)
            if stat.S_ISDIR(st.st_mode):
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
                try:
                    below = iter(sorted(os.listdir(child)))
                except BaseException:
                    os.close(child)
                    raise
                stack.append((child, f"{prefix}{name}/", below))
    finally:
        for fd, _prefix, _names in stack:
            if fd != top_fd:
                os.close(fd)
