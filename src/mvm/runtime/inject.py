"""Config, secrets and credentials for one start: validate, write, hand over, scrub.

Split in two so bad input never leaves anything behind: :func:`prepare`
checks every ``-v``, drive file and credential (reading credential files)
before a VM name is reserved; :func:`materialise` writes the drive images and
credential files into the VM's 0700 run directory once it is.  QEMU reads
fw_cfg files while parsing its options and opens drives before its main loop
runs, so as soon as it answers on QMP :func:`scrub` unlinks them: from then
on the values exist only in QEMU's memory and open file descriptors.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mvm import drives
from mvm.backends.qemu.argv import Drive, FwCfg
from mvm.errors import CredentialError, DriveError
from mvm.image.render import APP_USER
from mvm.secrets import credentials as creds_mod
from mvm.secrets.credentials import Credential

if TYPE_CHECKING:
    from mvm.image.builder import Image
    from mvm.runtime.config import RunConfig

EPHEMERAL_DIRS = ("drives", "creds")  # under the run dir; never data volumes


@dataclass
class Injection:
    """Validated inputs of one start (values in memory only)."""

    plan: drives.DrivePlan
    credentials: list[Credential]
    uid: int

    def record_volumes(self) -> list[str]:
        return self.plan.describe()

    def record_credentials(self) -> list[str]:
        return sorted(c.name for c in self.credentials)


@dataclass
class Handover:
    """What QEMU gets: extra drives, fw_cfg/SMBIOS files, kernel arguments."""

    drives: tuple[Drive, ...] = ()
    fw_cfg: tuple[FwCfg, ...] = ()
    smbios: tuple[Path, ...] = ()
    cmdline: tuple[str, ...] = ()
    created: list[Path] = field(default_factory=list)

    def discard_created(self) -> None:
        """Undo data volumes created by a start that then failed."""
        for p in self.created:
            p.unlink(missing_ok=True)


def prepare(image: Image, run: RunConfig) -> Injection:
    """Check every volume, drive file and credential; write nothing."""
    volumes = [v if isinstance(v, drives.VolumeSpec) else drives.parse_volume(v)
               for v in run.volumes]  # fmt: skip
    plan = drives.plan(volumes, run.config_files, run.secret_files)
    host = creds_mod.host_credentials() if run.forward_host_credentials else []
    creds = creds_mod.resolve(run.credentials, run.project_credentials, host)
    rev = image.revision
    features = set(rev.get("guestFeatures", []))
    if plan and "drives" not in features:
        raise DriveError(f"image {rev.get('name')} was built by an mvm without drive support; "
                         "rebuild the image or template")  # fmt: skip
    if creds and "credentials" not in features:
        raise CredentialError(f"image {rev.get('name')} was built by an mvm without credential "
                              "support; rebuild the image or template")  # fmt: skip
    uid = int(rev.get("uids", {}).get("entrypoint", 0))
    if plan.data and not image.accessible:
        drives.check_mountpoints(plan, image.rootfs, "/root" if uid == 0 else f"/home/{APP_USER}")
    return Injection(plan, creds, uid)


def materialise(inj: Injection, run_dir: Path, vm: str, *, smbios: bool) -> Handover:
    """Write drive images and credential files for QEMU (0600 in 0700 dirs)."""
    att = drives.materialise(inj.plan, run_dir, vm=vm, uid=inj.uid)
    try:
        delivery = creds_mod.write(inj.credentials, run_dir / "creds", smbios=smbios)
    except BaseException:
        att.discard_created()
        raise
    return Handover(
        drives=att.drives, fw_cfg=delivery.fw_cfg, smbios=delivery.smbios,
        cmdline=att.cmdline, created=att.created,
    )  # fmt: skip


def pending(run_dir: Path) -> bool:
    """Whether drive images or credential files still wait to be scrubbed."""
    return any((run_dir / name).exists() for name in EPHEMERAL_DIRS)


def scrub(run_dir: Path) -> None:
    """Remove drive images and credential files once QEMU holds them (idempotent)."""
    for name in EPHEMERAL_DIRS:
        d = run_dir / name
        with contextlib.suppress(OSError):
            drives.rmtree_force(d)
