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

from dataclasses import dataclass
from pathlib import Path

from mvm import drives
from mvm.backends.spec import Disk, MachineSpec, NetworkSpec
from mvm.errors import CredentialError, DriveError
from mvm.image.render import APP_USER
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
    plan = drives.plan(run.volumes, run.config_files, run.secret_files)
    meta = image.meta
    if plan and "drives" not in meta.features:
        raise DriveError(f"image {meta.name} was built by an mvm without drive support; "
                         "rebuild the image or template")  # fmt: skip
    if run.credentials and "credentials" not in meta.features:
        raise CredentialError(f"image {meta.name} was built by an mvm without credential "
                              "support; rebuild the image or template")  # fmt: skip
    uid = meta.uids.entrypoint
    if plan.data and not image.accessible:
        drives.check_mountpoints(plan, image.rootfs, "/root" if uid == 0 else f"/home/{APP_USER}")
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
    rootfs = Disk(image.rootfs, role="rootfs", readonly=not image.accessible,
                  ephemeral=image.accessible)  # fmt: skip
    spec = MachineSpec(
        name=name,
        run_dir=run_dir,
        kernel=image.kernel,
        initramfs=image.initramfs if image.initramfs.exists() else None,
        disks=(rootfs, *att.drives),
        vcpus=int(run.vcpus.value),
        memory_mib=int(run.memory_mib.value),
        network=NetworkSpec(egress=bool(run.egress.value), forwards=run.ports),
        credentials=tuple(c.for_guest() for c in run.credentials),
        cmdline=(*(("mvm.trace=1",) if run.trace else ()), *att.cmdline),
        scrub=att.scrub,
        machine=str(run.machine.value),
    )
    return spec, att
