"""From a :class:`ResolvedRun` to a :class:`MachineSpec`: config, secrets and
data drives, credentials, and the neutral guest protocol on the command line.

Split in two so bad input never leaves anything behind: :func:`check`
validates every drive, drive file and credential and checks the image can
take them, before a VM name is reserved; :func:`machine_spec` then writes
the drive images into the VM's 0700 run directory (or, for
``--show-command``, only says where they would go).  The backend removes
the secret-holding files once its hypervisor has opened them
(``MachineSpec.scrub``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mvm import drives
from mvm.backends.spec import Disk, GuestDataTransport, MachineSpec
from mvm.errors import ConfigError, CredentialError, DriveError, NetworkError
from mvm.image.render import APP_USER
from mvm.network import plan as netplan
from mvm.runtime.resolve import ResolvedRun


@dataclass(frozen=True)
class Prepared:
    """A run whose drives and credentials were checked (values in memory only)."""

    run: ResolvedRun
    plan: drives.DrivePlan
    uid: int

    def record_volumes(self) -> list[str]:
        return self.plan.describe()

    def record_credentials(self) -> list[str]:
        return sorted(c.name for c in self.run.credentials)


def check(run: ResolvedRun) -> Prepared:
    """Check every volume, drive file and credential against the image; write nothing."""
    image = run.image
    if run.machine.value == "q35" and image.meta.kernel.direct_boot:
        raise ConfigError(
            f"machine q35 ({run.machine.source}) needs virtio-pci, which the mvm kernel "
            f'(built for microvm) does not have; build the image with kernel = "debian"',
        )
    config_files, secret_files = list(run.config_files), list(run.secret_files)
    net = run.network
    if net.secret_mode == "drive" and net.bindings:
        # the seed's approach: values on the secrets drive, metadata on the config drive
        secret_files += [drives.DriveFile(f"mvm-secrets/{b.key}", b.value, 0o400)
                         for b in net.bindings]  # fmt: skip
        manifest = json.dumps({"secrets": [b.manifest() for b in net.bindings]}, indent=1)
        config_files.append(drives.DriveFile("secrets-manifest.json", manifest + "\n"))
    plan = drives.plan(run.volumes, config_files, secret_files)
    meta = image.meta
    if plan and "drives" not in meta.features:
        raise DriveError(f"image {meta.name} was built by an mvm without drive support; "
                         "rebuild the image or template")  # fmt: skip
    if (net.uses_proxy or net.bindings) and "network" not in meta.features:
        raise NetworkError(f"image {meta.name} was built by an mvm without egress-proxy "
                           "support; rebuild the image or template")  # fmt: skip
    if run.credentials and "credentials" not in meta.features:
        raise CredentialError(f"image {meta.name} was built by an mvm without credential "
                              "support; rebuild the image or template")  # fmt: skip
    drive = guest_data_transport() == "drive" or run.hypervisor.value == "firecracker"
    if drive and "guestdata" not in meta.features:
        raise CredentialError(f"image {meta.name} was built by an mvm without guest-data "
                              "drive support; rebuild the image or template")  # fmt: skip
    uid = meta.uids.entrypoint
    if plan.data and not image.accessible:
        # an OCI image's home is the image's (not recorded; only /tmp is sure to be a tmpfs)
        home = "/tmp" if meta.image is not None else "/root" if uid == 0 else f"/home/{APP_USER}"
        drives.check_mountpoints(plan, image.rootfs, home)
    return Prepared(run, plan, uid)


def machine_spec(
    prep: Prepared, name: str, run_dir: Path, *, materialise: bool = True
) -> tuple[MachineSpec, drives.Attached]:
    """The spec for one start; with ``materialise`` the drive images are written."""
    run = prep.run
    image = run.image
    if materialise:
        att = drives.materialise(prep.plan, run_dir, vm=name, uid=prep.uid)
    else:
        att = drives.layout(prep.plan, run_dir, vm=name)
    kinfo = image.meta.kernel
    if image.accessible:  # writable: a private copy, so fork and snapshots can include it
        from mvm.runtime import rootfs as rootfs_mod

        own = rootfs_mod.path(run_dir)
        if materialise and not own.exists():
            rootfs_mod.clone(image.rootfs, own)
        rootfs = Disk(own, role="rootfs", readonly=False)
    else:
        rootfs = Disk(image.rootfs, role="rootfs")
    # systemd guests always boot through the initramfs: it imports every credential
    # into /run/credentials/@system for PID 1 (docs/systemd.md)
    direct = (
        kinfo.direct_boot and image.meta.guest_init != "systemd"
    ) or not image.initramfs.exists()
    # PID 1: mvm's /init (/.mvm/init in an OCI image), or systemd for init = "systemd"
    init = SYSTEMD if image.meta.guest_init == "systemd" else image.meta.init_exec
    spec = MachineSpec(
        name=name,
        run_dir=run_dir,
        kernel=image.kernel,
        initramfs=None if direct else image.initramfs,
        disks=(rootfs, *att.drives),
        vcpus=int(run.vcpus.value),
        memory_mib=int(run.memory_mib.value),
        network=netplan.prepare(run.network, run_dir, name, run.ports, materialise=materialise),
        credentials=tuple(c.for_guest() for c in run.credentials),
        cmdline=(*(("mvm.trace=1",) if run.trace else ()), *att.cmdline, *channels_override()),
        scrub=att.scrub,
        kaslr=kinfo.kaslr is not False,
        machine=str(run.machine.value),
        init=init,  # direct boot: the kernel runs it; else the initramfs switches to it
        guest_data=guest_data_transport(),
    )
    return spec, att


GUEST_DATA_ENV = "MVM_GUEST_DATA"


def guest_data_transport() -> GuestDataTransport:
    """``MVM_GUEST_DATA=drive`` (internal, for tests): a backend that has its own
    transport for credentials (QEMU: fw_cfg) uses the guest-data drive instead, the
    one Firecracker needs, so that guest path boots under QEMU too."""
    return "drive" if os.environ.get(GUEST_DATA_ENV, "").strip() == "drive" else "fw_cfg"


GUEST_CHANNELS_ENV = "MVM_GUEST_CHANNELS"


def channels_override() -> tuple[str, ...]:
    """``MVM_GUEST_CHANNELS=vsock`` (internal, for tests): ask the guest for its vsock
    channels (``mvm.channels=vsock``, what the Firecracker backend sets) under a backend
    that has none, so /init's vsock path runs in a real boot; the host then gets no exit
    status, no agent and no control channel, by design."""
    return (
        ("mvm.channels=vsock",) if os.environ.get(GUEST_CHANNELS_ENV, "").strip() == "vsock" else ()
    )


SYSTEMD = "/lib/systemd/systemd"
