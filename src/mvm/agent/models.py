"""Status and directory listings from the guest agent, validated into
dataclasses (not on ``mvmctl exec``'s path, see :mod:`mvm.agent`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mvm.agent.protocol import _int, _str
from mvm.errors import ProtocolError

HEALTH = ("ready", "starting", "unhealthy", "down", "none")
STATES = ("running", "restarting", "exited", "starting", "")


@dataclass(frozen=True)
class ServiceStatus:
    """One service as the guest reports it: ``state`` from /init's supervisor
    (running, restarting, exited), ``health`` from its readiness check (ready,
    starting, unhealthy, down, or none when it declares no check)."""

    name: str
    state: str
    pid: int
    restarts: int
    health: str
    rc: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "pid": self.pid,
                "restarts": self.restarts, "health": self.health, "rc": self.rc}  # fmt: skip


@dataclass(frozen=True)
class GuestStatus:
    uptime: float
    sealed: bool
    services: tuple[ServiceStatus, ...]

    @classmethod
    def parse(cls, msg: dict[str, Any]) -> GuestStatus:
        raw = msg.get("services")
        if not isinstance(raw, list) or len(raw) > 256:
            raise ProtocolError("the guest agent sent a bad service list")
        services = []
        for s in raw:
            if not isinstance(s, dict):
                raise ProtocolError("the guest agent sent a bad service entry")
            state, health = _str(s, "state", 32), _str(s, "health", 32)
            if state not in STATES or health not in HEALTH:
                raise ProtocolError("the guest agent sent an unknown service state")
            rc = _int(s, "rc", 0, 255) if "rc" in s else None
            services.append(ServiceStatus(
                _str(s, "name", 64), state or "unknown", _int(s, "pid", 0, 1 << 22),
                _int(s, "restarts", 0, 1 << 30), health, rc))  # fmt: skip
        up = msg.get("uptime", 0)
        if isinstance(up, bool) or not isinstance(up, int | float) or not 0 <= up < 1e10:
            raise ProtocolError("the guest agent sent a bad uptime")
        sealed = msg.get("sealed")
        if not isinstance(sealed, bool):
            raise ProtocolError("the guest agent's status lacks 'sealed'")
        return cls(float(up), sealed, tuple(sorted(services, key=lambda s: s.name)))


@dataclass(frozen=True)
class Entry:
    name: str
    type: str
    mode: int
    size: int

    @classmethod
    def parse(cls, e: Any) -> Entry:
        if not isinstance(e, dict):
            raise ProtocolError("the guest agent sent a bad directory entry")
        name = _str(e, "name")
        if not name or "/" in name or name in (".", ".."):
            raise ProtocolError("the guest agent sent a bad file name")
        typ = _str(e, "type", 16)
        if typ not in ("file", "dir", "symlink", "other"):
            raise ProtocolError("the guest agent sent a bad file type")
        return cls(name, typ, _int(e, "mode", 0, 0o7777), _int(e, "size", 0, 1 << 62))
