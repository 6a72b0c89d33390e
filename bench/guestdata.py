"""Guest-data drive benchmark: credentials and network files on the guest-data
drive (what Firecracker guests use; ``MVM_GUEST_DATA=drive``) against fw_cfg
(QEMU's default), under QEMU in the same run.

Times `mvmctl run --attached` of one project whose entrypoint checks its
credentials are there: (a) no credentials (the floor), (b) five credentials
(a 4 KiB binary, a 100 KiB file, a name too long for fw_cfg, two values) over
fw_cfg, (c) the same over the guest-data drive.  Runs are interleaved (a, b, c
in each round); prints medians to the entrypoint's line and to mvmctl's exit,
and the ratios c/b and c/a.  Single TCG boots vary by ±0.1 s: use --runs 9+.

Usage: python bench/guestdata.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from drives import MVMCTL, timed

PROJECT = """name = "bench-guestdata"
[entrypoint]
command = ["/bin/sh", "-c", "ls ${CREDENTIALS_DIRECTORY:-/} >/dev/null; echo ready"]
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mvm-bench-guestdata-") as tmp:
        root = Path(tmp)
        env = dict(os.environ, MVM_HOME=str(root / "home"))
        env.pop("CREDENTIALS_DIRECTORY", None)
        env.pop("MVM_GUEST_DATA", None)
        drive_env = dict(env, MVM_GUEST_DATA="drive")
        proj = root / "proj"
        proj.mkdir()
        (proj / "mvm.toml").write_text(PROJECT)
        (root / "blob").write_bytes(os.urandom(4096))
        (root / "big").write_bytes(os.urandom(100 * 1024))
        bare = [MVMCTL, "run", "--attached", str(proj), "--name", "bare"]
        creds = [MVMCTL, "run", "--attached", str(proj), "--name", "creds",
                 "--credential", f"BLOB@{root / 'blob'}", "--credential", f"BIG@{root / 'big'}",
                 "--credential", f"{'N' * 60}=long", "--credential", "A=1",
                 "--credential", "B=2"]  # fmt: skip
        cases = (("no credentials", bare, env), ("5 credentials, fw_cfg", creds, env),
                 ("5 credentials, guest-data drive", creds, drive_env))  # fmt: skip
        for _label, argv, e in cases:
            timed(argv, e)  # build once, warm caches
        results: list[list[tuple[float, float]]] = [[] for _ in cases]
        for _ in range(args.runs):
            for i, (_label, argv, e) in enumerate(cases):
                results[i].append(timed(argv, e))
        for k, what in ((0, "to the entrypoint's output"), (1, "to mvmctl's exit")):
            med = [statistics.median(t[k] for t in r) for r in results]
            print(f"{what}:")
            for (label, _a, _e), m, r in zip(cases, med, results, strict=True):
                print(f"  {label + ':':<34}median {m:.3f}s  {[round(t[k], 3) for t in r]}")
            print(f"  drive / fw_cfg: {med[2] / med[1]:.3f}   drive / no credentials: "
                  f"{med[2] / med[0]:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
