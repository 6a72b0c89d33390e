"""Guest agent benchmark: exec round trips against floors measured in the same run.

Boots one accessible VM (a busybox service image) and reports medians of:

* ``ping`` — one protocol round trip through the sidecar and virtio-serial
  (the floor for anything the agent does);
* library ``exec(["true"])`` on an open connection (fork + exec in the guest
  on top of a round trip) and its ratio to ping;
* ``mvmctl exec NAME -- true`` end to end (goal ≤ 50 ms) and the floor it
  cannot beat: ``python -c pass`` with the same interpreter (start-up alone),
  plus the import of exec's modules alone;
* the CPU time (user + sys) of those processes: on a loaded machine (these are
  shared by several jobs) wall times mostly measure waiting for a CPU, and CPU
  time says what mvmctl itself costs.

Usage: python bench/agent.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
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


IMPORTS = "import mvm.cli.entry, mvm.cli.agent_run, mvm.runtime.guest, mvm.runtime.console"


def median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float, float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples), min(samples), max(samples)


CPU_MS: dict[str, list[float]] = {}


def run(argv: list[str], env: dict[str, str], key: str = "") -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    CPU_MS.setdefault(key or argv[-1], []).append(cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    # as `make setup` does: with PYTHONDONTWRITEBYTECODE set nothing else writes .pyc files
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
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
                    lambda: run([sys.executable, "-c", "pass"], env, "python"), args.runs),
                "python: import exec's modules": median_ms(
                    lambda: run([sys.executable, "-c", IMPORTS], env, "imports"), args.runs),
                "mvmctl exec -- true": median_ms(
                    lambda: run([MVMCTL, "exec", "agbench", "--", "true"], env, "mvmctl"),
                    args.runs),
            }  # fmt: skip
            client.close()
        finally:
            subprocess.run([MVMCTL, "down", "agbench"], env=env, stdout=subprocess.DEVNULL)
    print(f"first connect (starts the sidecar, waits for the agent): {first * 1000:.0f} ms")
    print(f"{'measurement':<36}{'median':>10}{'min':>10}{'max':>10}   (ms, {args.runs} runs)")
    for name, (med, lo, hi) in results.items():
        print(f"{name:<36}{med:>10.1f}{lo:>10.1f}{hi:>10.1f}")
    for key, label in (("python", "python -c pass"), ("imports", "import exec's modules"),
                       ("mvmctl", "mvmctl exec -- true")):  # fmt: skip
        print(f"CPU (user+sys) {label:<26}{statistics.median(CPU_MS[key]):>10.1f} ms median")
    ping, lib = results["ping (floor)"][0], results["library exec true"][0]
    py, cli = results["python -c pass (floor)"][0], results["mvmctl exec -- true"][0]
    print(f"library exec / ping: {lib / ping:.1f}x")
    verdict = "met" if cli <= 50 else "NOT met"
    print(f"mvmctl exec / python start-up: {cli / py:.1f}x; mvmctl exec - python start-up: "
          f"{cli - py:.0f} ms; goal mvmctl exec <= 50 ms: {verdict}")  # fmt: skip
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
