"""Can KVM run a guest on this host?  The neutral question every backend asks.

``/dev/kvm`` opening is not enough (nested "kvm-pvm" hosts initialise KVM
and never reach guest userspace: docs/platform-facts.md), so the answer is
the QEMU backend's cached probe boot (:mod:`mvm.backends.qemu.accel`, one
tiny boot per host boot id) when QEMU and a kernel are at hand.  Firecracker
has no TCG to fall back on: the automatic hypervisor choice and the
Firecracker backend both use this verdict.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

# the contract tests (and hosts without QEMU to probe with) may skip the check:
# Firecracker then starts vCPUs that may never run the guest
UNCHECKED_ENV = "MVM_FIRECRACKER_KVM"


@dataclass(frozen=True)
class KvmVerdict:
    usable: bool
    reason: str


def device_verdict() -> KvmVerdict | None:
    """The cheap part: a missing or inaccessible /dev/kvm (None: it opens)."""
    if not os.path.exists("/dev/kvm"):
        return KvmVerdict(False, "/dev/kvm does not exist")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return KvmVerdict(False, "/dev/kvm is not readable and writable by this user")
    return None


def verdict(kernel: Path | None) -> KvmVerdict:
    """Whether KVM can run a guest here, and why (cached by the QEMU probe)."""
    if os.environ.get(UNCHECKED_ENV) == "unchecked":
        return KvmVerdict(True, f"not checked ({UNCHECKED_ENV}=unchecked)")
    if os.environ.get("MVM_ACCEL") == "tcg":
        return KvmVerdict(False, "MVM_ACCEL=tcg")
    dev = device_verdict()
    if dev is not None:
        return dev
    qemu = os.environ.get("MVM_QEMU") or shutil.which("qemu-system-x86_64")
    if not qemu or kernel is None:
        return KvmVerdict(True, "/dev/kvm opens (no QEMU or kernel to prove it runs a guest)")
    from mvm.backends.qemu import accel

    choice = accel.kvm_verdict(kernel, qemu)
    return KvmVerdict(choice.accel == "kvm", choice.reason)
