"""The per-host mvm worker: a Ray actor pinned to its node, calling the ordinary
runtime in that node's ``MVM_HOME``.

One worker per host (named ``mvm-worker-HOST``, scheduled on the one node
that advertises the custom resource ``mvm-host-HOST``).  Everything it does
is what ``mvmctl`` does on that host: templates come from the S3 registry
through :func:`mvm.templates.sync.pull` (checksums and the trust policy of
that host, as for ``mvmctl template pull``), VMs start through
:func:`mvm.runtime.vm.up` (restored from the template's snapshot when it
has one) and stop through :func:`mvm.runtime.vm.down` — so the host's own
``mvmctl ls`` shows them.

Methods return ``("ok", value)`` or ``("err", kind, message, hint)`` rather
than raising: an ``MvmError`` crossing Ray would arrive as a ``RayTaskError``
with a remote traceback, and the CLI promises one line.  This class does not
import Ray: it is wrapped by :mod:`mvm.cluster.engine`, so it is also usable
(and tested) as a plain object.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from mvm.errors import ClusterError, ConfigError, MvmError, NotFoundError

P = ParamSpec("P")
T = TypeVar("T")

# cluster VMs are named PREFIX-TEMPLATE-N so a worker (and `cluster down`) can tell them
PREFIX = "cl"
ZERO_PORT_RE = re.compile(r"(?:(\d{1,3}(?:\.\d{1,3}){3}):)?0:(\d{1,5})(/(?:tcp|udp))?")

Result = tuple[Any, ...]
PULL_FRESH = 10.0  # seconds a pull counts as current (one `cluster up` asks many times)


class Sealed:
    """Secret strings that must not show up when printed, logged or listed: the
    values travel once, from the caller to the worker that starts the VM."""

    __slots__ = ("_values",)

    def __init__(self, values: Sequence[str] = ()) -> None:
        self._values = tuple(values)

    def reveal(self) -> list[str]:
        return list(self._values)

    def __bool__(self) -> bool:
        return bool(self._values)

    def __repr__(self) -> str:
        return f"<{len(self._values)} sealed secret(s)>"

    __str__ = __repr__

    def __getstate__(self) -> tuple[str, ...]:
        return self._values

    def __setstate__(self, state: tuple[str, ...]) -> None:
        self._values = state


def answer(fn: Callable[P, T]) -> Callable[P, Result]:
    """Run ``fn``; an ``MvmError`` becomes ``("err", kind, message, hint)``."""

    @functools.wraps(fn)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Result:
        try:
            return ("ok", fn(*args, **kwargs))
        except MvmError as exc:
            return ("err", type(exc).__name__, exc.message, exc.hint)
        except OSError as exc:
            return ("err", "OSError", f"{exc.strerror or exc}", None)

    return wrapped


def unwrap(result: Result, where: str) -> Any:
    """The value of a worker answer, or the error it carried as a ``ClusterError``."""
    if result[0] == "ok":
        return result[1]
    _, kind, message, hint = result
    cls: type[MvmError] = NotFoundError if kind == "NotFoundError" else ClusterError
    raise cls(f"{where}: {message}", hint=hint)


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on this host now (QEMU binds it a moment later)."""
    with socket.socket() as s:
        s.bind((address if address != "0.0.0.0" else "", 0))
        return int(s.getsockname()[1])


def resolve_ports(ports: Sequence[str]) -> list[str]:
    """``-p`` values with ``0:GUEST`` replaced by a free host port of this host."""
    from mvm.runtime.config import parse_port

    out = []
    for p in ports:
        m = ZERO_PORT_RE.fullmatch(p)
        if m:
            addr, guest, proto = m.group(1), m.group(2), m.group(3) or ""
            p = f"{addr + ':' if addr else ''}{free_port(addr or '127.0.0.1')}:{guest}{proto}"
        parse_port(p)
        out.append(p)
    return out


def check_ports(ports: Sequence[str]) -> None:
    """Validate ``-p`` values (``0`` as the host port allowed) before anything starts."""
    from mvm.runtime.config import parse_port

    for p in ports:
        m = ZERO_PORT_RE.fullmatch(p)
        if not m:
            parse_port(p)
            continue
        stand_in = f"{m.group(1) + ':' if m.group(1) else ''}1:{m.group(2)}{m.group(3) or ''}"
        try:
            parse_port(stand_in)
        except ConfigError as exc:  # the error names what the user typed, not the stand-in
            raise ConfigError(exc.message.replace(repr(stand_in), repr(p)), hint=exc.hint) from None


class HostWorker:
    """mvm on one host: templates, VMs, capacity (see the module doc)."""

    def __init__(self, host_id: str, resources: dict[str, float], node_ip: str) -> None:
        os.umask(0o077)  # as mvmctl: everything under MVM_HOME is private
        self.host_id, self.node_ip = host_id, node_ip
        self.mem_mib, self.vcpus, self.accel = host_capacity(resources)
        self._pull_locks: dict[str, threading.Lock] = {}
        self._pulled: dict[str, float] = {}  # template → when it was last made current
        self._guard = threading.Lock()

    # -- what this host has --

    def _vms(self) -> list[dict[str, Any]]:
        from mvm.runtime.vm import list_vms

        out = []
        for vm in list_vms():
            info = vm.info()
            source = str(info.get("source") or "")
            out.append({
                "name": vm.name, "state": info["state"], "host": self.host_id,
                "template": source.split(":", 1)[1] if source.startswith("template:") else None,
                "memory_mib": info.get("memory_mib") or 0, "vcpus": info.get("vcpus") or 0,
                "ports": [self._where(p) for p in info.get("ports") or []],
                "cluster": vm.name.startswith(PREFIX + "-"),
            })  # fmt: skip
        return out

    def _where(self, port: Any) -> str:
        """``host:port`` a client reaches a forwarded port at (``ADDR:HOST:GUEST`` → …)."""
        text = str(port)
        parts = text.split("/")[0].split(":")
        if len(parts) == 3:
            addr, host, guest = parts
        elif len(parts) == 2:
            addr, (host, guest) = "127.0.0.1", parts
        else:
            return text
        shown = self.node_ip if addr in ("0.0.0.0", "") else addr
        return f"{shown}:{host}->{guest}"

    @answer
    def info(self) -> dict[str, Any]:
        from mvm import paths
        from mvm.templates import store

        vms = self._vms()
        active = [v for v in vms if v["state"] not in ("exited", "stopped", "crashed")]
        cached = sorted(t.name for t in store.list_templates() if store.current_id(t.name))
        return {
            "id": self.host_id, "node_ip": self.node_ip, "home": str(paths.home()),
            "mem_mib": self.mem_mib, "vcpus": self.vcpus, "accel": self.accel,
            "used_mem_mib": sum(int(v["memory_mib"]) for v in active),
            "used_vcpus": sum(int(v["vcpus"]) for v in active),
            "templates": cached, "vms": vms,
        }  # fmt: skip

    # -- templates --

    def _lock(self, template: str) -> threading.Lock:
        with self._guard:
            return self._pull_locks.setdefault(template, threading.Lock())

    @answer
    def prepare(self, template: str) -> dict[str, int]:
        """Make ``template`` current here from the registry (a no-op transfer when this
        host has the registry's current revision); its (cpus, memory) defaults."""
        self._pull(template)
        from mvm.templates import store

        cpus, mem = store.template_defaults(template)
        return {"cpus": cpus, "mem_mib": mem}

    def _pull(self, template: str) -> None:
        from mvm import paths
        from mvm.log import get_logger
        from mvm.templates import store, sync
        from mvm.templates.registry import from_env

        paths.validate_name(template, "template name")
        with self._lock(template):
            if time.monotonic() - self._pulled.get(template, -PULL_FRESH) < PULL_FRESH:
                return  # the replicas of one `cluster up` pull once per host
            try:
                registry = from_env()
                try:
                    sync.pull(template, registry)
                finally:
                    registry.close()
            except MvmError as exc:
                if not (store.exists(template) and store.current_id(template)):
                    raise
                # the registry is unreachable or lacks it: this host's verified copy runs
                get_logger(__name__).warning("%s: using the local %s: %s", self.host_id,
                                             template, exc.message)  # fmt: skip
            self._pulled[template] = time.monotonic()

    # -- VMs --

    @answer
    def start(self, name: str, template: str, cpus: int | None, mem_mib: int | None,
              ports: Sequence[str], secrets: Sealed | None = None,
              network_preset: str | None = None,
              network_allow: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
        """Start VM ``name`` from ``template`` (pulled first) as ``mvmctl up --template``."""
        from mvm import paths
        from mvm.runtime.config import RunConfig
        from mvm.runtime.vm import up

        paths.validate_name(name, "VM name")
        self._pull(template)
        run = RunConfig(name=name, cpus=cpus, memory_mib=mem_mib, ports=resolve_ports(ports),
                        secrets=secrets.reveal() if secrets else [],
                        network_preset=network_preset, network_allow=list(network_allow),
                        forward_host_credentials=False)  # fmt: skip
        vm = up(f"template:{template}", run)
        return next(v for v in self._vms() if v["name"] == vm.name)

    @answer
    def stop(self, name: str) -> bool:
        """``mvmctl down NAME`` on this host; False if there was no such VM."""
        from mvm.runtime.vm import down

        try:
            down(name)
        except NotFoundError:
            return False
        return True

    @answer
    def ls(self) -> list[dict[str, Any]]:
        return self._vms()

    @answer
    def exec(self, name: str, argv: list[str], env: dict[str, str] | None, cwd: str | None,
             input: bytes | None, timeout: float) -> tuple[int, bytes, bytes, int]:  # fmt: skip
        """Run ``argv`` in VM ``name`` through its agent (as ``mvm.Sandbox.exec``)."""
        from mvm.sdk.sandbox import Sandbox

        r = Sandbox(name, timeout=timeout).exec(argv, env=env, cwd=cwd, input=input)
        return (r.exit_code, r.stdout_bytes, r.stderr_bytes, r.signal)

    @answer
    def ping(self) -> str:
        return self.host_id


def host_capacity(resources: dict[str, float]) -> tuple[int, int, str]:
    """(VM memory MiB, vCPUs, accelerator) a node advertises through its custom
    resources; a node that advertises none offers most of this machine."""
    from mvm.cluster.engine import ACCEL_PREFIX, MEM_RESOURCE, VCPU_RESOURCE

    mem = int(resources.get(MEM_RESOURCE, 0))
    vcpus = int(resources.get(VCPU_RESOURCE, 0))
    accel = next((k[len(ACCEL_PREFIX) :] for k in resources if k.startswith(ACCEL_PREFIX)), "")
    if not mem:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open("/proc/meminfo") as f:
                total_kib = int(f.readline().split()[1])
            mem = total_kib * 3 // 4 // 1024
    if not vcpus:
        vcpus = os.cpu_count() or 1
    if accel not in ("kvm", "tcg"):  # not advertised: what mvm would use here (probe cached)
        from mvm.runtime.doctor import report

        with contextlib.suppress(MvmError, OSError):
            accel = str(report().get("accelerator", ""))
        accel = accel if accel in ("kvm", "tcg") else "tcg"
    if mem <= 0:
        raise ConfigError("cannot tell how much memory this host has for VMs")
    return mem, vcpus, accel
