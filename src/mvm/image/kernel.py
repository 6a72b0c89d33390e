"""Guest kernel providers: the mvm kernel (default, built once per machine by
:mod:`mvm.image.kernelbuild`), the Debian cloud kernel, the host's ``/boot``
kernel, or an explicit path.

The Debian kernel is fetched without root (``apt-get download`` +
``dpkg-deb -x``) into the shared cache once per version.  Its bzImage is
LZ4-compressed; we also keep the uncompressed ELF ``vmlinux`` because QEMU's
PVH entry boots it ≈0.3 s faster under TCG (see docs/platform-facts.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvm import paths, proc
from mvm.config.schema import KernelSpec
from mvm.errors import BuildError
from mvm.log import get_logger
from mvm.state.atomic import atomic_file, write_json

log = get_logger(__name__)

METAPACKAGE = "linux-image-cloud-amd64"
LZ4_MAGIC = b"\x02\x21\x4c\x18"
POINTER = "debian-current.json"
# how the mvm kernel boots: measured faster than through an initramfs (docs/kernel.md)
MVM_BOOT = "direct"


@dataclass(frozen=True)
class Kernel:
    """A kernel ready to boot: its image, modules directory and identity."""

    version: str
    image: Path  # what QEMU boots (vmlinux when available, else bzImage)
    modules: Path | None  # .../lib/modules/VERSION
    identity: str  # stable string hashed into image inputs
    # RANDOMIZE_BASE is built in: `nokaslr` is a kernel argument.  Without it the
    # kernel passes an unknown `nokaslr` on to init as an argument.
    kaslr: bool = True
    # "initramfs": modular drivers, mvm's initramfs loads them and mounts the rootfs;
    # "direct": everything built in, the kernel mounts root=/dev/vda and runs /init
    boot: str = "initramfs"

    def module_path(self, name: str) -> Path | None:
        if self.modules is None:
            return None
        for sub in ("kernel", "updates", "extra"):
            root = self.modules / sub
            if root.is_dir():
                for found in root.rglob(f"{name}.ko*"):
                    return found
        return None


def resolve(spec: KernelSpec, *, refresh: bool = False) -> Kernel:
    """Return the kernel for ``spec``, fetching it if needed."""
    if spec.provider == "path":
        assert spec.path is not None
        return _from_path(spec.path, spec.modules)
    if spec.provider == "host":
        return host_kernel()
    if spec.provider == "mvm":
        return mvm_kernel()
    return debian_kernel(refresh=refresh)


def mvm_kernel(*, build: bool = True) -> Kernel:
    """mvm's own kernel: built in, no modules, cached per (source, config, compiler)."""
    from mvm.image import kernelbuild

    k = kernelbuild.resolve(build=build)
    identity = f"mvm:{k.key}:{k.info.get('sha256')}:{MVM_BOOT}"
    return Kernel(f"{k.version}-mvm", k.image, None, identity, kaslr=False, boot=MVM_BOOT)


def _from_path(image: Path, modules: Path | None) -> Kernel:
    st = image.stat()
    version = modules.name if modules else image.name
    return Kernel(version, image, modules, f"path:{image}:{st.st_size}:{st.st_mtime_ns}")


def host_kernel() -> Kernel:
    release = platform.release()
    image = Path(f"/boot/vmlinuz-{release}")
    modules = Path(f"/lib/modules/{release}")
    if not image.is_file() or not os.access(image, os.R_OK):
        raise BuildError(
            f"host kernel {image} is missing or unreadable",
            hint='use kernel = "mvm" in mvm.toml (the default)',
        )
    return _from_path(image, modules if modules.is_dir() else None)


def debian_kernel(*, refresh: bool = False, cached_only: bool = False) -> Kernel:
    """The Debian cloud kernel, cached; resolved through apt only when needed
    (``cached_only``: never fetch, raise if it is not in the cache)."""
    root = paths.kernels_dir()
    pointer = root / POINTER
    if not refresh and pointer.is_file():
        try:
            version = json.loads(pointer.read_text())["version"]
            kernel = _cached(root / version)
            if kernel is not None:
                return kernel
        except (OSError, ValueError, KeyError):
            log.debug("kernel pointer unreadable; resolving again")
    if cached_only:
        raise BuildError("the Debian kernel is not fetched yet", hint="run `mvmctl kernel fetch`")
    package = _resolve_package()
    version = package.removeprefix("linux-image-")
    kernel = _cached(root / version) or _fetch(package, version, root)
    write_json(pointer, {"package": package, "version": version})
    return kernel


def _cached(vdir: Path) -> Kernel | None:
    meta = vdir / "kernel.json"
    if not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    image = vdir / info["image"]
    modules = vdir / "modules" / info["version"]
    if not image.is_file() or not modules.is_dir():
        return None
    return Kernel(info["version"], image, modules, f"debian:{info['package']}:{info['debversion']}")


def _resolve_package() -> str:
    try:
        out = proc.run(
            ["apt-cache", "depends", METAPACKAGE], timeout=60, what="resolving the Debian kernel"
        ).stdout.decode()
    except BuildError as exc:
        raise BuildError(
            f"cannot resolve {METAPACKAGE}: {exc.message}",
            hint="run `apt-get update` (make setup does)",
        ) from exc
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    raise BuildError(
        f"{METAPACKAGE} has no linux-image dependency in apt's lists",
        hint="run `apt-get update` (make setup does)",
    )


def _fetch(package: str, version: str, root: Path) -> Kernel:
    """Download and unpack ``package`` into ``root/version`` atomically."""
    root.mkdir(parents=True, exist_ok=True)
    log.info("fetching kernel %s", package)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        work = Path(tmp)
        proc.run(
            ["apt-get", "download", package], cwd=work, timeout=600, what=f"downloading {package}"
        )
        debs = list(work.glob("*.deb"))
        if not debs:
            raise BuildError(f"apt-get download {package} produced no .deb")
        debversion = debs[0].name.split("_")[1]
        x = work / "x"
        proc.run(["dpkg-deb", "-x", debs[0], x], what="unpacking the kernel")
        bz = next((x / "boot").glob("vmlinuz-*"))
        out = work / "out"
        out.mkdir()
        shutil.move(bz, out / "vmlinuz")
        moddirs = list((x / "lib" / "modules").iterdir())
        (out / "modules").mkdir()
        shutil.move(moddirs[0], out / "modules" / version)
        image = "vmlinuz"
        if extract_vmlinux(out / "vmlinuz", out / "vmlinux"):
            image = "vmlinux"
        meta = {"package": package, "version": version, "debversion": debversion, "image": image}
        write_json(out / "kernel.json", meta)
        dest = root / version
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(out, dest)
    kernel = _cached(root / version)
    assert kernel is not None
    return kernel


def extract_vmlinux(bzimage: Path, dest: Path) -> bool:
    """Decompress an LZ4 bzImage payload into an ELF vmlinux (for PVH boot)."""
    data = bzimage.read_bytes()
    at = data.find(LZ4_MAGIC)
    if at < 0 or shutil.which("lz4") is None:
        return False
    try:
        res = proc.run(
            ["lz4", "-dc"], input=data[at:], timeout=120, what="decompressing the kernel"
        )
    except BuildError as exc:
        log.debug("no vmlinux: %s", exc.message)
        return False
    if not res.stdout.startswith(b"\x7fELF"):
        return False
    with atomic_file(dest) as f:
        f.write(res.stdout)
    return True


def cached_kernels() -> list[dict[str, Any]]:
    """Every kernel in the shared cache: mvm builds and fetched Debian kernels."""
    from mvm.image import kernelbuild

    out: list[dict[str, Any]] = []
    for k in kernelbuild.cached():
        out.append({
            "name": k.key, "provider": "mvm", "version": k.version, "image": str(k.image),
            "size": k.info.get("size"), "sha256": k.info.get("sha256"),
            "source": k.info.get("source"), "cc": k.info.get("cc"),
            "build_seconds": k.info.get("buildSeconds"),
        })  # fmt: skip
    root = paths.kernels_dir()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.name.startswith((".", kernelbuild.PREFIX)) or not d.is_dir():
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                k2 = _cached(d)
                if k2 is not None:
                    size = k2.image.stat().st_size
                    out.append({"name": d.name, "provider": "debian", "version": k2.version,
                                "image": str(k2.image), "size": size})  # fmt: skip
    return out


def describe(spec: KernelSpec) -> str:
    """What ``spec`` names, without building or fetching anything."""
    if spec.provider == "path":
        return f"path {spec.path}"
    if spec.provider == "host":
        return f"host /boot/vmlinuz-{platform.release()}"
    if spec.provider == "debian":
        return f"debian ({METAPACKAGE})"
    return "mvm (built from linux-source-6.1 with mvm's configuration)"


def remove_cached(name: str) -> Path:
    """Delete one cached kernel by the name ``cached_kernels`` shows."""
    from mvm.image import kernelbuild

    if name.startswith(kernelbuild.PREFIX):
        return kernelbuild.remove(name)
    if not any(k["name"] == name for k in cached_kernels()):
        raise BuildError(f"no cached kernel {name!r} (see `mvmctl kernel list`)")
    root = paths.kernels_dir()
    trash = root / f".old-{name}-{os.getpid()}"
    os.replace(root / name, trash)
    shutil.rmtree(trash, ignore_errors=True)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads((root / POINTER).read_text())["version"] == name:
            (root / POINTER).unlink()
    return root / name
