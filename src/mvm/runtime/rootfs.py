"""The writable root filesystem of an accessible (dev) VM: a private copy of the
image's ``rootfs.ext4`` in the VM's run directory.

QEMU's ``snapshot=on`` kept those writes in an unlinked temp file that no
snapshot could include, so accessible VMs could be neither forked nor saved
as a template snapshot.  A file of the VM's own can: ``fork`` and
``template build --snapshot`` copy it (while the guest is stopped and its
disk flushed) next to the saved state as ``snapshot.rootfs``, and a VM
restored from that snapshot starts from a copy of it.  Copies are reflinks
where the filesystem has them, else sparse (an image is mostly holes), so a
start costs a few milliseconds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

FILE = "rootfs.img"
SNAPSHOT_FILE = "snapshot.rootfs"
FICLONE = 0x40049409
CHUNK = 8 << 20


def path(run_dir: Path) -> Path:
    return run_dir / FILE


def clone(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` (new, 0600): reflink if possible, else sparse; the
    copy appears only complete (temp file, then rename)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.ioctl(dfd, FICLONE, sfd)
            except OSError:
                _sparse_copy(sfd, dfd, os.fstat(sfd).st_size)
        finally:
            os.close(dfd)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(sfd)


def _sparse_copy(sfd: int, dfd: int, size: int) -> None:
    os.ftruncate(dfd, size)
    pos = 0
    while pos < size:
        try:
            data = os.lseek(sfd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        hole = os.lseek(sfd, data, os.SEEK_HOLE)
        off = data
        while off < hole:
            n = os.copy_file_range(sfd, dfd, min(CHUNK, hole - off), off, off)
            if n <= 0:
                raise OSError(errno.EIO, "short copy")
            off += n
        pos = hole
