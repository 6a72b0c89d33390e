"""Assemble the rootfs tree and turn it into ``rootfs.ext4`` without root.

Every write into the tree goes through :class:`mvm.image.staging.Staging`,
which never follows a symlink on the host.  ``mkfs.ext4 -d`` copies the
tree into a new filesystem keeping modes; it takes owners from the source
files, so after it we fix every inode whose owner differs from what the
guest needs with one batched ``debugfs -w`` session (as root that is only
the few non-root paths; as a normal user it is every file).

Reproducible images: ``mkfs.ext4`` gets a UUID and a directory hash seed
derived from the image's input hash, and ``E2FSPROGS_FAKE_TIME`` (the
superblock times, every inode's crtime, ``debugfs``' write time); e2fsprogs
1.47 adds entries in sorted order (``LC_ALL=C`` makes that byte order).  It
copies each file's atime, mtime *and ctime* from the staging tree: the mtime
is set to the epoch beforehand; the ctime (which no one can set on the host)
and the atime (which mkfs' own read of the file bumps, relatime) are set in
the same ``debugfs`` session.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mvm import proc
from mvm.config.guestpaths import name_problem
from mvm.errors import BuildError
from mvm.image.fdwalk import DIR_FLAGS, walk
from mvm.image.render import GuestFile
from mvm.image.staging import Staging

SKELETON = ("dev", "proc", "sys", "run", "tmp", "home", "root", "etc/mvm/env.d",
            "etc/mvm/init.d", "var/tmp", "usr/local/bin", "mnt", "bin", "sbin", "usr/bin",
            "usr/sbin",
            # mount points for drives: a sealed rootfs is read-only, /init cannot mkdir them
            "mnt/config", "mnt/secrets", "data")  # fmt: skip
# an OCI image keeps its own layout: only what /init mounts on, and mvm's own trees
OCI_SKELETON = ("dev", "proc", "sys", "run", "tmp", "etc/mvm/env.d", "etc/mvm/init.d",
                ".mvm/bin", "mnt/config", "mnt/secrets", "data")  # fmt: skip
SKELETON_MODES = {"tmp": 0o1777, "var/tmp": 0o1777, "root": 0o700}
BLOCK = 4096


def skeleton(staging: Staging, dirs: tuple[str, ...] = SKELETON) -> None:
    for d in dirs:
        staging.mkdir(d, SKELETON_MODES.get(d, 0o755))


def install_busybox_private(staging: Staging, busybox: Path, bindir: str) -> None:
    """Copy busybox to ``bindir`` with every applet beside it (an OCI image's own
    ``/bin`` is left alone: mvm's scripts find their tools first on PATH)."""
    with open(busybox, "rb") as f:
        staging.write(f"{bindir}/busybox", f, 0o755)
    applets = proc.run([busybox, "--list"], what="listing busybox applets").stdout.decode()
    for name in applets.split():
        if name != "busybox" and "/" not in name:
            staging.symlink(f"{bindir}/{name}", "busybox")


def systemd_tree(staging: Staging, links: list[tuple[str, str]]) -> None:
    """What a systemd guest needs beyond its unit files: the mount points of its
    tmpfs state directories and the unit symlinks (masks, wants, default.target);
    a file or link already there (a package's) is replaced."""
    for d in ("var/lib/systemd", "var/log"):
        staging.mkdir(d, 0o755)
    for path, target in links:
        staging.symlink(path, target)


def install_busybox(staging: Staging, busybox: Path) -> None:
    """Copy busybox to /bin and link every applet that nothing else provides."""
    with open(busybox, "rb") as f:
        staging.write("/bin/busybox", f, 0o755)
    applets = proc.run([busybox, "--list-full"], what="listing busybox applets").stdout.decode()
    for line in applets.split():
        if line in ("linuxrc", "bin/busybox") or staging.lexists(line):
            continue
        staging.symlink(line, "/bin/busybox")


def write_files(staging: Staging, files: list[GuestFile]) -> dict[str, tuple[int, int]]:
    """Write ``files`` into the tree; return the owners that are not root, keyed by
    the path each file resolved to."""
    owners: dict[str, tuple[int, int]] = {}
    for f in files:
        path = staging.write(f.path, f.content, f.mode)
        if (f.uid, f.gid) != (0, 0):
            owners[path] = (f.uid, f.gid)
    return owners


def _tree(root: Path, what: str) -> tuple[list[tuple[str, os.stat_result]], int]:
    """Every entry below ``root`` as (guest path, lstat), and the bytes its files take
    in 4 KiB blocks (not ``st_blocks``: the host filesystem must not change the size)."""
    fd = os.open(root, DIR_FLAGS)
    entries: list[tuple[str, os.stat_result]] = []
    total = 0
    try:
        for e in walk(fd):
            path = "/" + e.rel
            problem = name_problem(what, path)
            if problem:
                raise BuildError(problem)
            entries.append((path, e.st))
            if stat.S_ISREG(e.st.st_mode):
                total += -(-e.st.st_size // BLOCK) * BLOCK
    finally:
        os.close(fd)
    return entries, total


def _env(epoch: int | None) -> dict[str, str]:
    """What e2fsprogs gets on top of :func:`mvm.proc.child_env` (whose ``LC_ALL=C``
    also fixes the order ``mkfs -d`` adds entries in: it sorts with strcoll)."""
    if epoch is None:
        return {}
    return {"E2FSPROGS_FAKE_TIME": str(max(epoch, 1))}  # e2fsprogs reads 0 as "unset"


@dataclass(frozen=True)
class Stamp:
    """What makes an image's bytes a function of its inputs alone."""

    epoch: int  # every timestamp
    uuid: str  # the filesystem UUID
    hash_seed: str  # the directory-index hash seed (a UUID)


def make_ext4(
    root: Path,
    image: Path,
    owners: dict[str, tuple[int, int]],
    label: str = "mvm-root",
    *,
    size_mib: int | None = None,
    default_owner: tuple[int, int] = (0, 0),
    journal: bool = False,
    debugfs_extra: Sequence[str] = (),
    stamp: Stamp | None = None,
    what: str = "building rootfs.ext4",
) -> None:
    """Build ``image`` (0600) from ``root`` and set owners: ``default_owner`` (root
    unless told otherwise) everywhere, ``owners`` where listed.

    The rootfs, the config/secrets drives and data volumes all come through
    here (:mod:`mvm.drives`), so "images without root" is solved once:
    ``size_mib`` fixes the size (else it fits the tree), ``journal`` is for
    writable data volumes, ``debugfs_extra`` runs in the same debugfs session
    as the owner fix (e.g. ``rmdir lost+found`` on read-only drives), and
    ``stamp`` makes the bytes reproducible.  Every path is checked with
    :func:`~mvm.config.guestpaths.unsafe_name` before it goes into the script.
    """
    tree, total = _tree(root, what)
    entries = len(tree) + 64
    inodes = max(entries * 2, 1024)
    if size_mib is None:
        size_mib = max(16, int(total * 1.3 / (1 << 20)) + 16 + entries // 1024)
    else:  # a volume that will be written to: room for files to come (mkfs' 16 KiB ratio)
        inodes = max(inodes, size_mib * 64)
    root_owner = owners.get("/", default_owner)
    ext = f"root_owner={root_owner[0]}:{root_owner[1]}"
    fixed = ["-U", stamp.uuid] if stamp else []
    if stamp:
        ext += f",hash_seed={stamp.hash_seed}"
    env = _env(stamp.epoch if stamp else None)
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    proc.run(
        ["mkfs.ext4", "-q", "-F", "-d", root, "-L", label, "-N", str(inodes), *fixed,
         *([] if journal else ["-O", "^has_journal"]),
         "-E", ext, "-m", "0", image, f"{size_mib}M"],
        env=env, what=what,
    )  # fmt: skip
    cmds = list(debugfs_extra)
    for path, st in tree:
        want = owners.get(path, default_owner)
        if (st.st_uid, st.st_gid) != want:  # as non-root: every file (mkfs copied our uid)
            cmds.append(f'sif "{path}" uid {want[0]}\nsif "{path}" gid {want[1]}')
        if stamp:  # mkfs copies ctime, and atime after its own read has bumped it
            t = env["E2FSPROGS_FAKE_TIME"]
            cmds.append(f'sif "{path}" ctime @{t}\nsif "{path}" atime @{t}')
    if cmds:
        script = image.with_suffix(".debugfs")
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(cmds) + "\n")
        try:
            proc.run(["debugfs", "-w", "-f", script, image], env=env, timeout=600,
                     what=f"{what}: setting owners")  # fmt: skip
        finally:
            script.unlink(missing_ok=True)
