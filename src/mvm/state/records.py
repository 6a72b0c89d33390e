"""The VM record (``vm.json``) and how its live state is derived.

The record stores intent and identity: the persisted *phase* of the VM's
life (creating → running ⇄ paused → stopping), which mvmctl owns it, and
the hypervisor's pid with its start time.  The state users see is derived
on every read from the phase, whether the hypervisor still runs (the pid
checked against its start time, so a recycled pid is never mistaken for
ours) and the guest's exit status: a SIGKILLed QEMU shows as ``crashed``, a
finished entrypoint as ``exited``, a ``down`` in progress as ``stopping``.

Records are untrusted input (a crash, a full disk or a hand edit can damage
them): :meth:`VmRecord.load` checks every field's type, and a directory whose
record cannot be read is listed as a :class:`BrokenRecord`, whose hypervisor
is still found through its run directory, so it can be stopped.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mvm import paths
from mvm.errors import StateError
from mvm.state.atomic import read_json, write_json
from mvm.state.procs import pid_alive, proc_start_time

SCHEMA = 2


class VmState(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"  # `mvmctl pause` (a full disk shows as "paused (disk full)")
    STOPPING = "stopping"  # `down` or Ctrl-C is stopping it
    EXITED = "exited"  # the entrypoint finished; exit code recorded
    STOPPED = "stopped"  # stopped by `mvmctl down` / Ctrl-C
    CRASHED = "crashed"  # the hypervisor died without the guest reporting an exit
    BROKEN = "broken"  # vm.json is missing or unreadable; its hypervisor may still run


class Phase(enum.StrEnum):
    """What mvmctl last did to the VM (persisted); the state is derived from it."""

    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"


ACTIVE = (VmState.CREATING, VmState.RUNNING, VmState.PAUSED, VmState.STOPPING)


class Mode(enum.StrEnum):
    ATTACHED = "attached"
    DETACHED = "detached"


@dataclass
class VmRecord:
    name: str
    phase: str = Phase.CREATING.value
    mode: str = Mode.DETACHED.value
    hypervisor: str = "qemu"
    source: str = ""  # project path or template:NAME
    image: str = ""  # image directory
    image_hash: str = ""
    revision: str = ""
    accessible: bool = False
    entrypoint_kind: str = "command"
    accel: str = "tcg"
    accel_reason: str = ""
    hypervisor_reason: str = ""  # why this hypervisor (the automatic choice's reason)
    vcpus: int = 1
    memory_mib: int = 256
    ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    credentials: list[str] = field(default_factory=list)  # names only, never values
    network: list[str] = field(default_factory=list)  # preset, rules, secret names -> hosts
    forwards: list[str] = field(default_factory=list)  # added by `mvmctl forward --detach`
    proxy_pid: int | None = None  # the egress proxy's supervisor
    settings: dict[str, str] = field(default_factory=dict)  # setting -> where it came from
    owner_pid: int | None = None  # the mvmctl that is creating / attached to it
    owner_start: int | None = None
    pid: int | None = None
    pid_start: int | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    boot: str = "cold"  # "cold" or "restored" (from a snapshot: docs/snapshots.md)
    snapshot: str = ""  # the snapshot directory a restored VM maps (kept while it runs)
    schema: int = SCHEMA

    @property
    def dir(self) -> Path:
        return paths.vm_dir(self.name)

    def save(self) -> None:
        write_json(self.dir / "vm.json", asdict(self))

    @classmethod
    def load(cls, name: str) -> VmRecord:
        path = paths.vm_dir(name) / "vm.json"
        data = read_json(path)
        if isinstance(data, dict) and data.get("schema") == 1:
            data = _migrate_v1(data)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise StateError(f"VM {name}: unsupported record schema {schema!r}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key, value in values.items():
            if not _type_ok(_FIELD_TYPES[key], value):
                raise StateError(f"VM {name}: vm.json field {key!r} has an invalid value")
        if values.get("name") != name:
            raise StateError(f"VM {name}: vm.json names another VM")
        if values.get("phase", Phase.CREATING.value) not in {p.value for p in Phase}:
            raise StateError(f"VM {name}: vm.json has an unknown phase")
        return cls(**values)

    # -- liveness ------------------------------------------------------------------------------

    def owner_alive(self) -> bool:
        return pid_alive(self.owner_pid, self.owner_start)

    def live_pid(self) -> int | None:
        """The hypervisor's pid if it runs: the recorded one, else the one found in the
        run directory (an ``up`` killed before it saved the pid)."""
        if pid_alive(self.pid, self.pid_start):
            return self.pid
        if self.pid is None and not self.owner_alive():
            found = _owned_pid(self.hypervisor, self.dir)
            if found is not None:
                self.pid, self.pid_start = found, proc_start_time(found)
                return found
        return None

    def exit_code(self) -> int | None:
        """The entrypoint's exit code as reported by the guest, if any."""
        from mvm import channels

        return channels.exit_code(_channels(self.hypervisor, self.dir))

    def state(self) -> VmState:
        phase = self.phase
        if phase == Phase.CREATING.value and self.owner_alive():
            return VmState.CREATING
        if self.live_pid() is not None:
            if phase == Phase.STOPPING.value:
                return VmState.STOPPING
            if phase == Phase.PAUSED.value:
                return VmState.PAUSED
            return VmState.RUNNING
        if phase == Phase.STOPPING.value:
            return VmState.STOPPED
        if self.pid is not None and self.exit_code() is not None:
            return VmState.EXITED
        return VmState.CRASHED

    def uptime(self) -> float | None:
        if self.started_at is None or self.live_pid() is None:
            return None
        return max(0.0, time.time() - self.started_at)

    def is_active(self) -> bool:
        return self.state() in ACTIVE

    def own(self) -> None:
        self.owner_pid = os.getpid()
        self.owner_start = proc_start_time(self.owner_pid)


@dataclass
class BrokenRecord:
    """A VM directory whose ``vm.json`` cannot be used (missing, corrupt, edited)."""

    name: str
    reason: str

    @property
    def dir(self) -> Path:
        return paths.vm_dir(self.name)

    def live_pid(self) -> int | None:
        # the record is gone, so try every backend that can find its process
        return _owned_pid("qemu", self.dir)

    def state(self) -> VmState:
        return VmState.BROKEN

    def is_active(self) -> bool:
        return self.live_pid() is not None


Entry = VmRecord | BrokenRecord


def _owned_pid(hypervisor: str, run_dir: Path) -> int | None:
    from mvm.backends.base import get_backend
    from mvm.errors import MvmError

    try:
        return get_backend(hypervisor).owned_pid(run_dir)
    except MvmError:
        return None


def _channels(hypervisor: str, run_dir: Path) -> Any:
    from mvm.backends.base import get_backend

    return get_backend(hypervisor).channels(run_dir)


def load_entry(name: str) -> Entry:
    """The record of ``name``, or a :class:`BrokenRecord` saying why it cannot be read."""
    try:
        return VmRecord.load(name)
    except FileNotFoundError:
        return BrokenRecord(name, "vm.json is missing")
    except (StateError, TypeError, ValueError) as exc:
        return BrokenRecord(name, str(exc))


def list_entries() -> list[Entry]:
    """Every VM directory, readable or not (a broken one must not hide a running VM)."""
    root = paths.vms_dir()
    if not root.is_dir():
        return []
    return [
        load_entry(d.name)
        for d in sorted(root.iterdir())
        if d.is_dir() and paths.NAME_RE.fullmatch(d.name)
    ]


def list_records() -> list[VmRecord]:
    return [r for r in list_entries() if isinstance(r, VmRecord)]


def _migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 had no phase (``stopped`` meant "down was called")."""
    out = {k: v for k, v in data.items() if k != "stopped"}
    if data.get("stopped") is True:
        out["phase"] = Phase.STOPPING.value
    else:
        out["phase"] = Phase.RUNNING.value if data.get("pid") else Phase.CREATING.value
    out["schema"] = SCHEMA
    return out


_FIELD_TYPES: dict[str, Any] = {
    "name": str, "phase": str, "mode": str, "hypervisor": str, "source": str, "image": str,
    "image_hash": str, "revision": str, "accessible": bool, "entrypoint_kind": str,
    "accel": str, "accel_reason": str, "hypervisor_reason": str, "vcpus": int,
    "memory_mib": int, "ports": list,
    "volumes": list, "credentials": list, "network": list, "forwards": list,
    "proxy_pid": (int, None), "settings": dict, "owner_pid": (int, None),
    "owner_start": (int, None), "pid": (int, None), "pid_start": (int, None),
    "created_at": (int, float), "started_at": (int, float, None), "schema": int,
    "boot": str, "snapshot": str,
}  # fmt: skip


def _type_ok(expected: Any, value: Any) -> bool:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if value is None:
        return None in kinds
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, list):
        return list in kinds and all(isinstance(v, str) for v in value)
    if isinstance(value, dict):
        return dict in kinds and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    if isinstance(value, int | float) and value < 0:
        return False
    return any(k is not None and isinstance(value, k) for k in kinds)
