"""Drives + credentials benchmark: what config, secrets, a data volume and
credentials add to a start.

Times `mvmctl run --attached` of one small project (its entrypoint checks the
drives and credentials are there, so the guest-side work is included) bare
and with `-v config -v secrets -v data:64M` plus three credentials (one file,
one value, one 4 KiB binary file).  Wall time from spawning mvmctl to the
entrypoint's output line and to mvmctl's exit, medians over N runs each,
interleaved so machine noise hits both sides alike; prints the ratios (the
target is ≤ 1.10).  The machine is noisy (single runs vary by ±0.1 s, in
both directions): use --runs 9 or more before believing a ratio.

Usage: python bench/drives.py [--runs N]
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
MVMCTL = str(Path(sys.executable).parent / "mvmctl")

PROJECT = """name = "bench-drives"
[entrypoint]
command = ["/bin/sh", "-c", "[ -d /mnt/config ] && echo ready ${CREDENTIALS_DIRECTORY:-none}"]
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the entrypoint's output line, seconds to mvmctl's exit)."""
    start = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout is not None and p.stderr is not None
    ready = None
    for line in p.stdout:
        if ready is None and b"ready" in line:
            ready = time.perf_counter() - start
    err = p.stderr.read()
    code = p.wait(timeout=120)
    took = time.perf_counter() - start
    if code != 0 or ready is None:
        raise RuntimeError(f"run failed ({code}): {err.decode()[-400:]}")
    return ready, took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mvm-bench-drives-") as tmp:
        root = Path(tmp)
        env = dict(os.environ, MVM_HOME=str(root / "home"))
        env.pop("CREDENTIALS_DIRECTORY", None)
        proj = root / "proj"
        proj.mkdir()
        (proj / "mvm.toml").write_text(PROJECT)
        cfg, sec, data = root / "config", root / "secrets", root / "data"
        for d in (cfg, sec, data):
            d.mkdir()
        (cfg / "app.json").write_text('{"port": 8080}\n')
        (cfg / "env.sh").write_text("MODE=bench\n")
        (sec / "app.env").write_text("API_KEY=bench-secret\n")
        (root / "token").write_text("bench-token")
        (root / "blob").write_bytes(os.urandom(4096))
        bare = [MVMCTL, "run", "--attached", str(proj), "--name", "bare"]
        full = [MVMCTL, "run", "--attached", str(proj), "--name", "full",
                "-v", f"{cfg}:/mnt/config", "-v", f"{sec}:/mnt/secrets", "-v", f"{data}:/data:64M",
                "--credential", f"TOKEN@{root / 'token'}", "--credential", "MODE=bench",
                "--credential", f"BLOB@{root / 'blob'}"]  # fmt: skip
        timed(bare, env)  # build the image and warm caches once
        timed(full, env)  # creates the data volume (later runs reuse it, as in real use)
        t_bare: list[tuple[float, float]] = []
        t_full: list[tuple[float, float]] = []
        for _ in range(args.runs):
            t_bare.append(timed(bare, env))
            t_full.append(timed(full, env))
        for i, what in ((0, "to the entrypoint's output"), (1, "to mvmctl's exit")):
            mb = statistics.median(t[i] for t in t_bare)
            mf = statistics.median(t[i] for t in t_full)
            print(f"{what}:")
            for label, m, ts in (("  bare run --attached", mb, t_bare),
                                 ("  with 3 drives + 3 credentials", mf, t_full)):  # fmt: skip
                print(f"{label + ':':<34}median {m:.3f}s  {[round(t[i], 3) for t in ts]}")
            print(f"  ratio: {mf / mb:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
