"""Vars and management overheads against floors measured in the same run.

- ``vars generate --regenerate`` of one generator (``openssl rand``) against the
  floor: the same script run directly with ``/bin/sh -c`` (what is left is mvmctl's
  start, the sandbox, the output check and age encryption).
- ``vars get --reveal`` (decrypt one secret) against ``mvmctl --version``.
- ``mvmctl ls`` with N defined VMs (each a freshness check: an input hash without
  building) against ``mvmctl ls`` with none.

Medians of N runs each, interleaved, and their ratios.

Usage: python bench/vars.py [--runs N] [--vms N]
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
SCRIPT = 'openssl rand -base64 32 | tr -d "\\n" > "$out/api-key"'
TOML = f"""\
name = "bench"
[entrypoint]
command = ["/bin/true"]
[vars.generators.app]
files.api-key = {{ secret = true }}
runtime_inputs = ["openssl", "coreutils"]
script = '{SCRIPT}'
[credentials]
API_KEY = {{ var = "app/api-key" }}
"""


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--vms", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        project = root / "p"
        project.mkdir()
        (project / "mvm.toml").write_text(TOML)
        env = dict(os.environ, MVM_HOME=str(root / "home"))
        empty = dict(os.environ, MVM_HOME=str(root / "empty"))
        out = root / "out"
        out.mkdir()
        subprocess.run([MVMCTL, "vars", "generate", "bench", "--flake", str(project)], env=env,
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        for i in range(args.vms):
            subprocess.run([MVMCTL, "create", f"b{i}", "--flake", str(project)], env=env,
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        keys = ("sh", "generate", "version", "get", "ls0", "lsN")
        samples: dict[str, list[float]] = {k: [] for k in keys}
        sh_env = dict(os.environ, out=str(out))
        for _ in range(args.runs):
            samples["sh"].append(timed(["/bin/sh", "-c", SCRIPT], sh_env))
            samples["generate"].append(timed([MVMCTL, "vars", "generate", "bench", "--flake",
                                              str(project), "--regenerate"], env))  # fmt: skip
            samples["version"].append(timed([MVMCTL, "--version"], env))
            samples["get"].append(timed([MVMCTL, "vars", "get", "bench", "app/api-key",
                                         "--reveal"], env))  # fmt: skip
            samples["ls0"].append(timed([MVMCTL, "ls"], empty))
            samples["lsN"].append(timed([MVMCTL, "ls"], env))
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"runs: {args.runs}, defined VMs for ls: {args.vms}")
    print(f"script alone (floor)        {med['sh'] * 1000:8.1f} ms")
    print(f"vars generate --regenerate  {med['generate'] * 1000:8.1f} ms"
          f"  (+{(med['generate'] - med['sh']) * 1000:.0f} ms)")  # fmt: skip
    print(f"mvmctl --version (floor)    {med['version'] * 1000:8.1f} ms")
    print(f"vars get --reveal           {med['get'] * 1000:8.1f} ms"
          f"  ({med['get'] / med['version']:.2f}x)")  # fmt: skip
    print(f"ls, no VMs (floor)          {med['ls0'] * 1000:8.1f} ms")
    print(f"ls, {args.vms} defined VMs         {med['lsN'] * 1000:8.1f} ms"
          f"  ({med['lsN'] / med['ls0']:.2f}x, "
          f"{(med['lsN'] - med['ls0']) / args.vms * 1000:.1f} ms per VM)")  # fmt: skip


if __name__ == "__main__":
    main()
