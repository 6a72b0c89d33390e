"""A minimal ``newc`` cpio writer: initramfs images owned by root without
needing root, byte-for-byte deterministic (one fixed mtime, inode numbers in
entry order), uncompressed because the kernel unpacks plain cpio fastest
under TCG.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no leading slash
    mode: int  # full st_mode (type bits + permissions)
    data: bytes = b""


def _header(ino: int, entry: Entry, size: int, mtime: int = 0) -> bytes:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, len(name), 0)
    head = b"070701" + b"".join(b"%08x" % f for f in fields) + name
    return head + b"\0" * (-len(head) % 4)


def write(out: BinaryIO, entries: list[Entry], *, mtime: int = 0) -> None:
    """Write ``entries`` (parents before children) and the trailer; every entry
    gets ``mtime`` (the build's ``SOURCE_DATE_EPOCH``)."""
    for ino, entry in enumerate(entries, start=1):
        out.write(_header(ino, entry, len(entry.data), mtime))
        out.write(entry.data)
        out.write(b"\0" * (-len(entry.data) % 4))
    out.write(_header(0, Entry("TRAILER!!!", 0), 0))


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())
