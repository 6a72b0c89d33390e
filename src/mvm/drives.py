"""Config, secrets and data drives: host directories and in-memory files
turned into ext4 images that the guest mounts at boot.

The contract (from the seeds) is fixed by guest path:

======================  ===========  ===================================================
guest path              device       what the guest sees
======================  ===========  ===================================================
``/mnt/config``         ``vdb``      read-only; every file 0444, directories 0555, root
``/mnt/secrets``        ``vdc``      read-only; files 0400, directories 0500, owned by
                                     the entrypoint's uid
``/any/path`` + SIZE    ``vdd``…     read-write ext4 data volume, created once (seeded
                                     from the host directory) and kept across
                                     ``down``/``up`` of the same VM name
======================  ===========  ===================================================

Config and secrets images are built fresh at every start, without root
(``mkfs.ext4 -d`` from a staging copy, owners fixed with ``debugfs`` by
:func:`mvm.image.rootfs.make_ext4`), inside the VM's private run directory.
The runtime removes them as soon as QEMU has opened them.

**Drive letters.** With virtio-mmio on ``-M microvm`` the guest names
virtio-blk devices in the order of ``-drive``/``-device`` on the command line
(measured: 4 extra drives came up as vdb..vde in argv order).  To keep the
letters fixed when only some drives are given, a zero-length placeholder
(``placeholder.img``: costs no mkfs, shows up as a 0-byte disk) takes the
place of a missing config or secrets drive when a later drive exists.  The
guest mounts only what ``mvm.drives=`` on the kernel command line lists, so
a placeholder is never mounted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mvm import paths, proc
from mvm.backends.qemu.argv import Drive
from mvm.config.guestpaths import name_problem
from mvm.errors import BuildError, DriveError
from mvm.image import rootfs
from mvm.image.staging import Staging
from mvm.log import get_logger

log = get_logger(__name__)

CONFIG_PATH = "/mnt/config"
SECRETS_PATH = "/mnt/secrets"
MiB = 1 << 20
CONFIG_MAX = 256 * MiB  # default capacity of the config drive (give a SIZE for more)
SECRETS_MAX = 16 * MiB  # default capacity of the secrets drive
DATA_MIN = 8 * MiB  # a journal needs room
DRIVE_MIN = 1 * MiB
SIZE_MAX = 1 << 40
MAX_DATA_VOLUMES = 8  # vdd..vdk; keeps mvm.drives= well inside the kernel command line
GUEST_PATH_MAX = 128
FILE_MODES = {"config": 0o444, "secrets": 0o400}
DIR_MODES = {"config": 0o555, "secrets": 0o500}

VolumeKind = Literal["config", "secrets", "data"]
_SIZE_RE = re.compile(r"(\d+)([KMGT]?)(?:i?B)?", re.IGNORECASE)  # fullmatch only
_GUEST_RE = re.compile(r"(/[A-Za-z0-9._@+-]+)+")  # fullmatch only: "$" lets a newline through
# nothing may be mounted over these: the guest's own system would disappear under it
_RESERVED = ("/proc", "/sys", "/dev", "/run", "/etc", "/bin", "/sbin", "/usr", "/lib",
             "/lib64", "/init", "/lost+found")  # fmt: skip


@dataclass(frozen=True)
class DriveFile:
    """One file to put on the config or secrets drive, from Python.

    Content-agnostic (JSON, TOML, env files, certificates…).  ``name`` is a
    path relative to the drive (``"app.json"``, ``"tls/key.pem"``); ``mode``
    defaults to 0444 on the config drive and 0400 on the secrets drive.  The
    content is left out of ``repr`` so logging a run config never prints it.
    """

    name: str
    content: str | bytes = field(repr=False)
    mode: int | None = None

    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content


@dataclass(frozen=True)
class VolumeSpec:
    """A parsed ``-v HOST_DIR:/guest/path[:SIZE]``."""

    host: Path
    guest: str
    size: int | None = None  # bytes

    @property
    def kind(self) -> VolumeKind:
        if self.guest == CONFIG_PATH:
            return "config"
        if self.guest == SECRETS_PATH:
            return "secrets"
        return "data"

    def __str__(self) -> str:
        return f"{self.host}:{self.guest}" + (f":{_human(self.size)}" if self.size else "")


def parse_size(text: str) -> int:
    """``512K``, ``64M``, ``1G``, ``2GiB``… (binary units; bare digits are bytes)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise DriveError(f"malformed size {text!r}: use a number with K, M, G or T, e.g. 256M")
    n = int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]
    if n <= 0 or n > SIZE_MAX:
        raise DriveError(f"size {text!r} out of range (1 byte to 1T)")
    return n


def _human(n: int) -> str:
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n / MiB:.1f}M" if n >= MiB else f"{n}B"


def check_guest_path(guest: str, what: str = "guest path") -> str:
    """Validate a mount point: absolute, plain characters, not a system directory."""
    if not _GUEST_RE.fullmatch(guest) or len(guest) > GUEST_PATH_MAX:
        raise DriveError(
            f"invalid {what} {guest!r}: use an absolute path of A-Z a-z 0-9 . _ @ + - "
            f"(at most {GUEST_PATH_MAX} characters)"
        )
    parts = guest.split("/")
    if "." in parts or ".." in parts:
        raise DriveError(f"invalid {what} {guest!r}: no '.' or '..' components")
    if any(guest == r or guest.startswith(r + "/") for r in _RESERVED):
        raise DriveError(f"{what} {guest!r} would hide a system directory; choose another")
    return guest


def parse_volume(spec: str) -> VolumeSpec:
    """Parse and check ``HOST_DIR:/guest/path[:SIZE]`` (the host directory must exist).

    ``/mnt/config`` and ``/mnt/secrets`` take an optional SIZE (their capacity);
    any other guest path is a data volume and needs one.
    """
    parts = spec.split(":")
    size_text = None
    if len(parts) >= 3 and not parts[-1].startswith("/"):
        size_text, guest, host = parts[-1], parts[-2], ":".join(parts[:-2])
    elif len(parts) >= 2:
        guest, host = parts[-1], ":".join(parts[:-1])
    else:
        raise DriveError(f"invalid --volume {spec!r}: use HOST_DIR:/guest/path[:SIZE]")
    if not host or not guest.startswith("/"):
        raise DriveError(f"invalid --volume {spec!r}: use HOST_DIR:/guest/path[:SIZE]")
    guest = check_guest_path(guest.rstrip("/") or "/")
    size = parse_size(size_text) if size_text is not None else None
    vol = VolumeSpec(Path(host).expanduser().absolute(), guest, size)
    if vol.kind == "data":
        if size is None:
            raise DriveError(
                f"--volume {spec!r}: {guest} is not {CONFIG_PATH} or {SECRETS_PATH}; "
                "a data volume needs a size, e.g. HOST_DIR:/data:1G"
            )
        if size < DATA_MIN:
            raise DriveError(f"--volume {spec!r}: a data volume needs at least {_human(DATA_MIN)}")
    elif size is not None and size < DRIVE_MIN:
        raise DriveError(f"--volume {spec!r}: the {vol.kind} drive needs at least 1M")
    _check_host_dir(vol.host)
    return vol


def _check_host_dir(host: Path) -> None:
    if not host.exists():
        raise DriveError(f"volume source {host}: no such directory")
    if not host.is_dir():
        raise DriveError(f"volume source {host}: is a file, not a directory")
    if not os.access(host, os.R_OK | os.X_OK):
        raise DriveError(f"volume source {host}: permission denied")


@dataclass
class _Tree:
    """What one drive will hold: host directories plus DriveFiles, checked."""

    kind: VolumeKind
    dirs: list[Path] = field(default_factory=list)
    files: list[DriveFile] = field(default_factory=list)
    size: int | None = None  # explicit capacity
    total: int = 0
    sources: list[str] = field(default_factory=list)

    @property
    def capacity(self) -> int:
        return self.size or (CONFIG_MAX if self.kind == "config" else SECRETS_MAX)


@dataclass
class DrivePlan:
    """Every drive of one start, validated (nothing written yet)."""

    config: _Tree | None = None
    secrets: _Tree | None = None
    data: list[VolumeSpec] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.config or self.secrets or self.data)

    def describe(self) -> list[str]:
        """Volume specs for the VM record (host paths and guest paths only)."""
        out: list[str] = []
        for t in (self.config, self.secrets):
            if t is not None:
                out += t.sources
        return out + [str(v) for v in self.data]


def _walk(top: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, lstat) for everything under ``top``, sorted."""
    for dirpath, dirs, names in os.walk(top):
        dirs.sort()
        for n in sorted(dirs + names):
            full = os.path.join(dirpath, n)
            yield os.path.relpath(full, top), os.lstat(full)


def _check_name(rel: str, where: str) -> None:
    problem = name_problem(where, rel)
    if problem:
        raise DriveError(problem)


def scan_dir(host: Path, kind: str, limit: int | None = None) -> int:
    """Check every entry under ``host`` can go on a drive; return the bytes of its files.

    Only regular files, directories and symlinks; every file readable; when
    ``limit`` is given, no single file larger than it (sizes are ``st_size``,
    so a sparse file counts in full: it would on the drive too).
    """
    total = 0
    for rel, st in _walk(host):
        _check_name(rel, f"volume source {host}")
        full = host / rel
        if stat.S_ISREG(st.st_mode):
            if not os.access(full, os.R_OK):
                raise DriveError(f"volume source {host}: cannot read {rel}: permission denied")
            if limit is not None and st.st_size > limit:
                raise DriveError(
                    f"{kind} drive: {rel} ({_human(st.st_size)}) is larger than the drive "
                    f"({_human(limit)}); give it a size: -v DIR:{_guest(kind)}:SIZE",
                )
            total += st.st_size
        elif stat.S_ISDIR(st.st_mode):
            if not os.access(full, os.R_OK | os.X_OK):
                raise DriveError(f"volume source {host}: cannot read {rel}/: permission denied")
        elif not stat.S_ISLNK(st.st_mode):
            raise DriveError(f"volume source {host}: {rel} is not a file, directory or symlink")
    return total


def _check_drive_file(f: DriveFile, kind: str) -> str:
    name = f.name.strip("/")
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts):
        raise DriveError(f"{kind} file name {f.name!r}: use a relative path without '..'")
    _check_name(name, f"{kind} file")
    if f.mode is not None and not 0 <= f.mode <= 0o777:
        raise DriveError(f"{kind} file {name}: mode {f.mode:#o} out of range (0..0o777)")
    return name


def plan(
    volumes: Sequence[VolumeSpec],
    config_files: Sequence[DriveFile] = (),
    secret_files: Sequence[DriveFile] = (),
) -> DrivePlan:
    """Validate every volume and drive file; write nothing (bad input → DriveError)."""
    out = DrivePlan()
    trees: dict[str, _Tree] = {}
    seen: set[str] = set()
    for v in volumes:
        if v.guest in seen:
            raise DriveError(f"two volumes for {v.guest}")
        seen.add(v.guest)
        if v.kind == "data":
            out.data.append(v)
        else:
            trees[v.kind] = _Tree(v.kind, dirs=[v.host], size=v.size, sources=[str(v)])
    if len(out.data) > MAX_DATA_VOLUMES:
        raise DriveError(f"at most {MAX_DATA_VOLUMES} data volumes per VM")
    kinds: tuple[tuple[VolumeKind, Sequence[DriveFile]], ...] = (
        ("config", config_files), ("secrets", secret_files),
    )  # fmt: skip
    for kind, files in kinds:
        if not files:
            continue
        tree = trees.setdefault(kind, _Tree(kind))
        names = [_check_drive_file(f, kind) for f in files]
        if len(set(names)) != len(names):
            raise DriveError(f"{kind} files: the same name given twice")
        tree.files = list(files)
        tree.sources.append(f"<{len(files)} file(s)>:{_guest(kind)}")
    for tree in trees.values():
        limit = tree.capacity
        tree.total = sum(scan_dir(d, tree.kind, limit) for d in tree.dirs)
        for f in tree.files:
            n = len(f.data())
            if n > limit:
                raise DriveError(f"{tree.kind} file {f.name} ({_human(n)}) is larger than the "
                                 f"drive ({_human(limit)})")  # fmt: skip
            tree.total += n
        if tree.total > limit:
            raise DriveError(
                f"{tree.kind} drive: {_human(tree.total)} of files do not fit on the "
                f"{_human(limit)} drive; give it a size: -v DIR:{_guest(tree.kind)}:SIZE"
            )
    out.config, out.secrets = trees.get("config"), trees.get("secrets")
    for v in out.data:
        total = scan_dir(v.host, "data")
        assert v.size is not None
        if total > v.size * 0.9:
            raise DriveError(f"data volume {v.guest}: {v.host} holds {_human(total)}, which "
                             f"does not fit in {_human(v.size)}")  # fmt: skip
    return out


def _guest(kind: str) -> str:
    return CONFIG_PATH if kind == "config" else SECRETS_PATH


@dataclass
class Attached:
    """The result of :func:`materialise`: what to hand QEMU and the guest.  Everything
    but data volumes lives in ``run_dir/drives``, which the runtime removes whole."""

    drives: tuple[Drive, ...] = ()  # vdb, vdc, vdd… in order, placeholders included
    cmdline: tuple[str, ...] = ()  # ("mvm.drives=vdb:config:/mnt/config,…",)
    created: list[Path] = field(default_factory=list)  # new data volumes (undo on failure)

    def discard_created(self) -> None:
        for p in self.created:
            with contextlib.suppress(OSError):
                p.unlink()


def volume_image(vm: str, guest: str) -> Path:
    """Where the data volume for (VM name, guest path) lives."""
    slug = guest.strip("/").replace("/", "-")[:40]
    digest = hashlib.sha256(guest.encode()).hexdigest()[:8]
    return paths.volumes_dir() / paths.validate_name(vm, "VM name") / f"{slug}-{digest}.ext4"


def check_mountpoints(p: DrivePlan, rootfs_image: Path, home: str) -> None:
    """On a read-only (sealed) rootfs the guest cannot create mount points:
    each data volume's path must exist in the image or lie on a tmpfs
    (the entrypoint's home, /tmp)."""
    for v in p.data:
        if any(v.guest.startswith(t + "/") for t in (home, "/tmp")):
            continue
        res = proc.run(["debugfs", "-R", f'stat "{v.guest}"', rootfs_image], timeout=30,
                       error=DriveError, what="checking the image for mount points")  # fmt: skip
        if b"not found" in res.stderr:
            raise DriveError(
                f"data volume {v.guest}: no such directory in the sealed image "
                f"(its rootfs is read-only); use /data, a path under {home}, or add it to the image"
            )


def materialise(p: DrivePlan, run_dir: Path, *, vm: str, uid: int) -> Attached:
    """Build the config/secrets images in ``run_dir/drives`` (0700, images 0600)
    and create or reuse data volumes; return drives in device order."""
    out = Attached()
    if not p:
        return out
    ddir = paths.ensure_private_dir(run_dir / "drives")
    mounts: list[str] = []
    drives: list[Drive] = []
    letters = iter("bcdefghijklmnopqrstuvwxyz")
    try:
        # a missing config/secrets drive still takes its letter if a later drive exists
        later = {"config": bool(p.secrets or p.data), "secrets": bool(p.data)}
        for kind, tree in (("config", p.config), ("secrets", p.secrets)):
            letter = next(letters)
            if tree is None:
                if later[kind]:
                    drives.append(Drive(_placeholder(ddir), readonly=True))
                continue
            owner = (uid, uid) if kind == "secrets" else (0, 0)
            image = _build_ro(tree, ddir, owner)
            drives.append(Drive(image, readonly=True))
            mounts.append(f"vd{letter}:{kind}:{_guest(kind)}")
        for v in p.data:
            letter = next(letters)
            image = volume_image(vm, v.guest)
            if _ensure_volume(v, image, uid):
                out.created.append(image)
            drives.append(Drive(image, readonly=False))
            mounts.append(f"vd{letter}:data:{v.guest}")
    except BaseException:
        out.discard_created()
        raise
    out.drives = tuple(drives)
    out.cmdline = ("mvm.drives=" + ",".join(mounts),)
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


def _ensure_volume(v: VolumeSpec, image: Path, uid: int) -> bool:
    """Create the data volume (seeded from ``v.host``) unless it exists; grow it if
    asked for more.  Return whether it was created now."""
    assert v.size is not None
    size_mib = -(-v.size // MiB)
    if image.exists():
        have = image.stat().st_size
        if size_mib * MiB < have:
            raise DriveError(
                f"data volume {v.guest} is {_human(have)}; it cannot shrink to {_human(v.size)} "
                f"(remove {image} to start over)"
            )
        if size_mib * MiB > have:
            _grow(image, size_mib, v.guest)
        return False
    paths.ensure_private_dir(image.parent)
    paths.ensure_private_dir(paths.volumes_dir())
    tmp = image.with_name(f".{image.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        rootfs.make_ext4(v.host, tmp, {}, label="mvm-data", size_mib=size_mib,
                         default_owner=(uid, uid), journal=True,
                         what=f"creating data volume {v.guest}")  # fmt: skip
        os.replace(tmp, image)
    except BuildError as exc:
        raise DriveError(f"data volume {v.guest}: {exc.message}", log_tail=exc.log_tail) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    log.info("created data volume %s (%s) at %s", v.guest, _human(v.size), image)
    return True


def _grow(image: Path, size_mib: int, guest: str) -> None:
    try:
        proc.run(
            ["e2fsck", "-f", "-p", image],
            error=DriveError,
            ok=(0, 1),  # 1: fixed
            what=f"checking data volume {guest}",
        )
        os.truncate(image, size_mib * MiB)
        proc.run(["resize2fs", image], error=DriveError, what=f"growing data volume {guest}")
    except OSError as exc:
        raise DriveError(f"growing data volume {guest}: {exc.strerror}") from exc
