"""Build an image (kernel + initramfs + rootfs.ext4 + revision.json) from a
project, cached by a hash of every input.

An unchanged project costs one hash of its inputs and a stat: the no-op path
must stay well under 0.3 s, so it reads no kernel bytes and calls no apt
(file contents are hashed once and remembered, :mod:`mvm.image.hashcache`).
Builds happen in a temporary directory next to the cache and appear with one
``rename``: a crash, a full disk or Ctrl-C never leaves a half image.

**Reproducible.** The same inputs give byte-identical ``kernel``,
``initramfs.cpio`` and ``rootfs.ext4``: every timestamp is
``SOURCE_DATE_EPOCH`` (default 1, as in Nix: e2fsprogs reads 0 as "unset"),
the filesystem UUID and hash seed derive from the input hash, and entries
are written in sorted order.  Only revision.json's ``createdAt`` and
``buildSeconds`` differ between two builds.

**Private.** An image can hold secrets a project baked in with ``[files]``,
so every directory the builder creates under ``MVM_HOME`` is 0700 and every
file 0600 (QEMU runs as the same user).

**Hostile projects.** The staging tree is written only through
:class:`~mvm.image.staging.Staging` (never follows a symlink on the host),
``copy`` sources are read only through :mod:`mvm.image.source` (confined to
the project, no FIFOs or devices), and nothing the project writes may land
on a path mvm writes or the guest mounts over (:mod:`mvm.config.guestpaths`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import time
import uuid
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from mvm import __version__, paths
from mvm.config.guestpaths import reserved
from mvm.config.schema import GuestSpec, Project
from mvm.errors import BuildError, ConfigError, DiskFullError
from mvm.guest import EXTENSIONS, GUEST_FEATURES, GUEST_FILES
from mvm.guest import read as guest_file
from mvm.image import contents, guestbin, initramfs, source
from mvm.image import kernel as kernels
from mvm.image.hashcache import ContentHashes
from mvm.image.meta import ARTEFACTS, ImageMeta, KernelInfo
from mvm.image.meta import load as load_meta
from mvm.image.render import GuestFile, render, systemd_units
from mvm.image.source import Source
from mvm.image.staging import Staging
from mvm.log import get_logger
from mvm.proc import is_disk_full
from mvm.state.atomic import atomic_file, locked, private_tempdir, publish_dir

log = get_logger(__name__)


EXPECTED_BOOT_MS = {"kvm": 300, "tcg": 2000}
DEFAULT_EPOCH = 1
EPOCH_MAX = (1 << 31) - 1  # ext4's classic 32-bit timestamps
BUILD_LOCK_TIMEOUT = 1800.0
HASHES = "content-hashes.json"  # in MVM_CACHE: keyed by device and inode, shareable
AGENT = "/usr/local/bin/mvm-guest-agent"  # an OCI image's is /.mvm/agent


@dataclass(frozen=True)
class Image:
    """A built image directory and its metadata."""

    path: Path
    revision: dict[str, Any]
    spec: GuestSpec | None = None  # what it was built from, when known (not persisted)

    @property
    def kernel(self) -> Path:
        return self.path / "kernel"

    @property
    def initramfs(self) -> Path:
        return self.path / "initramfs.cpio"

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs.ext4"

    @cached_property
    def meta(self) -> ImageMeta:
        """``revision`` validated (the one typed view every reader uses)."""
        return ImageMeta.from_json(self.revision, str(self.path / "revision.json"))

    @property
    def input_hash(self) -> str:
        return self.meta.input_hash

    @property
    def accessible(self) -> bool:
        return self.meta.accessible

    @classmethod
    def load(cls, path: Path) -> Image:
        """A built image directory; its revision.json is validated on the way in."""
        try:
            meta = load_meta(path / "revision.json")
        except FileNotFoundError as exc:
            raise BuildError(f"{path}: not a built image (no revision.json)") from exc
        image = cls(path, meta.to_json())
        image.__dict__["meta"] = meta
        return image


@dataclass(frozen=True)
class Inputs:
    """Everything a build reads, scanned once: the hash decides whether to build,
    and the build copies exactly what was hashed."""

    digest: str
    epoch: int
    sources: tuple[Source, ...]  # one per spec.copy entry
    image: str | None = None  # an OCI image's identity (oci.identity), when there is one


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` (reproducible-builds.org), clamped to at least 1."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not raw:
        return DEFAULT_EPOCH
    if not re.fullmatch(r"[0-9]{1,10}", raw) or int(raw) > EPOCH_MAX:
        raise ConfigError(f"SOURCE_DATE_EPOCH={raw!r}: must be seconds since 1970 "
                          f"(0..{EPOCH_MAX})")  # fmt: skip
    return max(int(raw), 1)


def input_hash(project: Project, kernel: kernels.Kernel, hashes: ContentHashes) -> Inputs:
    """Hash everything that determines the image's bytes (not runtime settings)."""
    spec = project.spec
    h = hashlib.sha256()
    epoch = source_date_epoch()
    busybox = initramfs.busybox_path()
    fd = os.open(busybox, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        busybox_sha = hashes.of_fd(fd, os.fstat(fd))
    finally:
        os.close(fd)
    identity = {
        "mvm": __version__,
        "kernel": kernel.identity,
        "busybox": busybox_sha,
        "packages": packages(spec),
        "dev": spec.dev,
        "init": spec.init,
        "hypervisor": spec.hypervisor,
        "epoch": epoch,
    }
    if spec.init == "systemd":  # built with an initramfs even for a direct-boot kernel
        identity["initramfs"] = True
    image_id = None
    if spec.image is not None:
        from mvm.image import oci

        image_id = oci.identity(spec.image, hashes)
        identity["image"] = {"ref": spec.image.skopeo_ref(), "identity": image_id,
                             "explicit": sorted(spec.explicit)}  # fmt: skip
    h.update(json.dumps(identity).encode())
    for name in GUEST_FILES:
        h.update(guest_file(name))
    h.update(b"guestbin\0" + guestbin.cache_key().encode())
    for f in render(spec):
        h.update(f"{f.path}\0{f.mode}\0{f.uid}\0".encode() + f.content)
    if spec.init == "systemd":
        units, links = systemd_units(spec)
        for f in units:
            h.update(f"{f.path}\0{f.mode}\0{f.uid}\0".encode() + f.content)
        h.update(json.dumps(links).encode())
    for fs in spec.files:
        h.update(f"{fs.path}\0{fs.mode}\0".encode() + fs.content.encode())
    sources = []
    for i, c in enumerate(spec.copy):
        src = source.scan(c.src, project.root, f"copy[{i}].from", hashes)
        h.update(f"copy\0{c.dest}\0{src.digest}\0".encode())
        sources.append(src)
    return Inputs(h.hexdigest(), epoch, tuple(sources), image_id)


def current_hash(project: Project) -> str:
    """The input hash ``build(project)`` would produce, without building (freshness:
    ``mvmctl ls`` compares it with what a VM was last built or booted at)."""
    kernel = kernels.resolve(project.spec.kernel)
    hashes = ContentHashes(paths.cache_dir() / HASHES)
    digest = input_hash(project, kernel, hashes).digest
    hashes.save()
    return digest


def build(project: Project, *, force: bool = False) -> Image:
    """Return the image for ``project``, building it only if its inputs changed."""
    spec = project.spec
    kernel = kernels.resolve(spec.kernel)
    images = paths.images_dir()
    hashes = ContentHashes(paths.cache_dir() / HASHES)
    inputs = input_hash(project, kernel, hashes)
    dest = images / inputs.digest
    if not force and (dest / "revision.json").is_file():
        hashes.save()
        return replace(Image.load(dest), spec=spec)
    paths.ensure_private_dir(paths.home())
    paths.ensure_private_dir(images)
    hashes.save()
    # another mvmctl building the same inputs: wait for it (bounded: a build with
    # packages takes minutes, never half an hour) instead of building twice
    with locked(images / f".{inputs.digest}.lock", timeout=BUILD_LOCK_TIMEOUT):
        if not force and (dest / "revision.json").is_file():
            return replace(Image.load(dest), spec=spec)  # someone else built it meanwhile
        # no umask games: Staging gives every file and directory in the image an
        # explicit mode, and mvmctl's 077 keeps anything else the build writes private
        try:
            return replace(_build(spec, kernel, inputs, images, dest), spec=spec)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFullError("no space left on device while building the image") from exc
            raise BuildError(f"building {spec.name}: {exc.strerror or exc}") from exc


# what init = "systemd" adds to the project's packages (no dbus: systemctl talks to
# PID 1 over its private socket; no udev: devtmpfs is enough for virtio disks)
SYSTEMD_PACKAGES = ("systemd",)


def packages(spec: GuestSpec) -> tuple[str, ...]:
    """The Debian packages the image gets: the project's, plus systemd for systemd guests."""
    if spec.init == "systemd":
        return tuple(sorted({*spec.packages, *SYSTEMD_PACKAGES}))
    return spec.packages


def own_files(
    spec: GuestSpec,
    late: list[tuple[str, bytes]],
    base: dict[str, bytes] | None = None,
    vsock: list[tuple[str, bytes]] | None = None,
) -> list[GuestFile]:
    """Every file mvm itself writes into the rootfs (after the project's files, so
    they win; :data:`mvm.config.guestpaths.MVM_FILES` lists where they go).  An OCI
    image's ``/init`` and shell are its own: mvm's init is ``/.mvm/init`` there, and
    its scripts run under ``/.mvm/bin/sh``."""
    init = guest_file("init.sh")
    agent = AGENT
    if spec.image is not None:
        init = _private_shell(_private_path(init))
        if init.count(AGENT.encode()) != 1:
            raise BuildError("internal: init.sh does not start the agent exactly once")
        agent = "/.mvm/agent"
        init = init.replace(AGENT.encode(), agent.encode())
    files = [
        *render(spec, base),
        GuestFile(spec.init_path, init, 0o755),
        GuestFile(agent, guestbin.build("mvm-guest-agent"), 0o755),
        *(GuestFile(dest, guest_file(src), 0o644) for src, dest in EXTENSIONS.items()),
        GuestFile("/etc/mvm/rootops.sh", guest_file("rootops.sh"), 0o644),
        GuestFile("/etc/mvm/bin/mvm-reseed", guestbin.build("mvm-reseed"), 0o755),
        GuestFile("/etc/mvm/bin/mvm-vsock", guestbin.build("mvm-vsock"), 0o755),
    ]
    files += [GuestFile(f"/lib/modules/mvm/{n}.ko", data) for n, data in late]
    files.append(GuestFile("/etc/mvm/modules.late", (" ".join(n for n, _ in late) + "\n").encode()))
    if vsock:  # a modular kernel's vsock transport, loaded instead under mvm.channels=vsock
        names = {n for n, _ in late}
        files += [GuestFile(f"/lib/modules/mvm/{n}.ko", d) for n, d in vsock if n not in names]
        files.append(GuestFile("/etc/mvm/modules.vsock",
                               (" ".join(n for n, _ in vsock) + "\n").encode()))  # fmt: skip
    if spec.init == "systemd":
        files += systemd_units(spec)[0]
    return files


def _private_shell(script: bytes) -> bytes:
    if not script.startswith(b"#!/bin/sh\n"):
        raise BuildError("internal: a guest script does not start with #!/bin/sh")
    return b"#!/.mvm/bin/sh\n" + script[len(b"#!/bin/sh\n") :]


def _private_path(script: bytes) -> bytes:
    """init.sh with /.mvm/bin first on PATH (mvm's busybox, not the image's tools)."""
    line = b"\nexport PATH="
    if script.count(line) != 1:
        raise BuildError("internal: init.sh does not set PATH exactly once")
    return script.replace(line, line + b"/.mvm/bin:")


def _guard(spec: GuestSpec, what: str) -> source.Guard:
    """Refuse a project write that resolved (through the image's symlinks) to a
    path mvm writes or the guest mounts over."""
    home = spec.sealed_home

    def check(resolved: str, rel: str) -> None:
        why = reserved(resolved, home)
        if why:
            shown = f"{rel!r} is written to {resolved!r}" if rel else f"{resolved!r}"
            raise BuildError(f"{what}: {shown}, which {why}")

    return check


def _build(
    spec: GuestSpec, kernel: kernels.Kernel, inputs: Inputs, images: Path, dest: Path
) -> Image:
    from mvm.image import debian, rootfs  # only a real build needs them

    started = time.monotonic()
    work = private_tempdir(images, ".build-")  # a dead build's directory is swept here
    try:
        out = work / "out"
        out.mkdir(mode=0o700)
        root = work / "root"
        owners: dict[str, tuple[int, int]] = {}
        base: dict[str, bytes] | None = None
        unpacked = None
        if spec.image is not None:
            from mvm.image import oci

            unpacked = oci.unpack(spec.image, work)
            root, owners = unpacked.root, dict(unpacked.owners)
        with Staging(root) as st:
            if unpacked is not None:
                assert spec.image is not None
                _refuse_reserved(st, spec.image.ref)
                spec = oci.apply(spec, unpacked.config, st, spec.image.ref)
                base = {p: st.read(p, oci.PASSWD_MAX) or b""
                        for p in ("/etc/passwd", "/etc/group", "/etc/shadow")}  # fmt: skip
                rootfs.skeleton(st, rootfs.OCI_SKELETON)
                if spec.workdir and not st.is_dir(spec.workdir):  # runtimes create it too
                    _guard(spec, "the image's WorkingDir")(st.mkdir(spec.workdir), "")
            else:
                rootfs.skeleton(st)
            uid = spec.uids.entrypoint
            # order: mvm's skeleton, packages, busybox, the project's files, then
            # mvm's own files (which the project may not touch: guestpaths)
            pkgs = debian.resolve(packages(spec)) if packages(spec) else []
            if pkgs:
                debian.extract(debian.fetch(pkgs), st)
            if unpacked is not None:
                rootfs.install_busybox_private(st, initramfs.busybox_path(), "/.mvm/bin")
            else:
                rootfs.install_busybox(st, initramfs.busybox_path())
            for c, src in zip(spec.copy, inputs.sources, strict=True):
                source.copy_into(src, st, c.dest, _guard(spec, src.what))
            for f in spec.files:
                path = st.write(f.path, f.content.encode(), f.mode)
                _guard(spec, f"files.{f.path!r}")(path, "")
                owners[path] = (uid, uid)
            vsock = initramfs.late_modules(kernel, initramfs.VSOCK_MODULES, required=False)
            own = own_files(spec, initramfs.late_modules(kernel), base, vsock)
            for g in own:  # an image file mvm replaces does not keep the image's owner
                owners.pop(st.resolve(g.path), None)
            owners.update(rootfs.write_files(st, own))
            if spec.init == "systemd":
                rootfs.systemd_tree(st, systemd_units(spec)[1])
            if unpacked is None or spec.sealed_home:
                existed = st.is_dir(spec.home)
                home = st.mkdir(spec.home)
                if uid != 0 and (unpacked is None or not existed):
                    owners[home] = (uid, uid)
            st.set_times(inputs.epoch)
        manifest = contents.scan(root, pkgs)  # for `mvmctl update`'s diff
        stamp = rootfs.Stamp(
            inputs.epoch,
            str(uuid.UUID(hex=inputs.digest[:32], version=4)),
            str(uuid.UUID(hex=inputs.digest[32:], version=4)),
        )
        rootfs.make_ext4(root, out / "rootfs.ext4", owners, stamp=stamp)
        shutil.rmtree(root)
        # the kernel mounts the rootfs itself: an empty artefact; but a systemd guest always
        # boots through the initramfs, which imports every credential for systemd
        if kernel.boot == "direct" and spec.init != "systemd":
            with atomic_file(out / "initramfs.cpio"):
                pass
        else:
            initramfs.build(kernel, out / "initramfs.cpio", epoch=inputs.epoch)
        _install_kernel(kernel.image, out / "kernel")
        contents.write(out, manifest)
        revision = _revision(spec, kernel, inputs.digest, out, time.monotonic() - started)
        if unpacked is not None:
            assert spec.image is not None
            revision["schema"] = 2  # an older mvm would boot /init: it must refuse the image
            revision["initPath"] = spec.init_path
            revision["image"] = {"ref": spec.image.ref, "digest": unpacked.digest,
                                 "exposedPorts": list(spec.exposed_ports)}  # fmt: skip
        with atomic_file(out / "checksums.json") as meta:
            meta.write(json.dumps(revision["checksums"], indent=2, sort_keys=True).encode())
        with atomic_file(out / "revision.json") as meta:  # last: it marks the image complete
            meta.write(json.dumps(revision, indent=2, sort_keys=True).encode())
        publish_dir(out, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("built %s in %.1fs", spec.name, time.monotonic() - started)
    return Image.load(dest)


def _refuse_reserved(st: Staging, ref: str) -> None:
    """An image may not bring files where mvm keeps its own (they would be replaced,
    or redirect mvm's writes through the image's symlinks)."""
    for top in ("/.mvm", "/etc/mvm", "/lib/modules/mvm"):
        if st.lexists(top):
            raise BuildError(f"image {ref} has {top}, which mvm reserves for its own files")


def _install_kernel(src: Path, dest: Path) -> None:
    """Hard-link the kernel when the source is already private to us (a link shares
    the mode too); otherwise copy it into a new 0600 file."""
    fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fsrc:
        st = os.fstat(fsrc.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"kernel {str(src)!r} is not a regular file")
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            # our own cache file (fetched before the cache was private): tighten it once
            # rather than copy 50 MB into every image
            with contextlib.suppress(OSError):
                os.fchmod(fsrc.fileno(), stat.S_IMODE(st.st_mode) & 0o700)
                st = os.fstat(fsrc.fileno())
        if st.st_uid == os.geteuid() and not st.st_mode & 0o077:
            try:
                os.link(src, dest)
                return
            except OSError:
                pass
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(out, "wb") as fdst:
            os.fchmod(fdst.fileno(), 0o600)
            shutil.copyfileobj(fsrc, fdst, 1 << 20)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _revision(
    spec: GuestSpec, kernel: kernels.Kernel, digest: str, out: Path, secs: float
) -> dict[str, Any]:
    checksums = {name: sha256_file(out / name) for name in ARTEFACTS}
    return {
        "schema": 1,
        "name": spec.name,
        "accessible": spec.accessible,
        "sealed": spec.sealed,
        "entrypointKind": spec.entrypoint.kind,
        "init": spec.init,
        "hypervisor": spec.hypervisor,
        "uids": {"agent": spec.uids.agent, "entrypoint": spec.uids.entrypoint},
        "rootlessEntrypoint": spec.uids.rootless,
        "agentBinary": "real",
        "guestFeatures": list(GUEST_FEATURES),
        "expectedBootMs": EXPECTED_BOOT_MS["kvm"],
        "expectedBootMsByAccel": EXPECTED_BOOT_MS,
        "inputHash": digest,
        "kernel": KernelInfo(
            kernel.version,
            kernel.identity,
            kaslr=None if kernel.kaslr else False,
            boot=None if kernel.boot == "initramfs" else kernel.boot,
        ).to_json(),
        "packages": list(packages(spec)),
        "defaults": {"vcpus": spec.vcpus, "memory_mib": spec.memory_mib},
        "checksums": checksums,
        "sizes": {name: (out / name).stat().st_size for name in ARTEFACTS},
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "buildSeconds": round(secs, 2),
        "mvmVersion": __version__,
    }
