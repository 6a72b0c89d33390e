"""Boot benchmark: `mvmctl run --attached` against bare-QEMU floors.

From one run and with the same QEMU settings (microvm, PVH, TCG with mvm's
translation-buffer size, the fast kernel command line), prints the median
time from process start to the guest's first output line for
(a) bare QEMU booting the **Debian** cloud kernel with a minimal /init,
(b) bare QEMU booting the **mvm** kernel with the same minimal /init, and
(c) mvmctl running a built image (examples/hello, ``kernel = "mvm"``),
their ratios (goals: c/a <= 0.55, c/b <= 1.15), the cached no-op
`mvmctl build` time and `mvmctl --help` time.  Runs are interleaved (a, b, c
in each round) and the median of the per-round ratios is reported with its
spread: single TCG boots vary by ±0.1 s, so use 15+ runs.

Usage: python bench/boot.py [--runs N] [--project DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mvm.backends.qemu.accel import host_tsc_khz  # noqa: E402
from mvm.backends.qemu.argv import FAST_CMDLINE, accel_arg  # noqa: E402
from mvm.image import cpio  # noqa: E402
from mvm.image.kernel import Kernel, debian_kernel, mvm_kernel  # noqa: E402

MVMCTL = str(Path(sys.executable).parent / "mvmctl")


def first_line_time(
    argv: list[str], marker: bytes, env: dict[str, str] | None = None, wait: float = 60
) -> float:
    """Seconds from spawning ``argv`` to the first stdout line containing ``marker``
    (then up to ``wait`` seconds for it to exit; other benches import this)."""
    start = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL, env=env)  # fmt: skip
    assert p.stdout is not None
    try:
        for line in p.stdout:
            if marker in line:
                return time.perf_counter() - start
        raise RuntimeError(f"{argv[0]} exited without printing {marker!r}")
    finally:
        p.wait(timeout=wait)


def floor_argv(kernel: Kernel, initrd: Path) -> list[str]:
    """Bare QEMU with mvm's settings (same -M, -accel, command line) and a minimal /init."""
    khz = host_tsc_khz()
    cmdline = FAST_CMDLINE + (" nokaslr" if kernel.kaslr else "")
    cmdline += f" lpj={khz * 4} tsc_early_khz={khz}" if khz else ""
    return [
        "qemu-system-x86_64", "-M", "microvm,isa-serial=on,rtc=on", "-accel", accel_arg("tcg"),
        "-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", str(kernel.image), "-initrd", str(initrd), "-append", cmdline,
        "-serial", "stdio",
    ]  # fmt: skip


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--project", default=str(REPO / "examples" / "hello"))
    args = ap.parse_args()

    debian, mvm = debian_kernel(), mvm_kernel()
    with tempfile.TemporaryDirectory(prefix="mvm-bench-") as tmp:
        env = dict(os.environ, MVM_HOME=str(Path(tmp) / "home"))
        initrd = Path(tmp) / "floor.cpio"
        init = b"#!/bin/busybox sh\n/bin/busybox echo floor-first-line\n/bin/busybox reboot -f\n"
        with open(initrd, "wb") as out:
            cpio.write(out, [cpio.directory("bin"),
                             cpio.file("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755),
                             cpio.file("init", init, 0o755)])  # fmt: skip
        subprocess.run([MVMCTL, "build", args.project], check=True, env=env, capture_output=True)
        # warm-up (page cache, accelerator probe cache)
        for k in (debian, mvm):
            first_line_time(floor_argv(k, initrd), b"floor-first-line")
        first_line_time(
            [MVMCTL, "run", "--attached", "--name", "bench", args.project], b"hello", env
        )

        fdeb, fmvm, ours = [], [], []
        for i in range(args.runs):
            fdeb.append(first_line_time(floor_argv(debian, initrd), b"floor-first-line"))
            fmvm.append(first_line_time(floor_argv(mvm, initrd), b"floor-first-line"))
            run = [MVMCTL, "run", "--attached", "--name", f"bench{i}", args.project]
            ours.append(first_line_time(run, b"hello", env))
        noop = [timed([MVMCTL, "build", args.project], env) for _ in range(args.runs)]
        helpt = [timed([MVMCTL, "--help"], env) for _ in range(args.runs)]

    d, m, o = statistics.median(fdeb), statistics.median(fmvm), statistics.median(ours)
    print(f"kernels: debian {debian.version}, mvm {mvm.version}; "
          f"accel: {accel_arg('tcg')}; runs: {args.runs}")  # fmt: skip
    print(f"floor, Debian kernel (bare QEMU, minimal /init) median: {d:.3f} s")
    print(f"floor, mvm kernel    (bare QEMU, minimal /init) median: {m:.3f} s")
    print(f"mvmctl run --attached (mvm kernel) median first line: {o:.3f} s")
    for label, base, goal in (("Debian floor", fdeb, 0.55), ("mvm floor", fmvm, 1.15)):
        pairs = sorted(b / a for a, b in zip(base, ours, strict=True))
        q1, q3 = pairs[len(pairs) // 4], pairs[(3 * len(pairs)) // 4]
        print(f"run / {label}: ratio of medians {o / statistics.median(base):.3f} "
              f"(goal <= {goal}), median of paired ratios {statistics.median(pairs):.3f} "
              f"(IQR {q1:.3f}-{q3:.3f})")  # fmt: skip
    print(f"mvm floor / Debian floor: {m / d:.3f}")
    print(f"cached no-op mvmctl build median: {statistics.median(noop):.3f} s (goal <= 0.3)")
    print(f"mvmctl --help median:             {statistics.median(helpt):.3f} s (goal <= 0.15)")


if __name__ == "__main__":
    main()
