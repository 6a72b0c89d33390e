"""Build an image (kernel + initramfs + rootfs.ext4 + revision.json) from a
project, cached by a hash of every input.

An unchanged project costs one hash of its inputs and a stat: the no-op path
must stay well under 0.3 s, so it reads no kernel bytes and calls no apt.
Builds happen in a temporary directory next to the cache and appear with one
``rename``: a crash, a full disk or Ctrl-C never leaves a half image.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from mvm import __version__, paths
from mvm.config.schema import GuestSpec, Project
from mvm.errors import BuildError, DiskFullError
from mvm.guest import EXTENSIONS, GUEST_FEATURES, GUEST_FILES
from mvm.guest import read as guest_file
from mvm.image import initramfs
from mvm.image import kernel as kernels
from mvm.image.meta import ARTEFACTS, ImageMeta
from mvm.image.meta import load as load_meta
from mvm.image.render import GuestFile, home_dir, render
from mvm.log import get_logger
from mvm.proc import is_disk_full

log = get_logger(__name__)


EXPECTED_BOOT_MS = {"kvm": 300, "tcg": 2000}


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


def _hash_tree(h: Any, src: Path) -> None:
    if src.is_file():
        h.update(b"F" + src.read_bytes())
        return
    for dirpath, dirs, names in os.walk(src):
        dirs.sort()
        for n in sorted(names):
            p = Path(dirpath) / n
            st = p.lstat()
            h.update(f"\0{p.relative_to(src)}\0{st.st_mode:o}\0".encode())
            h.update(os.readlink(p).encode() if p.is_symlink() else p.read_bytes())


def input_hash(spec: GuestSpec, kernel: kernels.Kernel) -> str:
    """Hash of everything that determines the image's bytes (not runtime settings)."""
    h = hashlib.sha256()
    busybox = initramfs.busybox_path().stat()
    identity = {
        "mvm": __version__,
        "kernel": kernel.identity,
        "busybox": [busybox.st_size, busybox.st_mtime_ns],
        "packages": spec.packages,
        "dev": spec.dev,
        "hypervisor": spec.hypervisor,
    }
    h.update(json.dumps(identity).encode())
    for name in GUEST_FILES:
        h.update(guest_file(name))
    for f in render(spec):
        h.update(f"{f.path}\0{f.mode}\0{f.uid}\0".encode() + f.content)
    for fs in spec.files:
        h.update(f"{fs.path}\0{fs.mode}\0".encode() + fs.content.encode())
    for c in spec.copy:
        h.update(f"copy\0{c.dest}\0".encode())
        _hash_tree(h, c.src)
    return h.hexdigest()


def build(project: Project, *, force: bool = False) -> Image:
    """Return the image for ``project``, building it only if its inputs changed."""
    spec = project.spec
    kernel = kernels.resolve(spec.kernel)
    digest = input_hash(spec, kernel)
    images = paths.images_dir()
    dest = images / digest
    if not force and (dest / "revision.json").is_file():
        return replace(Image.load(dest), spec=spec)
    images.mkdir(parents=True, exist_ok=True)
    with open(images / f".{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and (dest / "revision.json").is_file():
            return replace(Image.load(dest), spec=spec)  # someone else built it meanwhile
        # the guest's file modes must not depend on the caller's umask (mvmctl runs with
        # 077): directories and files in the image are created as with the usual 022
        old_umask = os.umask(0o022)
        try:
            return replace(_build(spec, kernel, digest, images, dest), spec=spec)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFullError("no space left on device while building the image") from exc
            raise BuildError(f"building {spec.name}: {exc.strerror or exc}") from exc
        finally:
            os.umask(old_umask)


def _build(spec: GuestSpec, kernel: kernels.Kernel, digest: str, images: Path, dest: Path) -> Image:
    from mvm.image import debian, rootfs  # only a real build needs them

    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=images, prefix=".build-") as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        root = work / "root"
        rootfs.skeleton(root)
        if spec.packages:
            debian.extract(debian.fetch(debian.resolve(spec.packages)), root)
        rootfs.install_busybox(root, initramfs.busybox_path())
        uid = spec.uids.entrypoint
        files = [
            *render(spec),
            GuestFile("/init", guest_file("init.sh"), 0o755),
            GuestFile("/usr/local/bin/mvm-guest-agent", guest_file("agent.sh"), 0o755),
            *(GuestFile(dest, guest_file(src), 0o644) for src, dest in EXTENSIONS.items()),
        ]
        files += [GuestFile(f.path, f.content.encode(), f.mode, uid, uid) for f in spec.files]
        late = initramfs.late_modules(kernel)
        files += [GuestFile(f"/lib/modules/mvm/{n}.ko", data) for n, data in late]
        files.append(
            GuestFile("/etc/mvm/modules.late", (" ".join(n for n, _ in late) + "\n").encode())
        )
        for c in spec.copy:
            rootfs.copy_tree(c.src, root, c.dest)
        owners = rootfs.write_files(root, files)
        home = home_dir(spec)
        (root / home.lstrip("/")).mkdir(parents=True, exist_ok=True)
        if uid != 0:
            owners[home] = (uid, uid)
        rootfs.make_ext4(root, out / "rootfs.ext4", owners)
        shutil.rmtree(root)
        initramfs.build(kernel, out / "initramfs.cpio")
        _link_or_copy(kernel.image, out / "kernel")
        revision = _revision(spec, kernel, digest, out, time.monotonic() - started)
        tmp_meta = out / "revision.json.tmp"
        tmp_meta.write_text(json.dumps(revision, indent=2, sort_keys=True))
        (out / "checksums.json").write_text(
            json.dumps(revision["checksums"], indent=2, sort_keys=True)
        )
        os.replace(tmp_meta, out / "revision.json")
        if dest.exists():
            old = images / f".old-{digest}-{os.getpid()}"
            os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(out, dest)
    log.info("built %s in %.1fs", spec.name, time.monotonic() - started)
    return Image.load(dest)


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


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
        "hypervisor": spec.hypervisor,
        "uids": {"agent": spec.uids.agent, "entrypoint": spec.uids.entrypoint},
        "rootlessEntrypoint": spec.uids.rootless,
        "agentBinary": "stub",
        "guestFeatures": list(GUEST_FEATURES),
        "expectedBootMs": EXPECTED_BOOT_MS["kvm"],
        "expectedBootMsByAccel": EXPECTED_BOOT_MS,
        "inputHash": digest,
        "kernel": {"version": kernel.version, "identity": kernel.identity},
        "packages": list(spec.packages),
        "defaults": {"vcpus": spec.vcpus, "memory_mib": spec.memory_mib},
        "checksums": checksums,
        "sizes": {name: (out / name).stat().st_size for name in ARTEFACTS},
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "buildSeconds": round(secs, 2),
        "mvmVersion": __version__,
    }
