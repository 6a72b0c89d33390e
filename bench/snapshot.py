"""Snapshot benchmark: cold boot vs restore of one template, clone memory, snapshot size.

From one run (a private MVM_HOME, one template with an HTTP service built
with ``--snapshot``):

* median time-to-ready — from starting ``mvmctl up --template`` to the
  service answering on its forwarded port — for a cold boot (``--cold``) and
  for a restore of the same template, paired (cold then restore, N times), and
  the ratio (goal ≤ 0.10);
* where a restore's time goes, measured in-process (Python import of the CLI,
  QEMU start until QMP answers, state load, ``cont``, each control verb);
* host memory: PSS of 1 restored clone vs 5 clones of the snapshot at once
  (goal: 5 clones <= 2x one), from /proc/PID/smaps_rollup of each QEMU;
* snapshot size per MiB of guest memory (state stream + RAM blocks on disk).

Usage: python bench/snapshot.py [--runs N] [--mem MIB]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MVMCTL = str(Path(sys.executable).parent / "mvmctl")
SERVICE = r"""name = "benchsvc"
memory_mib = {mem}
ports = ["{port}:8080"]
[entrypoint]
command = ["/bin/sh", "-c", "mkdir -p /tmp/w; echo ready > /tmp/w/index.html; exec httpd -f -p 8080 -h /tmp/w"]
"""  # noqa: E501


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mvmctl(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    r = subprocess.run([MVMCTL, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"mvmctl {' '.join(args)}: {r.stdout}{r.stderr}")
    return r.stdout


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.read().strip() == b"ready"
    except OSError:
        return False


def time_to_ready(env: dict[str, str], name: str, *extra: str) -> float:
    """Seconds from starting `mvmctl up` to the service answering through its forward.

    The client polls once `up` has returned (for both kinds of start: `up` returns
    when the VM runs).  Polling *during* a restore would measure slirp instead: it
    accepts the host side at once and its first SYN to the still-paused guest is
    only retransmitted seconds later."""
    port = free_port()
    t0 = time.perf_counter()
    r = subprocess.run([MVMCTL, "up", "--template", "benchsvc", "--name", name,
                        "-p", f"{port}:8080", *extra], env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"{name}: {r.stderr}")
    deadline = t0 + 300
    while not answers(port):
        if time.perf_counter() > deadline:
            raise SystemExit(f"{name} never answered")
        time.sleep(0.005)
    return time.perf_counter() - t0


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError("no Pss in smaps_rollup")


def vm_pid(env: dict[str, str], name: str) -> int:
    return int(json.loads(mvmctl(env, "status", name, "--json"))["pid"])


def profile(env: dict[str, str]) -> dict[str, float]:
    """One restore in-process, with the time of each step."""
    code = r"""
import json, time
t0 = time.monotonic()
from mvm.cli import main  # what every mvmctl start imports
t_import = time.monotonic() - t0
from mvm.runtime.resolve import resolve
from mvm.runtime.config import RunConfig
from mvm.runtime.templates import template_run, template_restore
from mvm.runtime.start import start
t1 = time.monotonic()
image, defaults, rev = template_run("benchsvc")
run = resolve(image, RunConfig(name="prof", ports=[]), defaults, source="template:benchsvc",
              revision=rev)
r = template_restore(image)
t2 = time.monotonic()
st = start(run, restore=r)
t3 = time.monotonic()
st.machine.close()
print(json.dumps({"python-import": t_import, "resolve+verify": t2 - t1,
                  **(st.timings or {}), "start-total": t3 - t2}))
"""
    env2 = dict(env)
    out = subprocess.run([sys.executable, "-c", code], env=env2, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    mvmctl(env, "down", "prof")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mem", type=int, default=256)
    ap.add_argument("--clones", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mvm-bench-snap-") as tmp:
        env = dict(os.environ, MVM_HOME=str(Path(tmp) / "home"))
        proj = Path(tmp) / "benchsvc"
        proj.mkdir()
        (proj / "mvm.toml").write_text(SERVICE.format(mem=args.mem, port=free_port()))
        mvmctl(env, "template", "create", "benchsvc", "--flake", str(proj))
        t = time.perf_counter()
        mvmctl(env, "template", "build", "benchsvc", "--snapshot", timeout=900)
        print(f"template build --snapshot: {time.perf_counter() - t:.1f}s")

        cold, warm = [], []
        for i in range(args.runs):
            cold.append(time_to_ready(env, f"c{i}", "--cold"))
            mvmctl(env, "down", f"c{i}")
            warm.append(time_to_ready(env, f"w{i}"))
            mvmctl(env, "down", f"w{i}")
        mc, mw = statistics.median(cold), statistics.median(warm)
        print(f"time-to-ready cold:    median {mc:.3f}s  ({', '.join(f'{x:.2f}' for x in cold)})")
        print(f"time-to-ready restore: median {mw:.3f}s  ({', '.join(f'{x:.2f}' for x in warm)})")
        print(f"ratio restore/cold: {mw / mc:.3f} (goal <= 0.10)")

        prof = profile(env)
        print("restore profile (s): " + ", ".join(f"{k} {v:.3f}" for k, v in prof.items()))

        names = [f"m{i}" for i in range(args.clones)]
        time_to_ready(env, names[0])
        time.sleep(2)
        one = pss_kib(vm_pid(env, names[0]))
        for n in names[1:]:
            time_to_ready(env, n)
        time.sleep(2)
        total = sum(pss_kib(vm_pid(env, n)) for n in names)
        print(f"PSS: 1 clone {one / 1024:.1f} MiB; {args.clones} clones {total / 1024:.1f} MiB "
              f"= {total / one:.2f}x one (goal <= 2x)")  # fmt: skip
        for n in names:
            mvmctl(env, "down", n)

        cur = json.loads(mvmctl(env, "template", "list", "--json"))[0]["current"]
        rev = Path(env["MVM_HOME"]) / "templates" / "benchsvc" / "revisions" / cur
        state = (rev / "snapshot.state").stat()
        ram = (rev / "snapshot.ram").stat()
        disk = state.st_blocks * 512 + ram.st_blocks * 512
        print(f"snapshot: state {state.st_size / 2**20:.2f} MiB, RAM file {ram.st_size >> 20} MiB "
              f"apparent / {ram.st_blocks * 512 / 2**20:.1f} MiB on disk; "
              f"{disk / 2**20 / args.mem:.3f} MiB on disk per MiB of guest memory")  # fmt: skip


if __name__ == "__main__":
    main()
