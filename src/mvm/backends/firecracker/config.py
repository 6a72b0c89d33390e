"""A :class:`MachineSpec` as Firecracker API calls: an ordered list of data.

Pure (no sockets, no files): :func:`plan` is what the machine sends, in
order, and what ``mvmctl run --show-command`` prints, so both are the same
thing by construction.  Firecracker-specific decisions live here:

* drives: ``spec.disks`` in order (the guest sees vda, vdb…; none is
  Firecracker's "root device", the kernel command line names the rootfs), then
  the read-only **guest-data drive** last (credentials, network files:
  there is no fw_cfg/SMBIOS under Firecracker), named on the command line
  as ``mvm.guestdata=vdX``;
* host channels over **hybrid vsock** (``mvm.channels=vsock``, docs/firecracker.md);
* a NIC only on a host tap the user names (``MVM_FIRECRACKER_TAP``):
  Firecracker has no user-mode networking, so without one the VM has no
  network, and ``-p``/egress are refused;
* MMDS: the data store carries non-secret metadata (VM name, mvm version);
  Firecracker only serves it to a guest through a NIC, so its config is
  set only with one.  Secrets never travel in any call: Firecracker logs
  request bodies.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvm.backends.spec import MachineSpec
from mvm.errors import BackendError

BASE_CMDLINE = (
    "console=ttyS0 reboot=k panic=1 pci=off quiet loglevel=3 i8042.noaux i8042.nomux "
    "i8042.dumbkbd random.trust_cpu=on 8250.nr_uarts=1 mitigations=off init_on_alloc=0"
)
ROOT_DEVICE = "/dev/vda"
GUEST_CID = 3  # 0-2 are reserved (hypervisor, local, host)
IFACE = "eth0"
MAX_VCPUS = 32  # Firecracker's limit (it refuses more with its own message)


@dataclass(frozen=True)
class ApiCall:
    """One request: method, path and JSON body (None: no body)."""

    method: str
    path: str
    body: Any = None

    def __str__(self) -> str:
        body = "" if self.body is None else " " + json.dumps(self.body, sort_keys=True)
        return f"{self.method} {self.path}{body}"


@dataclass(frozen=True)
class FcOptions:
    """What the calls need beyond the neutral spec (where files are, host facts)."""

    vsock_uds: Path
    guest_data: Path | None = None  # the guest-data drive image (written by guestdrive)
    tap: str | None = None  # a host tap device the user may use
    mac: str = "06:00:ac:10:00:02"
    metadata: dict[str, Any] = field(default_factory=dict)  # MMDS (never secret)
    track_dirty_pages: bool = False


def drive_letter(i: int) -> str:
    """vda… for drive ``i`` (Firecracker attaches virtio-mmio devices in call order)."""
    if not 0 <= i < 26:
        raise BackendError("Firecracker: too many drives (at most 26)")
    return "vd" + string.ascii_lowercase[i]


def kernel_cmdline(spec: MachineSpec, opts: FcOptions) -> str:
    parts = [BASE_CMDLINE]
    if spec.kaslr:
        parts.append("nokaslr")
    if spec.initramfs is None:  # direct boot: the kernel mounts the rootfs and runs init
        mode = "ro" if spec.rootfs.readonly else "rw"
        parts.append(f"root={ROOT_DEVICE} rootfstype=ext4 {mode} init={spec.init}")
    elif spec.init != "/init":
        parts.append(f"init={spec.init}")
    if not spec.rootfs.readonly:
        parts.append("mvm.rw=1")
    if spec.network.enabled and opts.tap:
        parts.append("mvm.net=1")
    parts.append("mvm.channels=vsock")
    if opts.guest_data is not None:
        from mvm.backends import guestdrive

        parts.append(guestdrive.cmdline(len(spec.disks)))
    parts.append(f"mvm.hostname={spec.name}")
    parts.extend(spec.cmdline)
    return " ".join(parts)


def check(spec: MachineSpec, opts: FcOptions) -> None:
    """What Firecracker cannot do for this spec, refused before anything starts."""
    if spec.machine != "microvm":
        raise BackendError(
            f"Firecracker has no {spec.machine!r} machine type (it is a microVM only)",
            hint="drop --machine / machine = … or use --hypervisor qemu",
        )
    if any(d.ephemeral for d in spec.disks):
        raise BackendError("Firecracker has no throw-away drive overlays; use --hypervisor qemu")
    net = spec.network
    if (net.egress or net.forwards or net.guest_forwards) and not opts.tap:
        raise BackendError(
            "Firecracker has no user-mode networking: ports and egress need a host tap",
            hint="create a tap and set MVM_FIRECRACKER_TAP=NAME, or use --hypervisor qemu "
            "(docs/firecracker.md)",
        )
    if net.forwards or net.guest_forwards:
        raise BackendError(
            "Firecracker: port forwards and the egress proxy over a tap are not implemented; "
            "route the tap yourself or use --hypervisor qemu"
        )
    if spec.ram_file is not None:
        raise BackendError(
            "Firecracker writes guest memory at snapshot time; it cannot run from a RAM file"
        )
    drive_letter(len(spec.disks) + (opts.guest_data is not None) - 1)


def plan(spec: MachineSpec, opts: FcOptions) -> list[ApiCall]:
    """The calls that configure and boot ``spec``, in order (the last is InstanceStart)."""
    check(spec, opts)
    calls = [
        ApiCall("PUT", "/machine-config", {
            "vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib, "smt": False,
            "track_dirty_pages": opts.track_dirty_pages,
        }),
        ApiCall("PUT", "/boot-source", {
            "kernel_image_path": str(spec.kernel),
            **({"initrd_path": str(spec.initramfs)} if spec.initramfs else {}),
            "boot_args": kernel_cmdline(spec, opts),
        }),
    ]  # fmt: skip
    drives = [(d.path, d.readonly) for d in spec.disks]
    if opts.guest_data is not None:
        drives.append((opts.guest_data, True))
    for i, (path, readonly) in enumerate(drives):
        vd = drive_letter(i)
        calls.append(ApiCall("PUT", f"/drives/{vd}", {
            "drive_id": vd, "path_on_host": str(path), "is_root_device": False,
            "is_read_only": readonly,
        }))  # fmt: skip
    if opts.tap:
        calls.append(ApiCall("PUT", f"/network-interfaces/{IFACE}", {
            "iface_id": IFACE, "host_dev_name": opts.tap, "guest_mac": opts.mac,
        }))  # fmt: skip
    calls.append(ApiCall("PUT", "/vsock", {"guest_cid": GUEST_CID,
                                           "uds_path": str(opts.vsock_uds)}))  # fmt: skip
    if opts.tap:
        calls.append(ApiCall("PUT", "/mmds/config", {"version": "V2",
                                                     "network_interfaces": [IFACE]}))  # fmt: skip
    calls.append(ApiCall("PUT", "/mmds", {"mvm": dict(opts.metadata)}))
    calls.append(ApiCall("PUT", "/actions", {"action_type": "InstanceStart"}))
    return calls


def restore_plan(state: Path, memory: Path) -> list[ApiCall]:
    """Load a snapshot, guest RAM mapped copy-on-write from ``memory`` (``File``
    backend: Firecracker maps it MAP_PRIVATE, so clones share the pages); paused."""
    return [ApiCall("PUT", "/snapshot/load", {
        "snapshot_path": str(state),
        "mem_backend": {"backend_type": "File", "backend_path": str(memory)},
        "enable_diff_snapshots": False, "resume_vm": False,
    })]  # fmt: skip


def snapshot_plan(state: Path, memory: Path) -> list[ApiCall]:
    """Pause, then write the device state and the full guest memory."""
    return [
        ApiCall("PATCH", "/vm", {"state": "Paused"}),
        ApiCall("PUT", "/snapshot/create", {"snapshot_type": "Full",
                "snapshot_path": str(state), "mem_file_path": str(memory)}),
    ]  # fmt: skip
