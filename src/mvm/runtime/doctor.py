"""Host report for `mvmctl doctor`: QEMU, accelerator and why, kernel, disk."""

from __future__ import annotations

import json
import shutil
from typing import Any

from mvm import paths


def report() -> dict[str, Any]:
    from mvm.backends.base import get_backend

    info: dict[str, Any] = {"mvm_home": str(paths.home()), "cache": str(paths.cache_dir())}
    pointer = paths.kernels_dir() / "debian-current.json"
    kernel_image = None
    try:
        version = json.loads(pointer.read_text())["version"]
        kernel_image = paths.kernels_dir() / version / "vmlinux"
        if not kernel_image.exists():
            kernel_image = paths.kernels_dir() / version / "vmlinuz"
        info["kernel"] = f"{version} ({kernel_image})"
    except (OSError, ValueError, KeyError, TypeError):
        info["kernel"] = "not fetched (run `mvmctl kernel fetch`)"
    qemu = get_backend("qemu").doctor(kernel_image)
    info["qemu"] = qemu.pop("version")
    info.update(qemu)
    usage = shutil.disk_usage(paths.home() if paths.home().exists() else paths.home().parent)
    info["free_disk"] = f"{usage.free / (1 << 30):.1f} GiB"
    return info
