"""``python -m mvm.network.proxyd RUN_DIR QEMU_PID QEMU_START``: one VM's egress
proxy, supervised, living exactly as long as the VM's QEMU.

The configuration (policy, bindings *with values*) arrives on stdin as one
JSON document and stays in memory: it is never written to disk, so a value
is only ever in mvmctl's memory while starting, then here.  The supervisor
forks a worker that serves the proxy's sockets (``RUN_DIR/net/*.sock``);
when a worker dies it is restarted with backoff (while it is down the
guest's connections are closed: egress fails closed) and the restart is
counted in ``net/proxyd.json`` for ``status``.  Both exit when QEMU does.
The first worker writes ``ready`` on stdout once its sockets listen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mvm.network.policy import Policy
from mvm.network.proxy import Proxy, ProxyConfig
from mvm.proc import PR_SET_PDEATHSIG
from mvm.state.procs import pid_alive

SOCKETS = ("http", "tls", "dns")
MAX_CONFIG = 4 << 20


MAX_PORTS = 16  # transparent listeners for explicitly allowed ports (one guestfwd each)
RESERVED_PORTS = (80, 443, 3128, 53)


def socket_paths(net_dir: Path) -> dict[str, Path]:
    return {k: net_dir / f"{k}.sock" for k in SOCKETS}


def transparent_ports(policy: Policy, net_dir: Path) -> dict[int, Path]:
    """Ports named by explicit rules get their own transparent listener, so a program
    that ignores HTTP_PROXY can still reach ``api.test:8443`` (through the policy)."""
    ports = sorted({r.port for r in policy.rules if r.port is not None} - set(RESERVED_PORTS))
    return {p: net_dir / f"p{p}.sock" for p in ports[:MAX_PORTS]}


def _write_state(net_dir: Path, state: dict[str, Any]) -> None:
    tmp = net_dir / "proxyd.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, net_dir / "proxyd.json")


async def _serve(cfg: ProxyConfig, net_dir: Path, qemu: tuple[int, int | None],
                 notify: int | None) -> None:  # fmt: skip
    socks = socket_paths(net_dir)
    extra = transparent_ports(cfg.policy, net_dir)
    for p in (*socks.values(), *extra.values()):
        p.unlink(missing_ok=True)
    proxy = Proxy(cfg)
    servers = await proxy.serve(socks["http"], socks["tls"], socks["dns"], extra)
    if notify is not None:
        os.write(notify, b"ready\n")
        os.close(notify)
    try:
        while pid_alive(*qemu):
            await asyncio.sleep(0.5)
    finally:
        proxy.close()
        for s in servers:
            s.close()


def _worker(cfg: ProxyConfig, net_dir: Path, qemu: tuple[int, int | None],
            notify: int | None) -> None:  # fmt: skip
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        asyncio.run(_serve(cfg, net_dir, qemu, notify))
    finally:
        os._exit(0)


def supervise(run_dir: Path, qemu: tuple[int, int | None], raw: bytes) -> int:
    cfg = ProxyConfig.from_json(json.loads(raw))
    del raw
    net_dir = run_dir / "net"
    state: dict[str, Any] = {"pid": os.getpid(), "restarts": 0, "last_restart": None,
                             "worker": None, "started": time.time()}  # fmt: skip
    notify: int | None = 1
    delay = 0.2
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    while not stopping and pid_alive(*qemu):
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _worker(cfg, net_dir, qemu, notify)
        if notify is not None:
            os.close(notify)  # only the first worker says "ready"
            notify = None
        state["worker"] = pid
        _write_state(net_dir, state)
        while not stopping:
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if not pid_alive(*qemu):
                stopping = True
                break
            time.sleep(0.25)
        if stopping:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            break
        if not pid_alive(*qemu):
            break
        delay = 0.2 if time.monotonic() - started > 30 else min(delay * 2, 5.0)
        state["restarts"] += 1
        state["last_restart"] = time.time()
        state["worker"] = None
        _write_state(net_dir, state)
        print(f"proxyd: worker exited, restarting in {delay:.1f}s", file=sys.stderr, flush=True)
        time.sleep(delay)
    for p in (*socket_paths(net_dir).values(), *transparent_ports(cfg.policy, net_dir).values()):
        p.unlink(missing_ok=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m mvm.network.proxyd RUN_DIR QEMU_PID QEMU_START", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    qemu = (int(argv[1]), int(argv[2]) if argv[2] != "-" else None)
    raw = sys.stdin.buffer.read(MAX_CONFIG + 1)
    if len(raw) > MAX_CONFIG:
        return 2
    return supervise(run_dir, qemu, raw)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
