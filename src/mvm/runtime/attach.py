"""``run --attached``: stream the console until the VM ends; Ctrl-C stops it.

The VM's lifecycle is bound to this process (the seeds' *attached* mode):
SIGINT, SIGTERM or SIGHUP stop the VM gracefully and return 130.  If
someone runs ``mvmctl detach`` meanwhile, the pump returns 0 and leaves
the VM running.
"""

from __future__ import annotations

import contextlib
import signal
from types import FrameType

from mvm.errors import MvmError
from mvm.runtime import console, lifecycle
from mvm.runtime.start import Started
from mvm.state.records import Mode, Phase, VmRecord


class _Interrupted(Exception):
    pass


def run_attached(started: Started) -> int:
    """Pump the console of ``started``; return the entrypoint's exit code."""
    record, machine = started.record, started.machine

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    detached = False

    def keep_going() -> bool:
        nonlocal detached
        if not machine.alive():
            return False
        with contextlib.suppress(MvmError, FileNotFoundError):
            if VmRecord.load(record.name).mode == Mode.DETACHED.value:
                detached = True
                return False
        return True

    interrupted = False
    rc: int | None = None
    sock = started.console
    try:
        if sock is not None:
            with sock, console.cbreak(0) if record.accessible else contextlib.nullcontext():
                console.pump(sock, interactive=record.accessible, keep_going=keep_going)
        if not detached:
            rc = machine.wait()
    except _Interrupted:
        interrupted = True
        _stop(record, machine)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        machine.close()
    if detached:
        return 0
    if interrupted:
        return 130
    code = record.exit_code()
    if code is not None:
        return code
    if rc:
        raise machine.launch_error(f"the hypervisor exited with status {rc}")
    raise MvmError(
        f"VM {record.name} stopped without reporting an exit status; "
        f"see `mvmctl logs {record.name}`"
    )


def _stop(record: VmRecord, machine: object) -> None:
    from mvm.backends.base import Machine

    assert isinstance(machine, Machine)
    with contextlib.suppress(MvmError), lifecycle.vm_lock(record.name, timeout=10):
        record.phase = Phase.STOPPING.value
        with contextlib.suppress(OSError, MvmError):  # a full disk must not keep the VM alive
            record.save()
    machine.stop(grace=lifecycle.stop_grace(record))
