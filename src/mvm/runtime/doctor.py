"""Host report for `mvmctl doctor`: QEMU, accelerator and why, Firecracker (KVM,
jailer, tap) and the automatic hypervisor choice with its reason, kernel, disk."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mvm import paths
from mvm.config.schema import Project


def project_kernel(project: Project) -> dict[str, Any]:
    """Which kernel ``project`` boots and whether it is ready, without building it."""
    from mvm.errors import MvmError
    from mvm.image import kernel as kernels

    spec = project.spec.kernel
    info: dict[str, Any] = {"project": str(project.manifest), "kernel": kernels.describe(spec)}
    try:
        if spec.provider == "mvm":
            k = kernels.mvm_kernel(build=False)
        elif spec.provider == "debian":
            k = kernels.debian_kernel(cached_only=True)
        else:
            k = kernels.resolve(spec)
        info["version"], info["image"] = k.version, str(k.image)
    except MvmError as exc:
        info["image"] = f"not cached: {exc.message}"
    return info


def report(project: Project | None = None) -> dict[str, Any]:
    from mvm.backends.base import get_backend
    from mvm.image.kernel import cached_kernels

    info: dict[str, Any] = {"mvm_home": str(paths.home()), "cache": str(paths.cache_dir())}
    kernels = cached_kernels()
    kernel_image = None
    if kernels:
        info["kernels"] = ", ".join(f"{k['name']} ({k['provider']})" for k in kernels)
        kernel_image = Path(kernels[0]["image"])
    else:
        info["kernels"] = "none cached (run `mvmctl kernel build` or `make setup`)"
    if project is not None:
        used = project_kernel(project)
        info["project_uses"] = f"{used['kernel']}: {used['image']}"
    qemu = get_backend("qemu").doctor(kernel_image)
    info["qemu"] = qemu.pop("version")
    info.update(qemu)
    fc = get_backend("firecracker").doctor(kernel_image)
    info["firecracker"] = fc.pop("version")
    info.update({f"fc_{k}": v for k, v in fc.items()})
    from mvm.backends.select import auto

    info["hypervisor"], info["hv_reason"] = auto(kernel_image)
    usage = shutil.disk_usage(paths.home() if paths.home().exists() else paths.home().parent)
    info["free_disk"] = f"{usage.free / (1 << 30):.1f} GiB"
    return info
