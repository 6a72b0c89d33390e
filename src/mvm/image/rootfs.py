"""Assemble the rootfs tree and turn it into ``rootfs.ext4`` without root.

``mkfs.ext4 -d`` copies a directory into a new filesystem keeping modes; it
takes owners from the source files, so after it we fix every inode whose
owner differs from what the guest needs with one batched ``debugfs -w``
session (as root that is only the few non-root paths; as a normal user it is
every file).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from mvm import proc
from mvm.image.render import GuestFile

SKELETON = ("dev", "proc", "sys", "run", "tmp", "home", "root", "etc/mvm/env.d",
            "etc/mvm/init.d", "var/tmp", "usr/local/bin", "mnt", "bin", "sbin", "usr/bin",
            "usr/sbin",
            # mount points for drives: a sealed rootfs is read-only, /init cannot mkdir them
            "mnt/config", "mnt/secrets", "data")  # fmt: skip


def skeleton(root: Path) -> None:
    for d in SKELETON:
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)


def install_busybox(root: Path, busybox: Path) -> None:
    """Copy busybox to /bin and link every applet that nothing else provides."""
    shutil.copy2(busybox, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    applets = proc.run([busybox, "--list-full"], what="listing busybox applets").stdout.decode()
    for line in applets.split():
        if line in ("linuxrc", "bin/busybox"):
            continue
        dest = root / line
        if dest.exists() or dest.is_symlink():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to("/bin/busybox")


def write_files(root: Path, files: list[GuestFile]) -> dict[str, tuple[int, int]]:
    """Write ``files`` into the tree; return the owners that are not root."""
    owners: dict[str, tuple[int, int]] = {}
    for f in files:
        dest = root / f.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        dest.write_bytes(f.content)
        os.chmod(dest, f.mode)
        if (f.uid, f.gid) != (0, 0):
            owners[f.path] = (f.uid, f.gid)
    return owners


def copy_tree(src: Path, root: Path, dest: str) -> None:
    target = root / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(src, target)


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            total += st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else 0
    return total


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
    what: str = "building rootfs.ext4",
) -> None:
    """Build ``image`` from ``root`` and set owners: ``default_owner`` (root unless
    told otherwise) everywhere, ``owners`` where listed.

    The rootfs, the config/secrets drives and data volumes all come through
    here (:mod:`mvm.drives`), so "images without root" is solved once:
    ``size_mib`` fixes the size (else it fits the tree), ``journal`` is for
    writable data volumes, ``debugfs_extra`` runs in the same debugfs session
    as the owner fix (e.g. ``rmdir lost+found`` on read-only drives).
    """
    entries = sum(len(d) + len(f) for _p, d, f in os.walk(root)) + 64
    inodes = max(entries * 2, 1024)
    if size_mib is None:
        size_mib = max(16, int(tree_size(root) * 1.3 / (1 << 20)) + 16 + entries // 1024)
    else:  # a volume that will be written to: room for files to come (mkfs' 16 KiB ratio)
        inodes = max(inodes, size_mib * 64)
    root_owner = owners.get("/", default_owner)
    proc.run(
        ["mkfs.ext4", "-q", "-F", "-d", root, "-L", label, "-N", str(inodes),
         *([] if journal else ["-O", "^has_journal"]),
         "-E", f"root_owner={root_owner[0]}:{root_owner[1]}", "-m", "0", image, f"{size_mib}M"],
        what=what,
    )  # fmt: skip
    cmds = list(debugfs_extra)
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            full = os.path.join(dirpath, n)
            rel = "/" + os.path.relpath(full, root)
            st = os.lstat(full)
            want = owners.get(rel, default_owner)
            if (st.st_uid, st.st_gid) != want:  # as non-root: every file (mkfs copied our uid)
                cmds.append(f'sif "{rel}" uid {want[0]}\nsif "{rel}" gid {want[1]}')
    if cmds:
        script = image.with_suffix(".debugfs")
        script.write_text("\n".join(cmds) + "\n")
        try:
            proc.run(["debugfs", "-w", "-f", script, image], what=f"{what}: setting owners")
        finally:
            script.unlink(missing_ok=True)
