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
from pathlib import Path

from mvm import proc
from mvm.build.render import GuestFile

SKELETON = ("dev", "proc", "sys", "run", "tmp", "home", "root", "etc/mvm/env.d",
            "etc/mvm/init.d", "var/tmp", "usr/local/bin", "mnt", "bin", "sbin", "usr/bin",
            "usr/sbin")  # fmt: skip


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
    root: Path, image: Path, owners: dict[str, tuple[int, int]], label: str = "mvm-root"
) -> None:
    """Build ``image`` from ``root`` and set owners: root everywhere, ``owners`` where listed."""
    size = tree_size(root)
    inodes = sum(len(d) + len(f) for _p, d, f in os.walk(root)) + 64
    size_mib = max(16, int(size * 1.3 / (1 << 20)) + 16 + inodes // 1024)
    proc.run(
        ["mkfs.ext4", "-q", "-F", "-d", root, "-L", label, "-N", str(max(inodes * 2, 1024)),
         "-O", "^has_journal", "-E", "root_owner=0:0", "-m", "0", image, f"{size_mib}M"],
        what="building rootfs.ext4",
    )  # fmt: skip
    cmds = []
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            full = os.path.join(dirpath, n)
            rel = "/" + os.path.relpath(full, root)
            st = os.lstat(full)
            want = owners.get(rel, (0, 0))
            if (st.st_uid, st.st_gid) != want:  # as non-root: every file (mkfs copied our uid)
                cmds.append(f'sif "{rel}" uid {want[0]}\nsif "{rel}" gid {want[1]}')
    if cmds:
        script = image.with_suffix(".debugfs")
        script.write_text("\n".join(cmds) + "\n")
        try:
            proc.run(["debugfs", "-w", "-f", script, image], what="setting owners in rootfs")
        finally:
            script.unlink(missing_ok=True)
