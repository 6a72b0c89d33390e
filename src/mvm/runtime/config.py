"""Run-time settings for one VM (the library counterpart of the CLI flags).

Resolution order for each setting is CLI/API > mvm.toml > default; the
record keeps the resolved values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mvm.backends.qemu.argv import PortForward
from mvm.config.loader import PORT_RE
from mvm.errors import ConfigError


@dataclass
class RunConfig:
    name: str | None = None
    cpus: int | None = None
    memory_mib: int | None = None
    attached: bool = False
    ports: list[str] = field(default_factory=list)
    network: bool | None = None


def parse_port(spec: str) -> PortForward:
    """``HOST:GUEST[/proto]`` or ``PORT`` → PortForward (host bound to 127.0.0.1)."""
    m = PORT_RE.match(spec)
    if not m:
        raise ConfigError(f"invalid port {spec!r}: use HOST:GUEST, e.g. 8080:80")
    guest = int(m.group(2))
    host = int(m.group(1)) if m.group(1) else guest
    for p in (host, guest):
        if not 1 <= p <= 65535:
            raise ConfigError(f"invalid port {spec!r}: ports are 1-65535")
    return PortForward(host, guest, m.group(3) or "tcp")
