"""Pick the accelerator: KVM when it can really run a guest, else TCG.

``/dev/kvm`` opening is not enough: on nested "kvm-pvm" hosts KVM initialises
and then never reaches guest userspace (docs/platform-facts.md).  So we boot a
tiny guest under KVM with a short timeout and cache the verdict per host boot
(``/proc/sys/kernel/random/boot_id``) and QEMU binary.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mvm import paths, proc
from mvm.errors import BackendError, ConfigError, MvmError
from mvm.image import cpio
from mvm.image.initramfs import busybox_path
from mvm.state.atomic import write_json

PROBE_TIMEOUT = 8.0
MARKER = b"MVM-KVM-PROBE-OK"


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" | "tcg"
    reason: str


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


ACCELS = ("auto", "kvm", "tcg")


def choose(kernel: Path, qemu: str) -> AccelChoice:
    """Return the accelerator to use (cached).

    ``MVM_ACCEL=tcg`` skips the probe; ``MVM_ACCEL=kvm`` insists on KVM but
    still proves it can run a guest (cached), so a host where KVM opens but
    never reaches userspace fails within the probe timeout instead of hanging.
    """
    forced = os.environ.get("MVM_ACCEL", "auto").strip() or "auto"
    if forced not in ACCELS:
        raise ConfigError(f"MVM_ACCEL={forced!r} is not one of {', '.join(ACCELS)}")
    if forced == "tcg":
        return AccelChoice("tcg", "forced by MVM_ACCEL=tcg")
    choice = kvm_verdict(kernel, qemu)
    if forced == "kvm":
        if choice.accel != "kvm":
            raise BackendError(
                f"MVM_ACCEL=kvm, but KVM cannot run a guest here: {choice.reason}",
                hint="unset MVM_ACCEL (mvm then uses TCG) or set MVM_ACCEL=tcg",
            )
        return AccelChoice("kvm", f"forced by MVM_ACCEL=kvm ({choice.reason})")
    return choice


def kvm_verdict(kernel: Path, qemu: str) -> AccelChoice:
    """KVM or TCG for ``qemu`` on this host boot (probed once, then cached); also the
    answer :mod:`mvm.backends.kvm` gives every backend."""
    from mvm.backends.kvm import device_verdict

    dev = device_verdict()
    if dev is not None:
        return AccelChoice("tcg", dev.reason)
    cache = paths.cache_dir() / "accel.json"
    key = f"{_boot_id()}:{qemu}"
    try:
        data = json.loads(cache.read_text())
        if data.get("key") == key and data.get("accel") in ("kvm", "tcg"):
            return AccelChoice(str(data["accel"]), str(data["reason"]))
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    choice = probe(kernel, qemu)
    paths.ensure_private_dir(cache.parent)
    write_json(cache, {"key": key, **asdict(choice)})
    return choice


def probe(kernel: Path, qemu: str) -> AccelChoice:
    """Boot a tiny guest under KVM; report whether it reached userspace."""
    with tempfile.TemporaryDirectory(prefix="mvm-probe-") as tmp:
        initrd = Path(tmp) / "probe.cpio"
        init = b"#!/bin/busybox sh\n/bin/busybox echo " + MARKER + b"\n/bin/busybox reboot -f\n"
        with open(initrd, "wb") as f:
            cpio.write(f, [
                cpio.directory("bin"), cpio.file("bin/busybox", busybox_path().read_bytes(), 0o755),
                cpio.file("init", init, 0o755),
            ])  # fmt: skip
        argv = [
            qemu, "-M", "microvm,isa-serial=on,rtc=on", "-accel", "kvm", "-cpu", "host",
            "-m", "128M", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-serial", "stdio",
            "-append", "console=ttyS0 quiet panic=-1 reboot=t",
        ]  # fmt: skip
        started = time.monotonic()
        try:
            # the probe dies with us (prctl PDEATHSIG) and after PROBE_TIMEOUT: a KVM that
            # never reaches userspace spins at full CPU until killed
            child = proc.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               die_with_parent=True, what="KVM probe")  # fmt: skip
        except MvmError as exc:
            return AccelChoice("tcg", f"KVM probe could not start QEMU: {exc.message}")
        try:
            out, err = child.communicate(timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.reap(child)
            return AccelChoice(
                "tcg", f"KVM probe guest did not reach userspace in {PROBE_TIMEOUT:.0f}s "
                "(nested/paravirtual KVM that cannot run this guest); using TCG",
            )  # fmt: skip
        finally:
            if child.poll() is None:
                proc.reap(child)
    if MARKER in out:
        return AccelChoice("kvm", f"KVM probe guest booted in {time.monotonic() - started:.2f}s")
    last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
    return AccelChoice("tcg", f"KVM probe failed: {last}")


def host_tsc_khz() -> int | None:
    """The host's TSC rate in kHz (from /proc/cpuinfo), for lpj/tsc_early_khz."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None
