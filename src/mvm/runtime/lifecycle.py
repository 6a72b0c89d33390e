"""A VM's lifecycle: which verb is allowed in which state, and one lock per VM.

Every verb that changes a VM holds its lock (``vms/.NAME.lock``, outside the
VM's directory so removing the directory cannot race with a waiter) for
its whole duration: the whole of a start (reserve → drives → launch →
ready), ``down``, ``pause``/``resume``, ``detach``.  So a ``down`` of a VM
that is still being created waits for the start to finish (or, after the
lock's timeout, refuses with a clear error) instead of deleting its run
directory mid-start, and two verbs never race each other.

:func:`require` is the guard: a verb called in the wrong state is a clear
``ConflictError`` that names the state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from mvm import paths
from mvm.errors import ConflictError, StateError
from mvm.state.atomic import locked
from mvm.state.records import Entry, VmState

LOCK_TIMEOUT = 60.0  # a start (drives + launch + ready) finishes well within this

# verb -> states it may be called in
ALLOWED: dict[str, tuple[VmState, ...]] = {
    "pause": (VmState.RUNNING,),
    "resume": (VmState.PAUSED,),
    "detach": (VmState.RUNNING, VmState.PAUSED),
    "exec": (VmState.RUNNING,),
    "console": (VmState.RUNNING,),
    "cp": (VmState.RUNNING,),
    "agent": (VmState.RUNNING,),  # status, ping: the guest agent answers only a running VM
    "forward": (VmState.RUNNING, VmState.PAUSED),
    "fork": (VmState.RUNNING, VmState.PAUSED),
}


def require(entry: Entry, verb: str, allowed: Iterable[VmState] | None = None) -> VmState:
    """Return the VM's state if ``verb`` may run in it, else raise naming the state."""
    ok = tuple(allowed) if allowed is not None else ALLOWED[verb]
    state = entry.state()
    if state not in ok:
        wanted = " or ".join(s.value for s in ok)
        raise ConflictError(
            f"cannot {verb} VM {entry.name}: it is {state.value} (needs {wanted})",
            hint=f"`mvmctl status {entry.name}` shows why" if state is VmState.BROKEN else None,
        )
    return state


@contextlib.contextmanager
def vm_lock(name: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold VM ``name``'s lock (see the module docstring)."""
    paths.validate_name(name, "VM name")
    vms = paths.ensure_private_dir(paths.vms_dir())
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(locked(vms / f".{name}.lock", timeout=timeout))
    except StateError as exc:
        raise ConflictError(
            f"VM {name} is busy: another mvmctl is starting or changing it (waited {timeout:.0f}s)",
            hint="try again when it has finished",
        ) from exc
    with stack:
        yield


# how long `down` waits for the guest to power itself off before QMP quit: a busybox
# guest gives its processes 5 s; systemd's shutdown (every unit's stop, 5 s timeout
# each, unmounts) takes longer under TCG on a loaded host
STOP_GRACE = {"busybox": 8.0, "systemd": 30.0}


def stop_grace(entry: Entry) -> float:
    """The graceful-stop wait for ``entry``'s guest (by its image's init)."""
    from pathlib import Path

    from mvm.errors import MvmError
    from mvm.image.meta import load as load_meta
    from mvm.state.records import VmRecord

    init = "busybox"
    if isinstance(entry, VmRecord) and entry.image:
        with contextlib.suppress(OSError, MvmError):
            raw = load_meta(Path(entry.image) / "revision.json").extra.get("init")
            init = raw if isinstance(raw, str) else init
    return STOP_GRACE.get(init, STOP_GRACE["busybox"])
