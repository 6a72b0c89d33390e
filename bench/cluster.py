"""Cluster benchmark: place and start N sandboxes across a 3-node local Ray cluster vs
starting them directly with ``mvmctl up --template`` on one host.

From one run (private homes, one HTTP template built with ``--snapshot`` and
pushed to a local-directory registry that every node pulls from):

* time to start the 3-node cluster (``mvmctl cluster start``);
* the first ``cluster up`` (each host pulls the template: a cold cache);
* median over ``--runs`` of ``mvmctl cluster up --replicas N --spread -p 0:8080``
  until every replica answers HTTP on its port (placement, the Ray calls,
  N restores in parallel across the hosts), then ``cluster down``;
* the floor, interleaved with it: N ``mvmctl up --template`` started at once on
  one host (the builder's home), until every one answers; and the same N one
  after the other;
* ratio cluster / floor.  On one machine the cluster cannot be faster than the
  floor — its nodes share the same cores; the ratio is the layer's overhead.

Usage: python bench/cluster.py [--replicas N] [--runs R]
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

MVMCTL = str(Path(sys.executable).parent / "mvmctl")
PROJECT = """name = "benchcl"
[entrypoint.services.web]
ready = { tcp = 8080 }
command = ["/bin/sh", "-c", "mkdir -p /tmp/w; echo ready > /tmp/w/index.html; exec httpd -f -p 8080 -h /tmp/w"]
"""  # noqa: E501


def mvmctl(env: dict[str, str], *args: str, timeout: float = 1800) -> str:
    r = subprocess.run([MVMCTL, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"mvmctl {' '.join(args)}: {r.stdout}{r.stderr}")
    return r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_answer(hostport: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{hostport}/", timeout=2) as r:
                if r.read().strip() == b"ready":
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise SystemExit(f"{hostport} did not answer within {timeout:.0f}s")
        time.sleep(0.05)


def cluster_round(env: dict[str, str], n: int) -> float:
    t = time.perf_counter()
    placed = json.loads(mvmctl(env, "cluster", "up", "--template", "benchcl", "--replicas",
                               str(n), "--spread", "-p", "0:8080", "--json"))  # fmt: skip
    for v in placed:
        wait_answer(v["ports"][0].split("->")[0])
    took = time.perf_counter() - t
    mvmctl(env, "cluster", "down", "--template", "benchcl")
    return took


def direct_round(env: dict[str, str], n: int, parallel: bool) -> float:
    ports = [free_port() for _ in range(n)]
    names = [f"direct-{i}" for i in range(n)]
    argvs = [[MVMCTL, "up", "--template", "benchcl", "--name", nm, "-p", f"{p}:8080"]
             for nm, p in zip(names, ports, strict=True)]  # fmt: skip
    t = time.perf_counter()
    if parallel:
        procs = [subprocess.Popen(a, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for a in argvs]  # fmt: skip
        for p in procs:
            _, err = p.communicate(timeout=600)
            if p.returncode != 0:
                raise SystemExit(f"mvmctl up: {err.decode()}")
    else:
        for a in argvs:
            subprocess.run(a, env=env, check=True, capture_output=True, timeout=600)
    for p in ports:
        wait_answer(f"127.0.0.1:{p}")
    took = time.perf_counter() - t
    for nm in names:
        mvmctl(env, "down", nm)
    return took


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    with tempfile.TemporaryDirectory(prefix="mvm-bench-cl-") as tmp:
        proj = Path(tmp) / "benchcl"
        proj.mkdir()
        (proj / "mvm.toml").write_text(PROJECT)
        reg = {"MVM_TEMPLATE_REGISTRY": str(Path(tmp) / "registry")}
        builder = {**os.environ, "MVM_HOME": str(Path(tmp) / "builder"), **reg}
        mvmctl(builder, "template", "create", "benchcl", "--flake", str(proj), "--cpus", "1",
               "--mem", "256")  # fmt: skip
        mvmctl(builder, "template", "build", "benchcl", "--snapshot")
        mvmctl(builder, "template", "push", "benchcl")
        env = {**os.environ, "MVM_HOME": str(Path(tmp) / "cluster"), **reg}
        env.pop("MVM_CLUSTER_ADDRESS", None)
        mem = 256 * args.replicas  # every host could hold them all: placement never refuses
        t = time.perf_counter()
        mvmctl(env, "cluster", "start", "--nodes", "3", "--node-mem", str(mem),
               "--node-cpus", str(args.replicas))  # fmt: skip
        started = time.perf_counter() - t
        try:
            first = cluster_round(env, args.replicas)
            cl, par, seq = [], [], []
            for _ in range(args.runs):
                cl.append(cluster_round(env, args.replicas))
                par.append(direct_round(builder, args.replicas, parallel=True))
                seq.append(direct_round(builder, args.replicas, parallel=False))
        finally:
            mvmctl(env, "cluster", "stop")
    n = args.replicas
    print(f"host: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"cluster start, 3 nodes:                          {started:.2f} s")
    print(f"first cluster up of {n} (each host pulls):         {first:.2f} s")
    print(f"cluster up of {n} across 3 hosts, until answering: {fmt(cl)}")
    print(f"floor: {n} x mvmctl up at once on one host:        {fmt(par)}")
    print(f"       {n} x mvmctl up one after the other:        {fmt(seq)}")
    print(f"cluster / floor (at once): {statistics.median(cl) / statistics.median(par):.2f}")


if __name__ == "__main__":
    main()
