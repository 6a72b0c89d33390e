"""The VM record (``vm.json``) and how its live state is derived.

The record stores intent and identity; liveness is computed on read from
the QEMU pid (checked against its start time, so a recycled pid is never
mistaken for our VM) and the guest's exit status file.  That is what lets a
SIGKILLed QEMU show as ``crashed`` and a finished entrypoint as ``exited``.

Records are untrusted input (a crash, a full disk or a hand edit can damage
them): :meth:`VmRecord.load` checks every field's type, and a directory whose
record cannot be read is listed as a :class:`BrokenRecord`, whose QEMU is
still found through its pidfile and run directory, so it can be stopped.
"""

from __future__ import annotations

import contextlib
import enum
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mvm import paths
from mvm.errors import StateError
from mvm.state.atomic import read_json, write_json

SCHEMA = 1


class VmState(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    EXITED = "exited"  # the entrypoint finished; exit code recorded
    STOPPED = "stopped"  # stopped by `mvmctl down` / Ctrl-C
    CRASHED = "crashed"  # QEMU died without the guest reporting an exit
    BROKEN = "broken"  # vm.json is missing or unreadable; its QEMU may still run


class Mode(enum.StrEnum):
    ATTACHED = "attached"
    DETACHED = "detached"


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def owned_pid(run_dir: Path) -> int | None:
    """The hypervisor running for ``run_dir``, found without trusting a record."""
    from mvm.backends.qemu.machine import owned_pid as qemu_owned_pid

    return qemu_owned_pid(run_dir)


def pid_alive(pid: int | None, start: int | None) -> bool:
    if not pid:
        return False
    now = proc_start_time(pid)
    if now is None or (start is not None and now != start):
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@dataclass
class VmRecord:
    name: str
    mode: str = Mode.DETACHED.value
    source: str = ""  # project path or template:NAME
    image: str = ""  # image directory
    image_hash: str = ""
    revision: str = ""
    accessible: bool = False
    entrypoint_kind: str = "command"
    accel: str = "tcg"
    accel_reason: str = ""
    vcpus: int = 1
    memory_mib: int = 256
    ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    credentials: list[str] = field(default_factory=list)  # names only, never values
    owner_pid: int | None = None  # the mvmctl that is creating / attached to it
    owner_start: int | None = None
    pid: int | None = None
    pid_start: int | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    stopped: bool = False  # set by down/Ctrl-C before stopping
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
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise StateError(f"VM {name}: unsupported record schema {schema!r}")
        known = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key, value in values.items():
            if not _type_ok(_FIELD_TYPES[key], value):
                raise StateError(f"VM {name}: vm.json field {key!r} has an invalid value")
        if values.get("name") != name:
            raise StateError(f"VM {name}: vm.json names another VM")
        return cls(**values)

    def exit_code(self) -> int | None:
        """The entrypoint's exit code as reported by the guest, if any."""
        try:
            text = (self.dir / "status").read_text()
        except OSError:
            return None
        for line in reversed(text.splitlines()):
            if line.startswith("exit "):
                with contextlib.suppress(ValueError):
                    return int(line.split()[1])
        return None

    def qemu_alive(self) -> bool:
        return self.live_pid() is not None

    def live_pid(self) -> int | None:
        """QEMU's pid if it runs: the recorded one, else the one found in the run
        directory (an ``up`` killed before it saved the pid)."""
        if pid_alive(self.pid, self.pid_start):
            return self.pid
        if self.pid is None and not pid_alive(self.owner_pid, self.owner_start):
            found = owned_pid(self.dir)
            if found is not None:
                self.pid, self.pid_start = found, proc_start_time(found)
                return found
        return None

    def state(self) -> VmState:
        if self.live_pid() is not None:
            return VmState.RUNNING
        if self.pid is None:
            if pid_alive(self.owner_pid, self.owner_start):
                return VmState.CREATING
            return VmState.CRASHED
        if self.stopped:
            return VmState.STOPPED
        if self.exit_code() is not None:
            return VmState.EXITED
        return VmState.CRASHED

    def uptime(self) -> float | None:
        if self.started_at is None or not self.qemu_alive():
            return None
        return max(0.0, time.time() - self.started_at)

    def is_active(self) -> bool:
        return self.state() in (VmState.RUNNING, VmState.CREATING)

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
        return owned_pid(self.dir)

    def state(self) -> VmState:
        return VmState.BROKEN

    def is_active(self) -> bool:
        return self.live_pid() is not None


def load_entry(name: str) -> VmRecord | BrokenRecord:
    """The record of ``name``, or a :class:`BrokenRecord` saying why it cannot be read."""
    try:
        return VmRecord.load(name)
    except FileNotFoundError:
        return BrokenRecord(name, "vm.json is missing")
    except (StateError, TypeError, ValueError) as exc:
        return BrokenRecord(name, str(exc))


def list_entries() -> list[VmRecord | BrokenRecord]:
    """Every VM directory, readable or not (a broken one must not hide a running QEMU)."""
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


_FIELD_TYPES: dict[str, Any] = {
    "name": str, "mode": str, "source": str, "image": str, "image_hash": str, "revision": str,
    "accessible": bool, "entrypoint_kind": str, "accel": str, "accel_reason": str,
    "vcpus": int, "memory_mib": int, "ports": list, "volumes": list, "credentials": list,
    "owner_pid": (int, None), "owner_start": (int, None), "pid": (int, None),
    "pid_start": (int, None), "created_at": (int, float), "started_at": (int, float, None),
    "stopped": bool, "schema": int,
}  # fmt: skip


def _type_ok(expected: Any, value: Any) -> bool:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if value is None:
        return None in kinds
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, list):
        return list in kinds and all(isinstance(v, str) for v in value)
    if isinstance(value, int) and value < 0:
        return False
    return any(k is not None and isinstance(value, k) for k in kinds)
