"""Guest kernel providers: the Debian cloud kernel (default), the host's
``/boot`` kernel, or an explicit path.

The Debian kernel is fetched without root (``apt-get download`` +
``dpkg-deb -x``) into the shared cache once per version.  Its bzImage is
LZ4-compressed; we also keep the uncompressed ELF ``vmlinux`` because QEMU's
PVH entry boots it ≈0.3 s faster under TCG (see docs/platform-facts.md).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mvm import paths, proc
from mvm.config.schema import KernelSpec
from mvm.errors import BuildError
from mvm.log import get_logger

log = get_logger(__name__)

METAPACKAGE = "linux-image-cloud-amd64"
LZ4_MAGIC = b"\x02\x21\x4c\x18"
POINTER = "debian-current.json"


@dataclass(frozen=True)
class Kernel:
    """A kernel ready to boot: its image, modules directory and identity."""

    version: str
    image: Path  # what QEMU boots (vmlinux when available, else bzImage)
    modules: Path | None  # .../lib/modules/VERSION
    identity: str  # stable string hashed into image inputs

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
    return debian_kernel(refresh=refresh)


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
            hint='use kernel = "debian" in mvm.toml (the default)',
        )
    return _from_path(image, modules if modules.is_dir() else None)


def debian_kernel(*, refresh: bool = False) -> Kernel:
    """The Debian cloud kernel, cached; resolved through apt only when needed."""
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
    package = _resolve_package()
    version = package.removeprefix("linux-image-")
    kernel = _cached(root / version) or _fetch(package, version, root)
    _write_json(pointer, {"package": package, "version": version})
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
        (out / "kernel.json").write_text(json.dumps(meta, indent=2))
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
    res = subprocess.run(["lz4", "-dc"], input=data[at:], capture_output=True, check=False)
    if not res.stdout.startswith(b"\x7fELF"):
        return False
    dest.write_bytes(res.stdout)
    return True


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
