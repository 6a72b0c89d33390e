"""Density benchmark: host memory per idle VM, and ten VMs starting at once.

A busybox ``httpd`` service VM (256 MiB guest, the project's default kernel)
is started with ``mvmctl up`` and a port forward.  Reported, from one run:

- the time from ``mvmctl up`` to the first HTTP answer through the forward,
  for one VM alone and for 10 VMs started concurrently (goal: all 10 serving
  within 6x the single-VM time; ten CPU-bound boots on two cores cannot beat
  5x);
- the PSS (``/proc/PID/smaps_rollup``) of each idle QEMU after ``--settle``
  seconds, for 1 VM and per VM with 10 running (goal <= 64 MiB), and its
  anonymous/file split.

Usage: python bench/density.py [--vms 10] [--settle 15] [--kernel mvm|debian]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MVMCTL = str(Path(sys.executable).parent / "mvmctl")
BASE_PORT = 18400
PROJECT = """name = "density"
memory_mib = 256
kernel = "{kernel}"

[entrypoint]
command = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]

[files."/www/index.html"]
content = "ok"
"""


def serving(port: int, deadline: float) -> float:
    """Poll http://127.0.0.1:PORT/ until it answers ``ok``; return when it did."""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"port {port} never served")


def start(project: Path, name: str, port: int, env: dict[str, str]) -> float:
    """Seconds from ``mvmctl up`` to the first HTTP answer."""
    t0 = time.monotonic()
    subprocess.run([MVMCTL, "up", "--flake", str(project), "--name", name,
                    "-p", f"{port}:8080"], check=True, env=env, capture_output=True,
                   timeout=600)  # fmt: skip
    return serving(port, t0 + 600) - t0


def qemu_pid(name: str) -> int:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if f"mvm-{name},".encode() in (d / "cmdline").read_bytes():
                    return int(d.name)
            except OSError:
                continue
    raise RuntimeError(f"no QEMU for {name}")


def memory(pid: int) -> dict[str, int]:
    """smaps_rollup in KiB: Pss, Pss_Anon, Pss_File, Rss."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        if key in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
            out[key] = int(value.split()[0])
    return out


def down(names: list[str], env: dict[str, str]) -> None:
    with ThreadPoolExecutor(len(names)) as ex:
        list(ex.map(lambda n: subprocess.run([MVMCTL, "down", n], env=env,
                                             capture_output=True, timeout=120), names))  # fmt: skip


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=10)
    ap.add_argument("--settle", type=float, default=15.0)
    ap.add_argument("--kernel", default="mvm")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mvm-density-") as tmp:
        env = dict(os.environ, MVM_HOME=str(Path(tmp) / "home"))
        project = Path(tmp) / "project"
        project.mkdir()
        (project / "mvm.toml").write_text(PROJECT.format(kernel=args.kernel))
        subprocess.run([MVMCTL, "build", str(project)], check=True, env=env, capture_output=True)
        # warm-up: page cache, accelerator verdict
        start(project, "warm", BASE_PORT, env)
        down(["warm"], env)

        single = start(project, "one", BASE_PORT, env)
        time.sleep(args.settle)
        one = memory(qemu_pid("one"))
        down(["one"], env)

        names = [f"d{i}" for i in range(args.vms)]
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.vms) as ex:
            times = list(ex.map(lambda i: start(project, names[i], BASE_PORT + 1 + i, env),
                                range(args.vms)))  # fmt: skip
        all_serving = time.monotonic() - t0
        time.sleep(args.settle)
        many = [memory(qemu_pid(n)) for n in names]
        down(names, env)

    print(f"kernel: {args.kernel}; guest memory 256 MiB; settle {args.settle:.0f} s")
    print(
        f"1 VM: up to serving {single:.2f} s; PSS {mib(one['Pss'])} "
        f"(anon {mib(one['Pss_Anon'])}, file {mib(one['Pss_File'])}, RSS {mib(one['Rss'])})"
    )
    pss = statistics.mean(m["Pss"] for m in many)
    anon = statistics.mean(m["Pss_Anon"] for m in many)
    fil = statistics.mean(m["Pss_File"] for m in many)
    print(f"{args.vms} VMs: PSS per VM {mib(pss)} (anon {mib(anon)}, file {mib(fil)}); "
          f"goal <= 64 MiB")  # fmt: skip
    print(f"{args.vms} VMs started concurrently: all serving after {all_serving:.2f} s "
          f"(slowest {max(times):.2f} s, median {statistics.median(times):.2f} s) = "
          f"{all_serving / single:.2f}x the single VM (goal <= 6x)")  # fmt: skip


if __name__ == "__main__":
    main()
