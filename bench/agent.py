"""Guest agent benchmark: exec round trips against floors measured in the same run.

Boots one accessible VM (a busybox service image) and reports medians of:

* ``ping`` — one protocol round trip through the sidecar and virtio-serial
  (the floor for anything the agent does);
* library ``exec(["true"])`` on an open connection (fork + exec in the guest
  on top of a round trip) and its ratio to ping;
* ``mvmctl exec NAME -- true`` end to end (goal ≤ 50 ms) and the floor it
  cannot beat: ``python -c pass`` with the same interpreter (start-up alone),
  plus ``python -c 'import mvm.cli.agent_cmds'`` (mvmctl's import path).

Usage: python bench/agent.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

MVMCTL = str(Path(sys.executable).parent / "mvmctl")
PROJECT = """name = "agbench"
dev = true
[uids]
entrypoint = 1000
[entrypoint.services.idle]
command = ["/bin/sleep", "1000000"]
"""


def median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float, float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples), min(samples), max(samples)


def run(argv: list[str], env: dict[str, str]) -> None:
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mvm-bench-agent-") as tmp:
        home = Path(tmp) / "home"
        os.environ["MVM_HOME"] = str(home)
        env = dict(os.environ)
        proj = Path(tmp) / "p"
        proj.mkdir()
        (proj / "mvm.toml").write_text(PROJECT)
        subprocess.run([MVMCTL, "up", "--flake", str(proj)], check=True, env=env,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            from mvm.runtime import guest

            t0 = time.perf_counter()
            client = guest.connect("agbench", verb="exec", timeout=120)
            first = time.perf_counter() - t0
            for _ in range(3):  # warm both ends
                client.exec(["true"])
            results = {
                "ping (floor)": median_ms(client.ping, args.runs),
                "library exec true": median_ms(lambda: client.exec(["true"]), args.runs),
                "python -c pass (floor)": median_ms(
                    lambda: run([sys.executable, "-c", "pass"], env), args.runs),
                "python import mvm.cli.agent_cmds": median_ms(
                    lambda: run([sys.executable, "-c", "import mvm.cli.agent_cmds"], env),
                    args.runs),
                "mvmctl exec -- true": median_ms(
                    lambda: run([MVMCTL, "exec", "agbench", "--", "true"], env), args.runs),
            }  # fmt: skip
            client.close()
        finally:
            subprocess.run([MVMCTL, "down", "agbench"], env=env, stdout=subprocess.DEVNULL)
    print(f"first connect (starts the sidecar, waits for the agent): {first * 1000:.0f} ms")
    print(f"{'measurement':<36}{'median':>10}{'min':>10}{'max':>10}   (ms, {args.runs} runs)")
    for name, (med, lo, hi) in results.items():
        print(f"{name:<36}{med:>10.1f}{lo:>10.1f}{hi:>10.1f}")
    ping, lib = results["ping (floor)"][0], results["library exec true"][0]
    py, cli = results["python -c pass (floor)"][0], results["mvmctl exec -- true"][0]
    print(f"library exec / ping: {lib / ping:.1f}x")
    verdict = "met" if cli <= 50 else "NOT met"
    print(f"mvmctl exec / python start-up: {cli / py:.1f}x; mvmctl exec - python start-up: "
          f"{cli - py:.0f} ms; goal mvmctl exec <= 50 ms: {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
