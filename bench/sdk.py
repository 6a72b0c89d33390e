"""SDK benchmark: exec round trip through ``mvm.Sandbox`` vs ``mvmctl exec``, and
sandboxes created per minute from a snapshot template.

From one run (a private MVM_HOME, one accessible template built with
``--snapshot``):

* median round trip of ``true`` in one running sandbox: ``sb.exec(["true"])``
  (in-process: a connection to the VM's agent sidecar per call) against the
  floor ``mvmctl exec VM -- true`` (a new Python process per call, the CLI's
  click-free fast path), interleaved, and their ratio;
* sandboxes created per minute from the snapshot template: ``--parallel``
  ``AsyncSandbox.create`` at a time for ``--seconds`` (each closed right away,
  so memory stays bounded), on however many cores this host has.

Usage: python bench/sdk.py [--runs N] [--parallel P] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MVMCTL = str(Path(sys.executable).parent / "mvmctl")
PROJECT = """name = "benchsdk"
dev = true
[entrypoint.services.idle]
command = ["/bin/sh", "-c", "exec sleep 1000000"]
"""


def mvmctl(env: dict[str, str], *args: str, timeout: float = 1800) -> str:
    r = subprocess.run([MVMCTL, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"mvmctl {' '.join(args)}: {r.stdout}{r.stderr}")
    return r.stdout


def median_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.1f} ms (min {min(xs) * 1000:.1f}, n={len(xs)})"


def exec_round_trips(env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    import mvm

    sdk, cli = [], []
    with mvm.Sandbox.create(template="benchsdk", name="bench-exec") as sb:
        for _ in range(3):  # warm: the sidecar, page cache
            sb.exec(["true"])
            mvmctl(env, "exec", sb.name, "--", "true")
        for _ in range(runs):
            t = time.perf_counter()
            assert sb.exec(["true"]).exit_code == 0
            sdk.append(time.perf_counter() - t)
            t = time.perf_counter()
            mvmctl(env, "exec", sb.name, "--", "true")
            cli.append(time.perf_counter() - t)
    return sdk, cli


async def creation_rate(parallel: int, seconds: float) -> tuple[int, float, list[float]]:
    import mvm

    done: list[float] = []
    end = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < end:
            t = time.monotonic()
            sb = await mvm.AsyncSandbox.create(template="benchsdk")
            try:
                assert (await sb.exec(["true"])).exit_code == 0  # usable, not just started
                done.append(time.monotonic() - t)
            finally:
                await sb.close()

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    return len(done), time.monotonic() - t0, done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mvm-bench-sdk-") as tmp:
        home = Path(tmp) / "home"
        proj = Path(tmp) / "benchsdk"
        proj.mkdir()
        (proj / "mvm.toml").write_text(PROJECT)
        os.environ["MVM_HOME"] = str(home)
        env = dict(os.environ)
        mvmctl(env, "template", "create", "benchsdk", "--flake", str(proj))
        mvmctl(env, "template", "build", "benchsdk", "--snapshot")
        sdk, cli = exec_round_trips(env, args.runs)
        n, elapsed, each = asyncio.run(creation_rate(args.parallel, args.seconds))
    ratio = statistics.median(sdk) / statistics.median(cli)
    print(f"host: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"exec round trip, SDK (sb.exec):         {median_ms(sdk)}")
    print(f"exec round trip, floor (mvmctl exec):   {median_ms(cli)}")
    print(f"SDK / floor: {ratio:.2f}")
    per_min = n / elapsed * 60
    print(f"sandboxes from a snapshot: {n} in {elapsed:.1f}s with {args.parallel} at a time "
          f"= {per_min:.1f}/min; create+exec+close each {median_ms(each)}")  # fmt: skip


if __name__ == "__main__":
    main()
