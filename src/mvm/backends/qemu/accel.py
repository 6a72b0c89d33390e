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

from mvm import paths
from mvm.image import cpio
from mvm.image.initramfs import busybox_path

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


def choose(kernel: Path, qemu: str) -> AccelChoice:
    """Return the accelerator to use (cached); ``MVM_ACCEL=kvm|tcg`` forces one."""
    forced = os.environ.get("MVM_ACCEL", "auto")
    if forced in ("kvm", "tcg"):
        return AccelChoice(forced, f"forced by MVM_ACCEL={forced}")
    if not os.path.exists("/dev/kvm"):
        return AccelChoice("tcg", "/dev/kvm does not exist")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelChoice("tcg", "/dev/kvm is not readable and writable by this user")
    cache = paths.cache_dir() / "accel.json"
    key = f"{_boot_id()}:{qemu}"
    try:
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return AccelChoice(data["accel"], data["reason"])
    except (OSError, ValueError, KeyError):
        pass
    choice = probe(kernel, qemu)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, **asdict(choice)}))
    os.replace(tmp, cache)
    return choice


def probe(kernel: Path, qemu: str) -> AccelChoice:
    """Boot a tiny guest under KVM; report whether it reached userspace."""
    with tempfile.TemporaryDirectory(prefix="mvm-probe-") as tmp:
        initrd = Path(tmp) / "probe.cpio"
        init = b"#!/bin/busybox sh\n/bin/busybox echo " + MARKER + b"\n/bin/busybox reboot -f\n"
        with open(initrd, "wb") as out:
            cpio.write(out, [
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
            res = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return AccelChoice(
                "tcg", f"KVM probe guest did not reach userspace in {PROBE_TIMEOUT:.0f}s "
                "(nested/paravirtual KVM that cannot run this guest); using TCG",
            )  # fmt: skip
        except OSError as exc:
            return AccelChoice("tcg", f"KVM probe could not start QEMU: {exc.strerror}")
    if MARKER in res.stdout:
        return AccelChoice("kvm", f"KVM probe guest booted in {time.monotonic() - started:.2f}s")
    last = (res.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
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
