"""One VM's network, from resolved settings to running parts.

:class:`NetworkPlan` is what :mod:`mvm.runtime.resolve` produces (policy,
bindings, extra upstream trust).  :func:`prepare` runs before the
hypervisor starts: the per-VM CA (when secrets are bound) and the guest's
network files (resolv.conf, hosts, proxy environment, placeholders, the CA
certificate, ``secrets-manifest.json``), packed into one small cpio archive
the backend hands the guest.  :func:`start_proxy` runs once the hypervisor
has a pid: the proxy daemon gets the configuration, values included, over a
pipe and says when its sockets listen.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mvm import paths, proc
from mvm.backends.spec import GuestForward, NetworkSpec, PortForward
from mvm.errors import NetworkError
from mvm.image import cpio
from mvm.network import DNS_PORT, GUEST_PROXY_IP, HTTP_PORT, PROXY_PORT, TLS_PORT
from mvm.network import bridge as bridge_mod
from mvm.network.bindings import Binding
from mvm.network.policy import Policy
from mvm.state.procs import pid_alive

READY_TIMEOUT = 20.0
NET_DIR = "net"
AUDIT_LOG = "egress.log"


@dataclass(frozen=True)
class NetworkPlan:
    policy: Policy
    bindings: tuple[Binding, ...] = field(default=(), repr=False)
    upstream_ca: Path | None = None
    secret_mode: str = "proxy"

    @property
    def proxy_bindings(self) -> tuple[Binding, ...]:
        """What the proxy injects: nothing in drive mode (the guest holds the values)."""
        return self.bindings if self.secret_mode == "proxy" else ()

    @property
    def uses_proxy(self) -> bool:
        """The proxy runs unless the VM has no egress at all or is plainly open."""
        if self.bindings:
            return True
        return self.policy.egress and not self.policy.open

    @property
    def plain_egress(self) -> bool:
        """`open` without bindings: QEMU user networking unrestricted (the old --net)."""
        return self.policy.open and not self.bindings

    def describe(self) -> dict[str, object]:
        """For the record and status: names only, never values."""
        return {
            "preset": self.policy.preset,
            "allow": self.policy.describe(),
            "add_hosts": dict(self.policy.hosts),
            "secrets": [b.manifest() | {"placeholder": None} for b in self.bindings],
            "proxy": self.uses_proxy,
        }


def net_dir(run_dir: Path) -> Path:
    return run_dir / NET_DIR


def bridge_command(sock: Path) -> tuple[str, ...]:
    return (sys.executable, "-I", "-S", str(Path(bridge_mod.__file__).resolve()), str(sock))


def guest_files(plan: NetworkPlan, ca_pem: bytes | None) -> bytes:
    """The guest's network files as a cpio archive (see guest/network.sh)."""
    proxy_url = f"http://{GUEST_PROXY_IP}:{PROXY_PORT}"
    names = sorted({r.pattern for r in plan.policy.all_rules() if not r.wildcard}
                   | set(plan.policy.hosts))  # fmt: skip
    hosts = "127.0.0.1 localhost\n::1 localhost\n" + "".join(
        f"{GUEST_PROXY_IP} {n}\n" for n in names
    )
    env = {
        "http_proxy": proxy_url, "https_proxy": proxy_url, "HTTP_PROXY": proxy_url,
        "HTTPS_PROXY": proxy_url, "no_proxy": "localhost,127.0.0.1",
        "NO_PROXY": "localhost,127.0.0.1",
    }  # fmt: skip
    if ca_pem is not None:
        bundle = "/run/mvm/net/ca-bundle.crt"
        env.update(SSL_CERT_FILE=bundle, REQUESTS_CA_BUNDLE=bundle, CURL_CA_BUNDLE=bundle,
                   NODE_EXTRA_CA_CERTS="/run/mvm/net/ca.pem")  # fmt: skip
    for b in plan.bindings:
        env[b.key] = b.placeholder
    env_sh = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    manifest = json.dumps({"secrets": [b.manifest() for b in plan.bindings]}, indent=1)
    entries = [
        cpio.file("resolv.conf", f"nameserver {GUEST_PROXY_IP}\noptions use-vc\n".encode()),
        cpio.file("hosts", hosts.encode()),
        cpio.file("env.sh", env_sh.encode()),
        cpio.file("secrets-manifest.json", manifest.encode() + b"\n"),
    ]
    if ca_pem is not None:
        entries.append(cpio.file("ca.pem", ca_pem))
    buf = io.BytesIO()
    cpio.write(buf, entries)
    return buf.getvalue()


def prepare(
    plan: NetworkPlan, run_dir: Path, vm: str, forwards: tuple[PortForward, ...],
    *, materialise: bool = True,
) -> NetworkSpec:  # fmt: skip
    """The VM's NetworkSpec; with ``materialise`` its CA is created."""
    if not plan.uses_proxy:
        return NetworkSpec(egress=plan.plain_egress, forwards=forwards)
    nd = net_dir(run_dir)
    ca_pem: bytes | None = None
    if plan.proxy_bindings:
        hosts = tuple(sorted({h for b in plan.proxy_bindings for h in b.hosts}))
        if materialise:
            paths.ensure_private_dir(nd)
            from mvm.network import ca as camod  # cryptography: only when a VM binds secrets

            ca_pem = camod.create(nd, vm, hosts).cert_pem
        else:
            ca_pem = b""
    from mvm.network.proxyd import socket_paths, transparent_ports  # a VM with egress only

    socks = socket_paths(nd)
    gf = (
        GuestForward(HTTP_PORT, bridge_command(socks["http"])),
        GuestForward(PROXY_PORT, bridge_command(socks["http"])),
        GuestForward(TLS_PORT, bridge_command(socks["tls"])),
        GuestForward(DNS_PORT, bridge_command(socks["dns"])),
        *(
            GuestForward(p, bridge_command(path))
            for p, path in transparent_ports(plan.policy, nd).items()
        ),
    )
    return NetworkSpec(egress=False, forwards=forwards, guest_ip=GUEST_PROXY_IP,
                       guest_forwards=gf, guest_config=guest_files(plan, ca_pem))  # fmt: skip


def start_proxy(plan: NetworkPlan, run_dir: Path, vm: str, qemu_pid: int,
                qemu_start: int | None) -> int:  # fmt: skip
    """Start the VM's proxy daemon; return its pid once its sockets listen."""
    from mvm.network.proxy import ProxyConfig

    nd = paths.ensure_private_dir(net_dir(run_dir))
    cfg = ProxyConfig(
        plan.policy, plan.proxy_bindings, nd, run_dir / AUDIT_LOG, plan.upstream_ca, vm
    )
    logfd = os.open(nd / "proxy.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                    0o600)  # fmt: skip
    try:
        popen = proc.spawn(
            [sys.executable, "-m", "mvm.network.proxyd", str(run_dir), str(qemu_pid),
             str(qemu_start) if qemu_start is not None else "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logfd, cwd=Path("/"),
            error=NetworkError, what="starting the egress proxy",
        )  # fmt: skip
    finally:
        os.close(logfd)
    assert popen.stdin is not None and popen.stdout is not None
    try:
        popen.stdin.write(json.dumps(cfg.to_json()).encode())
        popen.stdin.close()
        ready, _, _ = select.select([popen.stdout], [], [], READY_TIMEOUT)
        line = popen.stdout.readline() if ready else b""
    except OSError:
        line = b""
    finally:
        popen.stdout.close()
    if line.strip() != b"ready":
        with contextlib.suppress(OSError):
            popen.kill()
        popen.wait(5)
        tail = ""
        with contextlib.suppress(OSError):
            tail = (nd / "proxy.log").read_text(errors="replace")[-1000:]
        raise NetworkError("the egress proxy did not start", log_tail=tail or None)
    return popen.pid


def proxy_state(run_dir: Path) -> dict[str, object] | None:
    """``{"running": bool, "restarts": n}`` for a VM with a proxy, else None."""
    f = net_dir(run_dir) / "proxyd.json"
    try:
        state = json.loads(f.read_bytes()[:4096])
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    pid, worker = state.get("pid"), state.get("worker")
    alive = isinstance(pid, int) and pid_alive(pid, None)
    serving = alive and isinstance(worker, int) and pid_alive(worker, None)
    return {"running": bool(serving), "restarts": state.get("restarts", 0)}
