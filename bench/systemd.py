"""Boot-time cost of systemd as PID 1 and of q35, from one run (same kernel).

For each of busybox or systemd on microvm or q35, times `mvmctl run --attached` of a
project whose entrypoint prints one line and exits, two ways: to the
entrypoint's first output line ("ready") and to mvmctl's exit (the guest's
shutdown included).  Runs are interleaved (one of each configuration per
round) so machine noise hits all four alike; prints medians and the ratio to
the busybox-on-microvm floor measured in the same run.

Usage: python bench/systemd.py [--runs N]
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

MVMCTL = str(Path(sys.executable).parent / "mvmctl")
PROJECT = """
name = "bench-{init}"
init = "{init}"
kernel = "debian"  # the same kernel for all four: q35 needs its virtio-pci module

[entrypoint]
command = ["/bin/sh", "-c", "echo mvm-bench-ready"]
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the ready line, seconds to exit)."""
    start = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL, env=env)  # fmt: skip
    assert p.stdout is not None
    ready = None
    for line in p.stdout:
        if ready is None and b"mvm-bench-ready" in line:
            ready = time.perf_counter() - start
    p.wait(timeout=600)
    if ready is None:
        raise RuntimeError(f"{' '.join(argv)}: no ready line")
    return ready, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mvm-bench-systemd-") as tmp:
        env = dict(os.environ, MVM_HOME=str(Path(tmp) / "home"))
        configs = []
        for init in ("busybox", "systemd"):
            proj = Path(tmp) / init
            proj.mkdir()
            (proj / "mvm.toml").write_text(PROJECT.format(init=init))
            subprocess.run([MVMCTL, "build", str(proj)], env=env, check=True,
                           stdout=subprocess.DEVNULL, timeout=900)  # fmt: skip
            for machine in ("microvm", "q35"):
                configs.append((f"{init}/{machine}", [MVMCTL, "run", "--attached", "--machine",
                                                      machine, str(proj)]))  # fmt: skip
        results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in configs}
        for _ in range(args.runs):
            for name, argv in configs:
                results[name].append(timed(argv, env))
        floor = statistics.median(r[0] for r in results["busybox/microvm"])
        floor_exit = statistics.median(r[1] for r in results["busybox/microvm"])
        print(f"{'configuration':18} {'ready (median)':>15} {'ratio':>6} {'exit (median)':>14}"
              f" {'ratio':>6}   runs={args.runs}")  # fmt: skip
        for name, rs in results.items():
            ready = statistics.median(r[0] for r in rs)
            done = statistics.median(r[1] for r in rs)
            print(f"{name:18} {ready:14.2f}s {ready / floor:6.2f} {done:13.2f}s "
                  f"{done / floor_exit:6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
