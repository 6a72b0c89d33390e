"""``mvmctl forward``: host ports forwarded to a running VM, added and removed
live through its hypervisor (QEMU: ``hostfwd_add``/``hostfwd_remove``).

A forward either lasts while the command runs (Ctrl-C removes it) or, with
``--detach``, until ``forward --rm`` or the VM stops; detached forwards are
kept in the record (``status`` lists them).  The host port is checked free
before anything is asked of the hypervisor, under the VM's lock.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType

from mvm.backends.base import Machine
from mvm.backends.spec import PortForward
from mvm.errors import ConflictError, MvmError, NetworkError
from mvm.runtime import lifecycle
from mvm.runtime.config import parse_port
from mvm.runtime.start import check_ports
from mvm.runtime.vm import _machine, get
from mvm.state.records import VmRecord


def has_nic(record: VmRecord) -> bool:
    net = record.network[0] if record.network else ""
    return bool(record.ports) or "egress proxy" in net or net.startswith("preset open")


def _running(name: str, verb: str) -> tuple[VmRecord, Machine]:
    vm = get(name)
    lifecycle.require(vm.record, verb)
    record = vm.record
    assert isinstance(record, VmRecord)
    machine = _machine(record)
    if machine is None:
        raise ConflictError(f"VM {name} is not running")
    return record, machine


def _same_host_port(a: PortForward, b: PortForward) -> bool:
    return (
        a.host == b.host
        and a.proto == b.proto
        and (a.address == b.address or "0.0.0.0" in (a.address, b.address))
    )


def add(name: str, spec: str, *, detach: bool) -> PortForward:
    fwd = parse_port(spec)
    with lifecycle.vm_lock(name):
        record, machine = _running(name, "forward")
        try:
            if not has_nic(record):
                raise NetworkError(
                    f"VM {name} has no network device to forward to",
                    hint="start it with -p HOST:GUEST or a --network-preset/--network-allow",
                )
            for existing in (*record.ports, *record.forwards):
                if _same_host_port(parse_port(existing), fwd):
                    raise ConflictError(f"host port {fwd.host} is already forwarded to {name}")
            check_ports((fwd,))
            machine.add_forward(fwd)
        finally:
            machine.close()
        if detach:
            record.forwards = [*record.forwards, str(fwd)]
            record.save()
    return fwd


def remove(name: str, spec: str) -> PortForward:
    fwd = parse_port(spec)
    with lifecycle.vm_lock(name):
        record, machine = _running(name, "forward")
        try:
            kept = [f for f in record.forwards if not _same_host_port(parse_port(f), fwd)]
            if len(kept) == len(record.forwards):
                raise ConflictError(
                    f"VM {name} has no forward from host port {fwd.host}",
                    hint="-p forwards given at start stay for the VM's life",
                )
            machine.remove_forward(fwd)
        finally:
            machine.close()
        record.forwards = kept
        record.save()
    return fwd


def hold(
    name: str,
    fwd: PortForward,
    alive: Callable[[], bool] | None = None,
    announce: Callable[[], None] | None = None,
) -> None:
    """Keep a non-detached forward until Ctrl-C, SIGTERM/SIGHUP or the VM stops, then
    remove it.  The handlers are installed explicitly (as ``run --attached`` does): a
    SIGINT ignored by a background parent, or a plain ``kill``, must still remove the
    forward rather than leave the port open on the VM.  ``announce`` runs once they
    are in place: a signal sent as soon as the user sees the line is not lost."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        if announce is not None:
            announce()
        while alive() if alive else get(name).record.is_active():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        with lifecycle.vm_lock(name):
            vm = get(name)
            machine = _machine(vm.record)
            if machine is not None:
                try:
                    machine.remove_forward(fwd)
                except MvmError:  # the VM may be stopping: nothing left to remove
                    pass
                finally:
                    machine.close()
