"""Snapshot directories: what is in one, how one is published, how one is checked.

A snapshot is a directory::

    snapshot.json   what it was saved from (below), the files' sizes
    state           the hypervisor's state stream (devices; RAM too unless shared)
    ram             guest RAM (shared-memory snapshots: clones map it copy-on-write)

``snapshot.json`` records the hypervisor and its version, the machine type,
memory, vCPUs, the kernel's sha256 and the device topology
(:mod:`mvm.runtime.topology`); a restore on anything else is refused with a
hint to boot ``--cold``.  Saving happens in a private temporary directory
beside the destination; the directory is checked (every file present with
its recorded size) and only then renamed into place, so a half snapshot is
never visible.  Integrity of the bytes is the owner's job: template
revisions checksum (and sign) the snapshot's files with the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvm import paths
from mvm.backends.spec import RestoreSource
from mvm.errors import SnapshotError
from mvm.state.atomic import atomic_file, private_tempdir

META = "snapshot.json"
STATE = "snapshot.state"
RAM = "snapshot.ram"
ROOTFS = "snapshot.rootfs"  # an accessible VM's writable rootfs (mvm.runtime.rootfs)
VERSION = 1
META_MAX = 64 << 10
TMP_PREFIX = ".snap-"


@dataclass(frozen=True)
class Snapshot:
    """A published snapshot directory and its validated ``snapshot.json``."""

    dir: Path
    meta: dict[str, Any]

    @property
    def shared_ram(self) -> bool:
        return bool(self.meta.get("sharedRam"))

    @property
    def memory_mib(self) -> int:
        return int(self.meta["topology"]["memoryMib"])

    @property
    def topology(self) -> dict[str, Any]:
        return dict(self.meta["topology"])

    def source(self) -> RestoreSource:
        return RestoreSource(self.dir / STATE, self.dir / RAM if self.shared_ram else None,
                             ram_object=bool(self.meta["topology"].get("ramObject")))  # fmt: skip

    @property
    def rootfs(self) -> Path | None:
        """The saved writable rootfs a restored VM starts from (accessible images)."""
        return self.dir / ROOTFS if ROOTFS in self.meta["files"] else None

    def files(self) -> list[str]:
        return [META, STATE, *([RAM] if self.shared_ram else []),
                *([ROOTFS] if self.rootfs else [])]  # fmt: skip


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered in the shared content-hash cache (kernels are big)."""
    from mvm.image.hashcache import ContentHashes

    cache = ContentHashes(paths.cache_dir() / "content-hashes.json")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        digest = cache.of_fd(fd, os.fstat(fd))
    finally:
        os.close(fd)
    cache.save()
    return digest


def staging(parent: Path) -> Path:
    """A private temporary directory beside ``parent``'s future snapshot."""
    return private_tempdir(parent, TMP_PREFIX)


def create_ram_file(d: Path, memory_mib: int) -> Path:
    """The sparse, private file a snapshot-source VM keeps its RAM in."""
    ram = d / RAM
    fd = os.open(ram, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, memory_mib << 20)
    finally:
        os.close(fd)
    return ram


def write_meta(d: Path, *, hypervisor: str, version: str, topology: dict[str, Any],
               kernel_sha256: str, image_hash: str, shared_ram: bool) -> None:  # fmt: skip
    files = {STATE: (d / STATE).stat().st_size}
    if shared_ram:
        files[RAM] = (d / RAM).stat().st_size
    if (d / ROOTFS).exists():
        files[ROOTFS] = (d / ROOTFS).stat().st_size
    meta = {
        "version": VERSION, "hypervisor": hypervisor, "hypervisorVersion": version,
        "machine": topology.get("machine"), "kernelSha256": kernel_sha256,
        "imageHash": image_hash, "sharedRam": shared_ram, "topology": topology,
        "files": files,
    }  # fmt: skip
    with atomic_file(d / META, 0o600) as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True).encode())


def publish(tmp: Path, dest: Path) -> Snapshot:
    """Check the staged snapshot, then rename it to ``dest`` (which must not exist)."""
    snap = load(tmp)
    if dest.exists():
        raise SnapshotError(f"snapshot {dest} already exists")
    os.rename(tmp, dest)
    return Snapshot(dest, snap.meta)


def discard(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)


def load(d: Path) -> Snapshot:
    """Read and check a snapshot directory: valid metadata, every file at its size."""
    try:
        fd = os.open(d / META, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SnapshotError(f"snapshot {d}: {META} is missing or unreadable ({exc.strerror})",
                            hint="rebuild it, or use --cold") from exc  # fmt: skip
    try:
        raw = os.read(fd, META_MAX + 1)
    finally:
        os.close(fd)
    try:
        meta = json.loads(raw) if len(raw) <= META_MAX else None
    except (ValueError, RecursionError):
        meta = None
    problem = _check_meta(meta)
    if problem:
        raise SnapshotError(f"snapshot {d}: {problem}", hint="rebuild it, or use --cold")
    assert isinstance(meta, dict)
    for name, size in meta["files"].items():
        try:
            st = os.lstat(d / name)
        except OSError:
            raise SnapshotError(f"snapshot {d}: {name} is missing",
                                hint="rebuild it, or use --cold") from None  # fmt: skip
        if not os.path.isfile(d / name) or os.path.islink(d / name) or st.st_size != size:
            raise SnapshotError(f"snapshot {d}: {name} is damaged (size or type)",
                                hint="rebuild it, or use --cold")  # fmt: skip
    return Snapshot(d, meta)


def _check_meta(meta: object) -> str | None:
    if not isinstance(meta, dict):
        return f"{META} is not a JSON object"
    if meta.get("version") != VERSION:
        return f"{META} has an unsupported version"
    for key, kind in (("hypervisor", str), ("hypervisorVersion", str), ("kernelSha256", str),
                      ("sharedRam", bool), ("topology", dict), ("files", dict)):  # fmt: skip
        if not isinstance(meta.get(key), kind):
            return f"{META}: {key} is missing or invalid"
    files = meta["files"]
    want = {STATE, RAM} if meta["sharedRam"] else {STATE}
    if set(files) - {ROOTFS} != want or not all(
        isinstance(v, int) and v >= 0 for v in files.values()
    ):
        return f"{META}: files is invalid"
    topo = meta["topology"]
    if not isinstance(topo.get("memoryMib"), int) or not isinstance(topo.get("vcpus"), int):
        return f"{META}: topology is invalid"
    if meta["sharedRam"] and files[RAM] != topo["memoryMib"] << 20:
        return f"{META}: the RAM file does not match the memory size"
    return None


def check_compatible(snap: Snapshot, *, hypervisor: str, version: str, topology: dict[str, Any],
                     kernel: Path, kernel_sha256: str | None = None) -> None:  # fmt: skip
    """Refuse a snapshot this host cannot restore as ``topology`` (says what differs)."""
    meta = snap.meta
    hint = "boot with --cold instead (or rebuild the snapshot)"
    if meta["hypervisor"] != hypervisor:
        raise SnapshotError(f"the snapshot was saved by {meta['hypervisor']}, not {hypervisor}",
                            hint=hint)  # fmt: skip
    if meta["hypervisorVersion"] != version:
        raise SnapshotError(
            f"the snapshot was saved by {hypervisor} {meta['hypervisorVersion']}; "
            f"this host has {version}", hint=hint,
        )  # fmt: skip
    from mvm.runtime.topology import differences

    diff = differences(meta["topology"], topology)
    if diff:
        raise SnapshotError(f"the snapshot's machine differs from this VM's ({', '.join(diff)})",
                            hint=hint)  # fmt: skip
    if (kernel_sha256 or file_sha256(kernel)) != meta["kernelSha256"]:
        raise SnapshotError("the snapshot was saved with another kernel", hint=hint)


def digest_files(snap: Snapshot) -> dict[str, str]:
    out = {}
    for name in snap.files():
        h = hashlib.sha256()
        with open(snap.dir / name, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out[name] = h.hexdigest()
    return out
