"""Host report for `mvmctl doctor`: QEMU, accelerator and why, kernel, disk."""

from __future__ import annotations

import json
import shutil
from typing import Any

from mvm import paths
from mvm.errors import MvmError


def report() -> dict[str, Any]:
    from mvm.backends.qemu import accel
    from mvm.backends.qemu.machine import QemuBackend, qemu_binary

    info: dict[str, Any] = {"mvm_home": str(paths.home()), "cache": str(paths.cache_dir())}
    try:
        qemu = qemu_binary()
        info["qemu"] = f"{QemuBackend().version()} ({qemu})"
    except MvmError as exc:
        info["qemu"] = f"missing: {exc.message}"
        qemu = None
    pointer = paths.kernels_dir() / "debian-current.json"
    kernel_image = None
    try:
        version = json.loads(pointer.read_text())["version"]
        kernel_image = paths.kernels_dir() / version / "vmlinux"
        if not kernel_image.exists():
            kernel_image = paths.kernels_dir() / version / "vmlinuz"
        info["kernel"] = f"{version} ({kernel_image})"
    except (OSError, ValueError, KeyError):
        info["kernel"] = "not fetched (run `mvmctl kernel fetch`)"
    if qemu and kernel_image is not None:
        choice = accel.choose(kernel_image, qemu)
        info["accelerator"] = choice.accel
        info["accel_reason"] = choice.reason
    else:
        info["accelerator"] = "unknown (needs QEMU and a kernel to probe)"
    usage = shutil.disk_usage(paths.home() if paths.home().exists() else paths.home().parent)
    info["free_disk"] = f"{usage.free / (1 << 30):.1f} GiB"
    return info
