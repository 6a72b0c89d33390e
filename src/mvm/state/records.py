"""The VM record (``vm.json``) and how its live state is derived.

The record stores intent and identity; liveness is computed on read from
the QEMU pid (checked against its start time, so a recycled pid is never
mistaken for our VM) and the guest's exit status file.  That is what lets a
SIGKILLed QEMU show as ``crashed`` and a finished entrypoint as ``exited``.
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
        data: dict[str, Any] = read_json(paths.vm_dir(name) / "vm.json")
        if data.get("schema") != SCHEMA:
            raise StateError(f"VM {name}: unsupported record schema {data.get('schema')}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

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
        return pid_alive(self.pid, self.pid_start)

    def state(self) -> VmState:
        if self.qemu_alive():
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


def list_records() -> list[VmRecord]:
    root = paths.vms_dir()
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and (d / "vm.json").is_file() and paths.NAME_RE.match(d.name):
            with contextlib.suppress(StateError, FileNotFoundError):
                out.append(VmRecord.load(d.name))
    return out
