"""Starting a VM from a snapshot instead of booting it, and what the guest is
told afterwards.

The snapshot's guest woke up with another VM's identity, RNG state, drives
and credentials; in this order, over the control port (:mod:`mvm.channels`,
answered by the guest's ``/init``: docs/snapshots.md):

1. ``identity NAME MACHINE_ID`` — this VM's hostname and a fresh machine id;
2. ``reseed HEX`` — 32 bytes from the host credited to the guest's entropy pool
   and its CRNG reseeded at once, so no two clones produce the same bytes;
3. ``remount DRIVES`` — only when this start attached config/secrets drives or
   credentials, or the source VM had some (a fork): the guest drops the old
   ones and mounts what is attached now;
4. ``restart`` — only with fresh config/secrets/credentials: the workload is
   stopped and started again so it reads them (a fork keeps its processes).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

from mvm import channels
from mvm.backends.base import Backend, Machine
from mvm.backends.spec import MachineSpec
from mvm.errors import BackendError, SnapshotError
from mvm.log import get_logger
from mvm.runtime import topology
from mvm.runtime.snapshots import Snapshot, check_compatible

log = get_logger(__name__)
VERB_TIMEOUT = 60.0


@dataclass(frozen=True)
class Restore:
    """What a start restores from, and what the guest must be told."""

    snapshot: Snapshot
    stale_drives: bool = False  # the source had drives/credentials this VM does not get
    # the kernel's sha256 when already verified (a template revision's checksum list)
    kernel_sha256: str | None = None


def shape(spec: MachineSpec, snap: Snapshot) -> MachineSpec:
    """``spec`` with the snapshot's device slots (placeholders where nothing is attached)."""
    topo = snap.topology
    disks = topo.get("disks")
    if not isinstance(disks, list) or not disks:
        raise SnapshotError("the snapshot's topology has no disks", hint="use --cold")
    return topology.shape(spec, disks=len(disks), network=bool(topo.get("network")))


def restore_rootfs(spec: MachineSpec, snap: Snapshot) -> None:
    """An accessible VM's writable rootfs as the snapshot saved it (its guest's page
    cache and journal describe that disk, not the image's pristine one)."""
    from mvm.runtime import rootfs

    own = rootfs.path(spec.run_dir)
    if spec.disks[0].path != own:
        return  # a read-only rootfs: the image's own file
    if snap.rootfs is None:
        raise SnapshotError("the snapshot has no copy of its writable root filesystem",
                            hint="rebuild it with this mvm, or use --cold")  # fmt: skip
    rootfs.clone(snap.rootfs, own)


def check(r: Restore, backend: Backend, spec: MachineSpec) -> None:
    if not backend.capabilities.snapshots:
        raise SnapshotError(f"the {backend.name} backend cannot restore snapshots into a new "
                            "VM yet (docs/firecracker.md); use --cold")  # fmt: skip
    check_compatible(r.snapshot, hypervisor=backend.name, version=backend.version(),
                     topology=of(spec, backend, r.snapshot), kernel=spec.kernel,
                     kernel_sha256=r.kernel_sha256)  # fmt: skip


def of(spec: MachineSpec, backend: Backend, snap: Snapshot) -> dict[str, object]:
    """The topology of ``spec`` restored from ``snap`` (RAM as the snapshot keeps it)."""
    return topology.of(spec, backend, ram_object=bool(snap.topology.get("ramObject")))


def drive_list(cmdline: tuple[str, ...]) -> str:
    for arg in cmdline:
        if arg.startswith("mvm.drives="):
            return arg.split("=", 1)[1] or "-"
    return "-"


def finish(machine: Machine, spec: MachineSpec, r: Restore, *, fresh: bool) -> dict[str, float]:
    """Let the restored guest run and tell it who it is now; the time each step took."""
    times: dict[str, float] = {}
    t = time.monotonic()
    machine.wait_restored(r.snapshot.memory_mib)
    times["load"] = time.monotonic() - t
    t = time.monotonic()
    machine.resume()
    times["cont"] = time.monotonic() - t
    ch = machine.backend.channels(spec.run_dir)
    steps: list[tuple[str, tuple[str, ...]]] = [
        ("identity", (spec.name, os.urandom(16).hex())),
        ("reseed", (os.urandom(32).hex(),)),
    ]
    if fresh or r.stale_drives:
        steps.append(("remount", (drive_list(spec.cmdline),)))
    if fresh:
        steps.append(("restart", ()))
    try:  # in one write: the guest runs them in order without waiting for the host
        times.update(channels.control_requests(ch, steps, timeout=VERB_TIMEOUT))
    except BackendError as exc:
        raise SnapshotError(f"the restored guest: {exc.message}",
                            hint="use --cold to boot instead") from exc  # fmt: skip
    log.debug("restore steps: %s", times)
    return times


def with_ram(spec: MachineSpec, ram: os.PathLike[str] | None) -> MachineSpec:
    from pathlib import Path

    return replace(spec, ram_file=None if ram is None else Path(ram))
