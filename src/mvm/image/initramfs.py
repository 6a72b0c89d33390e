"""Build the initramfs: static busybox, the virtio/fw_cfg modules in
dependency order, and ``initramfs-init.sh`` as ``/init``.

Module groups are loaded by the init only when the kernel command line asks
(``mvm.net=1``, ``mvm.fwcfg=1``): every ``insmod`` costs boot time under TCG.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mvm.errors import BuildError
from mvm.guest import read as guest_file
from mvm.image import cpio
from mvm.image.kernel import Kernel

BASE_MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk")
# loaded by the rootfs /init after the entrypoint has started (host channels)
LATE_MODULES = ("virtio_console",)
# instead of those when the host channels are vsock (mvm.channels=vsock: Firecracker);
# optional: a kernel without virtio-vsock just cannot talk to Firecracker
VSOCK_MODULES = ("vmw_vsock_virtio_transport",)
NET_MODULES = ("failover", "net_failover", "virtio_net")
FWCFG_MODULES = ("qemu_fw_cfg",)
# -M q35: virtio over PCI (mvm.pci=1), loaded after the base set (drivers bind late)
PCI_MODULES = ("virtio_pci",)
BUSYBOX = Path("/bin/busybox")


def module_depends(data: bytes) -> list[str]:
    """Read ``depends=`` from a module's ``.modinfo`` section bytes."""
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    end = data.index(b"\0", at + 1)
    value = data[at + len(b"\0depends=") : end].decode()
    return [d for d in value.split(",") if d]


def _read_module(path: Path) -> bytes:
    """A module's ELF bytes.  ``kernel.modules`` may name any directory, so the
    file is opened without blocking (a FIFO) and must really be a module: the
    image must not carry some other host file under a module's name."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise BuildError(f"kernel module {str(path)!r} is not a regular file")
            data = f.read()
    except OSError as exc:
        raise BuildError(f"kernel module {str(path)!r}: {exc.strerror}") from exc
    try:
        if path.suffix == ".xz":
            import lzma

            data = lzma.decompress(data)
        elif path.suffix == ".gz":
            import zlib

            data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
    except Exception as exc:  # lzma.LZMAError, zlib.error: a damaged module
        raise BuildError(f"kernel module {str(path)!r}: cannot decompress ({exc})") from exc
    if not data.startswith(b"\x7fELF"):
        raise BuildError(f"kernel module {str(path)!r} is not an ELF file")
    return data


def busybox_path() -> Path:
    if not BUSYBOX.is_file():
        raise BuildError(f"{BUSYBOX} not found", hint="install busybox-static (make setup does)")
    return BUSYBOX


def build(kernel: Kernel, dest: Path, *, epoch: int = 0) -> None:
    """Write the initramfs for ``kernel`` to ``dest`` (0600; every mtime ``epoch``)."""
    entries = [cpio.directory(d) for d in ("bin", "dev", "proc", "sys", "newroot", "etc", "lib")]
    entries.append(cpio.directory("lib/modules"))
    entries.append(cpio.file("bin/busybox", busybox_path().read_bytes(), 0o755))
    entries.append(cpio.symlink("bin/sh", "busybox"))
    entries.append(cpio.file("init", guest_file("initramfs-init.sh"), 0o755))
    entries.append(
        cpio.file("etc/credentials-unpack.sh", guest_file("credentials-unpack.sh"), 0o644)
    )
    loaded: dict[str, bytes] = {}
    groups: dict[str, list[str]] = {}
    for group, wanted in (("base", BASE_MODULES), ("pci", PCI_MODULES), ("net", NET_MODULES),
                          ("fwcfg", FWCFG_MODULES)):  # fmt: skip
        order: list[str] = []
        for name in wanted:
            _collect(kernel, name, loaded, order, required=group == "base")
        groups[group] = order
    for name, data in loaded.items():
        entries.append(cpio.file(f"lib/modules/{name}.ko", data))
    for group, order in groups.items():
        entries.append(cpio.file(f"etc/modules.{group}", (" ".join(order) + "\n").encode()))
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        cpio.write(out, entries, mtime=epoch)


def late_modules(
    kernel: Kernel, names: tuple[str, ...] = LATE_MODULES, *, required: bool = True
) -> list[tuple[str, bytes]]:
    """Modules the rootfs loads itself, in load order, minus the initramfs' base set."""
    base: dict[str, bytes] = {}
    for name in BASE_MODULES:
        _collect(kernel, name, base, [], required=True)
    late = dict(base)
    order: list[str] = []
    for name in names:
        _collect(kernel, name, late, order, required=required)
    return [(n, late[n]) for n in order]


def _collect(
    kernel: Kernel, name: str, loaded: dict[str, bytes], order: list[str], required: bool
) -> None:
    """Add ``name`` and its dependencies (first) to ``loaded``/``order``."""
    if name in loaded:
        return
    path = kernel.module_path(name)
    if path is None:
        if required and kernel.modules is not None:
            raise BuildError(f"kernel {kernel.version} has no module {name}")
        return  # built in (or no modules dir): nothing to load
    data = _read_module(path)
    for dep in module_depends(data):
        _collect(kernel, dep, loaded, order, required)
    loaded[name] = data
    order.append(name)
