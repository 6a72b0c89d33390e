"""Turn a validated :class:`~mvm.drives.plan.DrivePlan` into disks: the
read-only config and secrets images (built fresh at every start, without
root, in the VM's private run directory) and the persistent data volumes,
in the order that gives the guest its fixed device names."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from mvm import paths
from mvm.backends.spec import Disk, DiskRole
from mvm.drives.plan import DrivePlan, _Tree, _walk
from mvm.drives.spec import DIR_MODES, FILE_MODES, MiB, _guest
from mvm.drives.volumes import ensure_volume, volume_image
from mvm.errors import BuildError, DriveError
from mvm.image import rootfs
from mvm.image.staging import Staging

DRIVES_DIR = "drives"  # under the run dir: config/secrets images, removed once opened


@dataclass
class Attached:
    """What a start hands the backend and the guest.  Everything but data volumes
    lives in ``run_dir/drives`` (:data:`DRIVES_DIR`), removed whole once opened."""

    drives: tuple[Disk, ...] = ()  # vdb, vdc, vdd… in order, placeholders included
    cmdline: tuple[str, ...] = ()  # ("mvm.drives=vdb:config:/mnt/config,…",)
    created: list[Path] = field(default_factory=list)  # new data volumes (undo on failure)
    scrub: tuple[Path, ...] = ()  # secret-holding host files to remove once opened

    def discard_created(self) -> None:
        for p in self.created:
            for f in (p, p.with_suffix(".json")):  # the image and its metadata
                with contextlib.suppress(OSError):
                    f.unlink()
            with contextlib.suppress(OSError):
                p.parent.rmdir()  # the VM's volume directory, if this start made it empty


def layout(p: DrivePlan, run_dir: Path, *, vm: str) -> Attached:
    """Where every drive goes and what the guest is told (pure: nothing is written).

    With virtio-mmio the guest names block devices in attach order, so a
    missing config or secrets drive is replaced by a 0-byte placeholder when
    a later drive exists: /dev/vdb stays config, /dev/vdc secrets, data from vdd.
    """
    if not p:
        return Attached()
    ddir = run_dir / DRIVES_DIR
    mounts: list[str] = []
    disks: list[Disk] = []
    letters = iter("bcdefghijklmnopqrstuvwxyz")
    later = {"config": bool(p.secrets or p.data), "secrets": bool(p.data)}
    kinds: tuple[tuple[DiskRole, _Tree | None], ...] = (
        ("config", p.config),
        ("secrets", p.secrets),
    )
    for kind, tree in kinds:
        letter = next(letters)
        if tree is None:
            if later[kind]:
                disks.append(Disk(ddir / "placeholder.img", role="placeholder"))
            continue
        disks.append(Disk(ddir / f"{kind}.ext4", role=kind))
        mounts.append(f"vd{letter}:{kind}:{_guest(kind)}")
    for v in p.data:
        letter = next(letters)
        disks.append(Disk(volume_image(vm, v.guest), role="data", readonly=False))
        mounts.append(f"vd{letter}:data:{v.guest}")
    scrub = (ddir,) if p.config or p.secrets else ()
    return Attached(drives=tuple(disks), cmdline=("mvm.drives=" + ",".join(mounts),), scrub=scrub)


def materialise(p: DrivePlan, run_dir: Path, *, vm: str, uid: int) -> Attached:
    """Build the config/secrets images in ``run_dir/drives`` (0700, images 0600)
    and create or reuse data volumes; return the disks in device order."""
    out = layout(p, run_dir, vm=vm)
    if not p:
        return out
    ddir = paths.ensure_private_dir(run_dir / DRIVES_DIR)
    data = iter(p.data)
    try:
        for disk in out.drives:
            if disk.role == "placeholder":
                _placeholder(ddir)
            elif disk.role in ("config", "secrets"):
                tree = p.config if disk.role == "config" else p.secrets
                assert tree is not None
                owner = (uid, uid) if disk.role == "secrets" else (0, 0)
                _build_ro(tree, ddir, owner)
            elif disk.role == "data" and ensure_volume(next(data), disk.path, uid):
                out.created.append(disk.path)
    except BaseException:
        out.discard_created()
        raise
    return out


def _placeholder(ddir: Path) -> Path:
    ph = ddir / "placeholder.img"
    if not ph.exists():
        fd = os.open(ph, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    return ph


def _build_ro(tree: _Tree, ddir: Path, owner: tuple[int, int]) -> Path:
    """Stage ``tree`` with the drive's modes, mkfs it, remove the staging copy."""
    kind = tree.kind
    stage = ddir / f".{kind}-stage"
    image = ddir / f"{kind}.ext4"
    try:
        stage.mkdir(mode=0o700)
        for d in tree.dirs:
            shutil.copytree(d, stage, symlinks=True, dirs_exist_ok=True)
        explicit: dict[str, int] = {}
        # through Staging: a symlink from the host directory is never followed on the host
        with Staging(stage) as st:
            for f in tree.files:
                name = f.name.strip("/")
                try:
                    written = st.write(name, f.data(), 0o600)
                except BuildError as exc:
                    raise DriveError(f"{kind} file {name!r}: {exc.message}") from exc
                if f.mode is not None:
                    explicit[written.lstrip("/")] = f.mode
        _set_modes(stage, FILE_MODES[kind], DIR_MODES[kind], explicit)
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        size_mib = -(-tree.size // MiB) if tree.size else None
        # mkfs -d takes the root directory's owner from -E root_owner but not its mode;
        # a read-only drive needs no lost+found (the drive holds exactly the tree)
        ro_fixups = (f"sif / mode 0{stat.S_IFDIR | DIR_MODES[kind]:o}", "rmdir /lost+found")
        try:
            rootfs.make_ext4(stage, image, {}, label=f"mvm-{kind}", size_mib=size_mib,
                             default_owner=owner, debugfs_extra=ro_fixups,
                             what=f"building the {kind} drive")  # fmt: skip
        except BuildError as exc:
            raise DriveError(f"{kind} drive: the files do not fit or could not be written "
                             f"({exc.message})", log_tail=exc.log_tail) from exc  # fmt: skip
        os.chmod(image, 0o600)
        return image
    except OSError as exc:
        raise DriveError(f"building the {kind} drive: {exc.strerror or exc}") from exc
    finally:
        rmtree_force(stage)


def _set_modes(stage: Path, fmode: int, dmode: int, explicit: dict[str, int]) -> None:
    """Files get ``fmode`` (or their DriveFile's mode), directories ``dmode``;
    directories last and deepest first, so writing never needs a closed one."""
    dirs: list[Path] = []
    for rel, st in _walk(stage):
        full = stage / rel
        if stat.S_ISREG(st.st_mode):
            os.chmod(full, explicit.get(rel, fmode))
        elif stat.S_ISDIR(st.st_mode):
            dirs.append(full)
    for d in sorted(dirs, key=lambda x: len(x.parts), reverse=True):
        os.chmod(d, dmode)
    os.chmod(stage, dmode)


def rmtree_force(path: Path) -> None:
    """Remove a staging tree even if its directories were made read-only."""
    if not path.exists():
        return
    for dirpath, _dirs, _names in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(path, ignore_errors=True)
