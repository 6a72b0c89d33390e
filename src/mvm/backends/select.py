"""The automatic hypervisor choice: Firecracker where it can run guests, else QEMU.

The seeds make Firecracker the default on Linux/KVM.  It has no emulation
fallback and no user-mode networking, so "auto" picks it only when its
binary is found (PATH or ``MVM_FIRECRACKER``), KVM can really run a guest
(:mod:`mvm.backends.kvm`) and the VM needs no host port forwards or egress
(those need QEMU's user networking unless a tap is configured); otherwise
QEMU, which falls back to TCG.  The reason is kept with the choice and shown
by ``mvmctl status`` and ``mvmctl doctor``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mvm.errors import MvmError


def auto(
    kernel: Path | Callable[[], Path] | None, *, needs_user_net: bool = False
) -> tuple[str, str]:
    """``(hypervisor, reason)`` for a VM booting ``kernel`` (a callable: asked only when
    the KVM probe needs it, i.e. when a firecracker binary exists)."""
    from mvm.backends import kvm
    from mvm.backends.firecracker.machine import firecracker_binary, tap_device

    try:
        binary = firecracker_binary()
    except MvmError:
        return "qemu", "auto: firecracker not found (PATH, MVM_FIRECRACKER); using QEMU"
    verdict = kvm.verdict(kernel() if callable(kernel) else kernel)
    if not verdict.usable:
        return (
            "qemu",
            f"auto: {binary} found, but KVM cannot run guests ({verdict.reason}); using QEMU (TCG)",
        )
    try:
        tap = tap_device()
    except MvmError:
        tap = None
    if needs_user_net and tap is None:
        return (
            "qemu",
            "auto: ports/egress need user-mode networking (Firecracker needs a tap: "
            "MVM_FIRECRACKER_TAP); using QEMU",
        )
    return "firecracker", f"auto: {binary} found and KVM runs guests ({verdict.reason})"
