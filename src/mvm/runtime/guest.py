"""The library API to a running VM's guest agent: connect, exec, files, status.

Connecting goes through the VM's sidecar (:mod:`mvm.runtime.sidecar`),
started here on first use.  exec, console and the file verbs are refused on
the host for a sealed VM (the record's ``accessible``, from the image's
``revision.json``); the guest's agent refuses them too (a sealed image's agent
has no exec or file service).

This module is on ``mvmctl exec``'s path, so it imports the agent client and
nothing else up front: when ``vm.json`` plainly says the VM runs (and is
accessible, for exec/console/cp) and its sidecar answers, that is all a
request needs; anything else takes the full path (the record loaded and
checked by :mod:`mvm.runtime.lifecycle`), which gives the precise error.
"""

from __future__ import annotations

import json
import os
import socket
import time

from mvm.agent import MUX_SOCKET
from mvm.agent.client import AgentClient
from mvm.errors import AgentError, ConflictError, MvmError, NotFoundError
from mvm.unixsock import try_connect

TYPE_CHECKING = False  # typing costs start-up time on `mvmctl exec`'s path
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from mvm.agent.models import Entry, GuestStatus
    from mvm.agent.protocol import ExecResult
    from mvm.state.records import VmRecord

SOCKET = MUX_SOCKET
SIDECAR_START_TIMEOUT = 20.0
ACCESS_VERBS = ("exec", "console", "cp")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(1 << 20))
    except (OSError, ValueError, RecursionError):
        return None


def _quick(name: str, verb: str) -> socket.socket | None:
    """The sidecar's socket if ``vm.json`` plainly allows ``verb`` (the rules of the
    full path: running, accessible for exec/console/cp, an image with the agent)
    and the sidecar answers; None sends the caller down the full path."""
    if not 0 < len(name) <= 63 or name[0] == "-" or not set(name) <= _NAME_CHARS:
        return None
    home = os.environ.get("MVM_HOME")
    if home is not None and (not home.strip() or "\0" in home):
        return None
    run_dir = os.path.join(os.path.abspath(os.path.expanduser(home or "~/.mvm")), "vms", name)
    rec = _read_json(os.path.join(run_dir, "vm.json"))
    if not isinstance(rec, dict) or rec.get("phase") != "running":
        return None
    if verb in ACCESS_VERBS and rec.get("accessible") is not True:
        return None
    image = rec.get("image")
    meta = _read_json(os.path.join(image, "revision.json")) if isinstance(image, str) else None
    if not isinstance(meta, dict) or meta.get("agentBinary") == "stub":
        return None
    return try_connect(os.path.join(run_dir, SOCKET))


def _record(name: str, verb: str) -> VmRecord:
    from mvm import paths
    from mvm.runtime import lifecycle
    from mvm.state.records import VmRecord, load_entry

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
    meta = _read_json(os.path.join(entry.image, "revision.json"))
    if isinstance(meta, dict) and meta.get("agentBinary") == "stub":
        # the old stub speaks no protocol: waiting for its hello would only time out
        raise AgentError(
            f"VM {name}'s image was built before mvm had a guest agent",
            hint="rebuild the image (`mvmctl build`) and start the VM again",
        )
    return entry


def _start_sidecar(run_dir: Path) -> None:
    import subprocess
    import sys

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


def _full(name: str, verb: str, timeout: float) -> socket.socket:
    """The sidecar's socket after every check of the record; starts the sidecar."""
    record = _record(name, verb)
    path = record.dir / SOCKET
    sock = try_connect(path)
    if sock is None:
        _start_sidecar(record.dir)
        end = time.monotonic() + min(SIDECAR_START_TIMEOUT, timeout)
        while sock is None:
            if time.monotonic() > end:
                raise AgentError(f"the agent sidecar of VM {name} did not start",
                                 hint=f"see {record.dir / 'sidecar.log'}")  # fmt: skip
            time.sleep(0.01)
            sock = try_connect(path)
    return sock


def connect(name: str, *, verb: str = "agent", timeout: float = 60.0,
            wait: bool = True) -> AgentClient:  # fmt: skip
    """A client of VM ``name``'s agent (waits up to ``timeout`` for the guest).

    ``wait=False`` returns once hello is sent, so that the first request travels
    with it; the caller must then call :func:`check` before using a reply."""
    deadline = time.monotonic() + timeout
    sock = _quick(name, verb) or _full(name, verb, timeout)
    try:
        client = AgentClient(sock, timeout=max(1.0, deadline - time.monotonic()), wait=False)
    except AgentError:
        sock.close()
        raise
    if wait:
        check(client, name, verb)
    return client


def check(client: AgentClient, name: str, verb: str) -> None:
    """Read the agent's hello: it answers, speaks our version, and (for exec,
    console and cp) is not a sealed image's agent."""
    try:
        hello = client.hello
    except AgentError as exc:
        client.close()
        raise AgentError(f"VM {name}: the guest agent did not answer ({exc.message})") from exc
    if verb in ACCESS_VERBS and hello.sealed:
        client.close()
        raise ConflictError(f"cannot {verb} VM {name}: its guest agent is sealed")


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
