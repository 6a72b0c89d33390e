"""Boot benchmark: `mvmctl run --attached` against a bare-QEMU floor.

From one run, prints the median time from process start to the guest's first
output line for (a) bare QEMU booting the same kernel with a minimal /init at
the fastest settings of docs/platform-facts.md (the floor) and (b) mvmctl
running a built image (examples/hello), their ratio, the cached no-op
`mvmctl build` time and `mvmctl --help` time.  Runs are paired (a floor
boot right before each mvmctl boot) and the median of the per-pair ratios is
reported with its spread: single TCG boots vary by ±0.1 s, so use 15+ runs.

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
from mvm.backends.qemu.argv import FAST_CMDLINE  # noqa: E402
from mvm.image import cpio  # noqa: E402
from mvm.image.kernel import debian_kernel  # noqa: E402

MVMCTL = str(Path(sys.executable).parent / "mvmctl")


def first_line_time(argv: list[str], marker: bytes, env: dict[str, str] | None = None) -> float:
    """Seconds from spawning ``argv`` to the first stdout line containing ``marker``."""
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
        p.wait(timeout=60)


def floor_argv(kernel: Path, initrd: Path) -> list[str]:
    khz = host_tsc_khz()
    cmdline = FAST_CMDLINE + (f" lpj={khz * 4} tsc_early_khz={khz}" if khz else "")
    return [
        "qemu-system-x86_64", "-M", "microvm,isa-serial=on,rtc=on", "-accel", "tcg",
        "-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline, "-serial", "stdio",
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

    kernel = debian_kernel()
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
        first_line_time(floor_argv(kernel.image, initrd), b"floor-first-line")
        first_line_time(
            [MVMCTL, "run", "--attached", "--name", "bench", args.project], b"hello", env
        )

        floor, ours = [], []
        for i in range(args.runs):
            floor.append(first_line_time(floor_argv(kernel.image, initrd), b"floor-first-line"))
            run = [MVMCTL, "run", "--attached", "--name", f"bench{i}", args.project]
            ours.append(first_line_time(run, b"hello", env))
        noop = [timed([MVMCTL, "build", args.project], env) for _ in range(args.runs)]
        helpt = [timed([MVMCTL, "--help"], env) for _ in range(args.runs)]

    f, o = statistics.median(floor), statistics.median(ours)
    pairs = sorted(b / a for a, b in zip(floor, ours, strict=True))
    q1, q3 = pairs[len(pairs) // 4], pairs[(3 * len(pairs)) // 4]
    print(f"kernel: {kernel.version} ({kernel.image.name}), accel: tcg, runs: {args.runs}")
    print(f"floor (bare QEMU, minimal /init) median first line: {f:.3f} s")
    print(f"mvmctl run --attached            median first line: {o:.3f} s")
    print(f"ratio of medians (goal <= 1.15): {o / f:.3f}")
    print(f"median of paired ratios: {statistics.median(pairs):.3f} (IQR {q1:.3f}-{q3:.3f})")
    print(f"cached no-op mvmctl build median: {statistics.median(noop):.3f} s (goal <= 0.3)")
    print(f"mvmctl --help median:             {statistics.median(helpt):.3f} s (goal <= 0.15)")


if __name__ == "__main__":
    main()
