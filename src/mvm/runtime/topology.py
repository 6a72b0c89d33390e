"""A VM's device topology: what a restored VM must match exactly.

A saved VM state is only valid for a hypervisor that presents the same
machine and devices in the same order (QEMU refuses, or worse, the guest
sees a device change under it).  :func:`of` describes a
:class:`~mvm.backends.spec.MachineSpec` as plain data that is stored with a
snapshot (``snapshot.json``) and next to every running VM (``topology.json``
in its run directory, for ``fork``); :func:`shape` gives a spec the fixed
topology every snapshot-capable VM has: the rootfs, then the config and
secrets slots (a placeholder when nothing is attached), a network device.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from mvm.backends.base import Backend
from mvm.backends.spec import Disk, MachineSpec
from mvm.errors import SnapshotError
from mvm.state.atomic import read_json, write_json

FILE = "topology.json"
PLACEHOLDER = "placeholder-snap.img"
SLOTS = 3  # rootfs, config (vdb), secrets (vdc)


def of(spec: MachineSpec, backend: Backend, *, ram_object: bool = False) -> dict[str, Any]:
    """The devices of ``spec`` as a backend presents them (JSON-ready).  ``ram_object``:
    guest RAM is a memory object of its own (a file for snapshots and their clones),
    which names the RAM differently in the saved state."""
    return {
        "ramObject": ram_object or spec.ram_file is not None,
        "hypervisor": backend.name,
        "machine": getattr(backend, "machine_type", backend.name),
        "vcpus": spec.vcpus,
        "memoryMib": spec.memory_mib,
        "disks": [
            ("ro" if d.readonly else "rw") + ("-ephemeral" if d.ephemeral else "")
            for d in spec.disks
        ],
        "network": spec.network.enabled,
        "channels": list(spec.channels),
    }


def save(run_dir: Path, topo: dict[str, Any]) -> None:
    write_json(run_dir / FILE, topo)


def load(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = read_json(run_dir / FILE)
    except Exception:  # a missing or damaged file: the VM cannot be forked, nothing more
        return None
    return data if isinstance(data, dict) else None


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two topologies, as words for an error message."""
    return [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]


def placeholder(run_dir: Path) -> Path:
    """An empty drive that holds a slot (the guest re-probes it on ``remount``)."""
    ph = run_dir / PLACEHOLDER
    if not ph.exists():
        os.close(os.open(ph, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    return ph


def shape(spec: MachineSpec, *, disks: int = SLOTS, network: bool = True) -> MachineSpec:
    """``spec`` padded to the snapshot topology: ``disks`` block devices (empty read-only
    slots filled with a placeholder), a network device if ``network``, fw_cfg read by the
    guest.  Data volumes cannot be part of it (they are the host's, not the snapshot's)."""
    if any(d.role == "data" for d in spec.disks):
        raise SnapshotError(
            "data volumes cannot be attached to a VM restored from a snapshot",
            hint="use --cold to boot instead",
        )
    have = list(spec.disks)
    if len(have) > disks:
        raise SnapshotError("the snapshot has fewer drive slots than this VM needs",
                            hint="use --cold to boot instead")  # fmt: skip
    while len(have) < disks:
        have.append(Disk(placeholder(spec.run_dir), role="placeholder"))
    if spec.network.enabled and not network:
        raise SnapshotError("the snapshot was saved without a network device",
                            hint="use --cold to boot instead")  # fmt: skip
    net = replace(spec.network, device=network)
    cmdline = spec.cmdline if "mvm.fwcfg=1" in spec.cmdline else (*spec.cmdline, "mvm.fwcfg=1")
    return replace(spec, disks=tuple(have), network=net, cmdline=cmdline)
