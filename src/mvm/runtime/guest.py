"""The library API to a running VM's guest agent: connect, exec, files, status.

Connecting goes through the VM's sidecar (:mod:`mvm.runtime.sidecar`),
started here on first use.  exec, console and the file verbs are refused on
the host for a sealed VM (the record's ``accessible``, from the image's
``revision.json``); the guest's agent refuses them too (a sealed image's agent
has no exec or file service).

This module is on ``mvmctl exec``'s import path: it imports only the state
records and the agent client, nothing that builds or launches VMs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mvm import paths
from mvm.agent.client import AgentClient
from mvm.agent.protocol import Entry, ExecResult, GuestStatus
from mvm.errors import AgentError, ConflictError, MvmError, NotFoundError
from mvm.runtime import lifecycle
from mvm.runtime.sidecar import SOCKET
from mvm.state.records import VmRecord, load_entry

SIDECAR_START_TIMEOUT = 20.0
ACCESS_VERBS = ("exec", "console", "cp")


def _record(name: str, verb: str) -> VmRecord:
    paths.validate_name(name, "VM name")
    if not paths.vm_dir(name).is_dir():
        raise NotFoundError(f"no VM named {name!r}", hint="`mvmctl ls` lists VMs")
    entry = load_entry(name)
    lifecycle.require(entry, verb)
    assert isinstance(entry, VmRecord)  # a broken record is never running
    if verb in ACCESS_VERBS and not entry.accessible:
        raise ConflictError(
            f"cannot {verb} VM {name}: its image is sealed (no exec, console or files)",
            hint="build with dev = true in mvm.toml for an accessible image",
        )
    return entry


def _try_connect(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return s
    except OSError:
        s.close()
        return None


def _start_sidecar(run_dir: Path) -> None:
    from mvm.proc import child_env

    log = os.open(run_dir / "sidecar.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                  0o600)  # fmt: skip
    try:
        subprocess.Popen(
            [sys.executable, "-m", "mvm.runtime.sidecar", str(run_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            close_fds=True, env=child_env({"PYTHONPATH": os.pathsep.join(sys.path)}),
        )  # fmt: skip
    finally:
        os.close(log)


def connect(name: str, *, verb: str = "agent", timeout: float = 60.0) -> AgentClient:
    """A client of VM ``name``'s agent (waits up to ``timeout`` for the guest)."""
    record = _record(name, verb)
    run_dir = record.dir
    path = run_dir / SOCKET
    deadline = time.monotonic() + timeout
    sock = _try_connect(path)
    if sock is None:
        _start_sidecar(run_dir)
        end = time.monotonic() + min(SIDECAR_START_TIMEOUT, timeout)
        while sock is None:
            if time.monotonic() > end:
                raise AgentError(f"the agent sidecar of VM {name} did not start",
                                 hint=f"see {run_dir / 'sidecar.log'}")  # fmt: skip
            time.sleep(0.01)
            sock = _try_connect(path)
    try:
        client = AgentClient(sock, timeout=max(1.0, deadline - time.monotonic()))
    except AgentError as exc:
        sock.close()
        raise AgentError(f"VM {name}: the guest agent did not answer ({exc.message})") from exc
    if verb in ACCESS_VERBS and client.hello.sealed:
        client.close()
        raise ConflictError(f"cannot {verb} VM {name}: its guest agent is sealed")
    return client


def exec(name: str, argv: list[str], *, env: dict[str, str] | None = None,
         cwd: str | None = None, input: bytes | None = None,
         timeout: float | None = None) -> ExecResult:  # fmt: skip
    """Run ``argv`` in VM ``name`` as its entrypoint uid; stdout and stderr apart."""
    if not argv:
        raise AgentError("exec needs a command")
    with connect(name, verb="exec") as client:
        return client.exec(argv, env=env, cwd=cwd, input=input, timeout=timeout)


def status(name: str, timeout: float = 30.0) -> GuestStatus:
    """The guest's services, their state and health."""
    with connect(name, verb="agent", timeout=timeout) as client:
        return client.status(timeout)


def service_health(name: str, timeout: float = 5.0) -> tuple[list[dict[str, Any]] | None, str]:
    """Each service's state and health for ``status``, and what the agent said:
    ``(services, "")``, or ``(None, why)`` when the agent cannot be asked (the VM
    is not running, still booting, or its image predates the agent)."""
    try:
        st = status(name, timeout=timeout)
    except MvmError as exc:
        return None, exc.message
    return [s.to_json() for s in st.services], ""


def read_file(name: str, path: str) -> tuple[bytes, int]:
    with connect(name, verb="cp") as client:
        return client.read_file(path)


def write_file(name: str, path: str, data: bytes, mode: int = 0o644) -> int:
    with connect(name, verb="cp") as client:
        return client.write_file(path, data, mode)


def list_dir(name: str, path: str) -> list[Entry]:
    with connect(name, verb="cp") as client:
        return client.list_dir(path)
