"""The cluster as a library: what ``mvmctl cluster`` and ``mvm.cluster.Sandbox`` call.

Each function connects this process to the cluster (once), finds the
controller actor and asks it; the arguments are checked here first so a bad
one is a ``ConfigError`` before anything reaches Ray.  ``--secret`` values
are resolved here (from this process's environment or files, as ``mvmctl up``
does) and travel sealed: see :mod:`mvm.cluster.controller`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mvm import paths
from mvm.cluster import engine
from mvm.cluster.worker import Sealed, check_ports
from mvm.errors import ConfigError, MvmError


def _controller(address: str | None) -> tuple[Any, Any]:
    ray = engine.connect(address)
    return ray, engine.controller(ray)


def seal_secrets(secrets: Sequence[str]) -> Sealed | None:
    """``--secret`` arguments resolved now, as ``KEY=VALUE:HOSTS[:HEADER]``."""
    if not secrets:
        return None
    from mvm.network.bindings import parse

    out = []
    for text in secrets:
        b = parse(text, dict(os.environ))
        sealed = f"{b.key}={b.value}:{','.join(b.hosts)}" + (f":{b.header}" if b.header else "")
        # the worker parses this text again: a value with ':' next to a host without a dot
        # could split elsewhere (part of the value sent to another host), so refuse that
        try:
            back = parse(sealed, {})
        except MvmError:
            back = None
        if back is None or (back.value, back.hosts, back.header) != (b.value, b.hosts, b.header):
            raise ConfigError(
                f"secret {b.key}: its value contains ':' and cannot be bound to "
                f"{','.join(b.hosts)} unambiguously across the cluster",
                hint="bind it to a fully qualified host name (with a dot)",
            )
        out.append(sealed)
    return Sealed(out)


def up(template: str, *, replicas: int = 1, cpus: int | None = None, mem: int | None = None,
       ports: Sequence[str] = (), spread: bool = False, accel: str | None = None,
       secrets: Sequence[str] = (), network: str | None = None,
       allow: Sequence[str] = (), address: str | None = None,
       timeout: float = engine.START_TIMEOUT + 60) -> list[dict[str, Any]]:  # fmt: skip
    """Place ``replicas`` VMs of ``template`` and start them; their records."""
    paths.validate_name(template, "template name")
    for what, v, hi in (("replicas", replicas, 1000), ("cpus", cpus, 64), ("mem", mem, 1 << 20)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi):
            raise ConfigError(f"{what} must be an integer from 1 to {hi}")
    check_ports(list(ports))
    from mvm.network.policy import PRESETS

    if network is not None and network not in PRESETS:
        raise ConfigError(f"invalid network {network!r}: use one of {', '.join(PRESETS)}")
    sealed = seal_secrets(list(secrets))
    ray, ctl = _controller(address)
    ref = ctl.up.remote(
        template, replicas, cpus, mem, list(ports), spread, accel, sealed, network, list(allow)
    )
    out: list[dict[str, Any]] = engine.get(ray, ref, timeout, f"cluster up {template}")
    return out


def ls(address: str | None = None) -> list[dict[str, Any]]:
    ray, ctl = _controller(address)
    out: list[dict[str, Any]] = engine.get(ray, ctl.ls.remote(), 120, "cluster ls")
    return out


def hosts(address: str | None = None) -> list[dict[str, Any]]:
    ray, ctl = _controller(address)
    out: list[dict[str, Any]] = engine.get(ray, ctl.hosts.remote(), 120, "cluster hosts")
    return out


def down(name: str | None = None, *, template: str | None = None,
         address: str | None = None) -> list[str]:  # fmt: skip
    if name is not None and template is not None:
        raise ConfigError("give a VM name or --template, not both")
    if name is None and template is None:
        raise ConfigError("give a VM name or --template", hint="`mvmctl cluster ls` lists them")
    if name is not None:
        paths.validate_name(name, "VM name")
    if template is not None:
        paths.validate_name(template, "template name")
    ray, ctl = _controller(address)
    out: list[str] = engine.get(ray, ctl.down.remote(name, template), 300, "cluster down")
    return out


def exec_in(name: str, argv: list[str], *, env: dict[str, str] | None = None,
            cwd: str | None = None, input: bytes | None = None, timeout: float = 120,
            address: str | None = None) -> tuple[int, bytes, bytes, int]:  # fmt: skip
    ray, ctl = _controller(address)
    ref = ctl.exec.remote(name, argv, env, cwd, input, timeout)
    out: tuple[int, bytes, bytes, int] = engine.get(ray, ref, timeout + 60, f"exec in {name}")
    return out


def events(address: str | None = None) -> list[str]:
    ray, ctl = _controller(address)
    out: list[str] = engine.get(ray, ctl.events.remote(), 60, "cluster events")
    return out
