"""Start, attach to, stop, list and inspect VMs.

Creation is serialised by a lock on ``MVM_HOME/vms/.lock``: two ``up`` with
one name → one wins, the other gets ``ConflictError``.  Whatever fails
between reserving a name and QEMU running is rolled back, so a failed start
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from mvm import drives, paths
from mvm.backends.base import get_backend
from mvm.backends.qemu import accel as accel_mod
from mvm.backends.qemu import qmp
from mvm.backends.qemu.argv import Drive, MachineConfig, PortForward
from mvm.backends.qemu.machine import qemu_binary, run_status, start_failure, stop, wait_ready
from mvm.errors import ConflictError, MvmError, NotFoundError, StateError
from mvm.image.builder import Image
from mvm.log import get_logger
from mvm.runtime import console, inject
from mvm.runtime.config import RunConfig, parse_port
from mvm.state.atomic import locked
from mvm.state.records import (
    BrokenRecord,
    Mode,
    VmRecord,
    VmState,
    list_entries,
    load_entry,
    pid_alive,
    proc_start_time,
)

log = get_logger(__name__)


@dataclass
class Vm:
    """A handle on a VM record; ``state`` is computed live.

    ``record`` is a :class:`BrokenRecord` when ``vm.json`` cannot be read:
    such a VM is still listed (as ``broken``), and ``down`` still stops its QEMU.
    """

    record: VmRecord | BrokenRecord

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def state(self) -> VmState:
        return self.record.state()

    def run_state(self) -> str:
        """The state as users should see it: a running QEMU may be paused
        (``mvmctl pause``) or stopped by a failed write (``paused (disk full)``)."""
        state = self.record.state()
        if state is not VmState.RUNNING:
            return state.value
        status = run_status(self.record.dir, timeout=0.5)
        if status == "io-error":
            return "paused (disk full)" if _disk_full(self.record.dir) else "paused (I/O error)"
        if status in ("paused", "suspended"):
            return "paused"
        return state.value

    def info(self) -> dict[str, Any]:
        r = self.record
        if isinstance(r, BrokenRecord):
            return {"name": r.name, "state": VmState.BROKEN.value, "reason": r.reason,
                    "pid": r.live_pid(), "mode": None, "accel": None, "uptime_s": None,
                    "exit_code": None, "source": None}  # fmt: skip
        state = self.run_state()
        return {
            "name": r.name,
            "state": state,
            "mode": r.mode,
            "accel": r.accel,
            "accel_reason": r.accel_reason,
            "pid": r.live_pid(),
            "source": r.source,
            "revision": r.revision or r.image_hash[:12],
            "image_hash": r.image_hash,
            "accessible": r.accessible,
            "entrypoint": r.entrypoint_kind,
            "vcpus": r.vcpus,
            "memory_mib": r.memory_mib,
            "ports": r.ports,
            "volumes": r.volumes,
            "credentials": r.credentials,
            "uptime_s": round(u, 1) if (u := r.uptime()) is not None else None,
            "exit_code": r.exit_code(),
            "created_at": r.created_at,
        }


def _disk_full(run_dir: Path) -> bool:
    """Whether QEMU's last block error was ENOSPC (it logs nothing: ask QMP)."""
    try:
        devices = qmp.command(run_dir / "qmp.sock", "query-block", timeout=0.5)
    except MvmError:
        return False
    return any(isinstance(d, dict) and d.get("io-status") == "nospace" for d in devices or [])


def _unique_name(base: str) -> str:
    taken = {r.name: r for r in list_entries()}
    if base not in taken or not taken[base].is_active():
        return base
    for i in range(2, 1000):
        cand = f"{base}-{i}"[:63]
        if cand not in taken or not taken[cand].is_active():
            return cand
    raise ConflictError(f"no free VM name starting with {base!r}")


def _check_ports(ports: list[PortForward]) -> None:
    for p in ports:
        kind = socket.SOCK_STREAM if p.proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", p.host))
            except OSError as exc:
                raise ConflictError(f"host port {p.host} is already in use") from exc


@contextlib.contextmanager
def _reserved(name: str, explicit: bool) -> Iterator[VmRecord]:
    """Reserve ``name`` (record in state creating) and roll back on failure.

    A name is never reused while a QEMU runs for it, even when its record is
    broken (the QEMU is found through its run directory): starting a second
    one would delete the live run directory under the first.
    """
    vms = paths.vms_dir()
    paths.ensure_private_dir(vms)
    with locked(vms / ".lock"):
        if not explicit:
            name = _unique_name(name)
        vdir = paths.vm_dir(name)
        if vdir.exists():
            old = load_entry(name)
            if old.is_active():
                what = old.state().value
                if isinstance(old, BrokenRecord):
                    what = f"broken record, QEMU pid {old.live_pid()} still running"
                raise ConflictError(
                    f"VM name {name!r} is already in use ({what})",
                    hint=f"choose another --name or run `mvmctl down {name}`",
                )
            _remove_run_dir(vdir)
        try:
            paths.ensure_private_dir(vdir)
            record = VmRecord(name=name)
            record.own()
            record.save()
        except BaseException:
            _remove_run_dir(vdir)
            raise
    ok = False
    try:
        yield record
        ok = True
    finally:
        if not ok:
            if record.pid:
                stop(record.pid, record.pid_start, vdir, grace=0.5)
            _remove_run_dir(vdir)


def _remove_run_dir(vdir: Path) -> None:
    """Remove a run directory (drives and credentials inside may be read-only)."""
    drives.rmtree_force(vdir)


def start(image: Image, run: RunConfig, *, source: str, revision: str = "") -> tuple[VmRecord, Any]:
    """Start a VM from ``image``; return its record and the QEMU Popen."""
    rev = image.revision
    defaults = rev.get("defaults", {})
    backend = get_backend(str(rev.get("hypervisor", "qemu")))
    accel = accel_mod.choose(image.kernel, qemu_binary())
    ports = [parse_port(p) for p in run.ports]
    base = run.name or str(rev["name"])
    paths.validate_name(base, "VM name")
    _check_ports(ports)
    injection = inject.prepare(image, run)  # bad -v/credentials fail here: nothing created yet
    with _reserved(base, explicit=run.name is not None) as record:
        record.mode = (Mode.ATTACHED if run.attached else Mode.DETACHED).value
        record.source = source
        record.image = str(image.path)
        record.image_hash = image.input_hash
        record.revision = revision
        record.accessible = image.accessible
        record.entrypoint_kind = str(rev["entrypointKind"])
        record.accel, record.accel_reason = accel.accel, accel.reason
        record.vcpus = run.cpus or int(defaults.get("vcpus", 1))
        record.memory_mib = run.memory_mib or int(defaults.get("memory_mib", 256))
        record.ports = list(run.ports)
        record.volumes = injection.record_volumes()
        record.credentials = injection.record_credentials()  # names only
        record.save()
        handover = inject.materialise(injection, record.dir, record.name,
                                      smbios=backend.capabilities.smbios)  # fmt: skip
        cfg = MachineConfig(
            name=record.name,
            kernel=image.kernel,
            initramfs=image.initramfs,
            drives=(
                Drive(image.rootfs, readonly=not image.accessible, snapshot=image.accessible),
                *handover.drives,
            ),
            run_dir=record.dir,
            vcpus=record.vcpus,
            memory_mib=record.memory_mib,
            accel=accel.accel,
            tsc_khz=accel_mod.host_tsc_khz(),
            network=bool(run.network),
            ports=tuple(ports),
            fw_cfg=handover.fw_cfg,
            smbios_oem=handover.smbios,
            cmdline_extra=(
                *(("mvm.trace=1",) if os.environ.get("MVM_TRACE_BOOT") else ()),
                *handover.cmdline,
            ),
        )
        try:
            popen = backend.spawn(cfg)
            record.pid = popen.pid
            record.pid_start = proc_start_time(popen.pid)
            record.started_at = time.time()
            record.save()
            if not run.attached:
                wait_ready(popen, record.dir)
                inject.scrub(record.dir)  # QEMU has read the credentials and opened the drives
            elif popen.poll() is not None:
                raise start_failure(record.dir)
        except BaseException:
            handover.discard_created()  # a data volume made by this failed start
            raise
    return record, popen


class _Interrupted(Exception):
    pass


def run_attached(record: VmRecord, popen: Any) -> int:
    """Stream the console until the VM ends; Ctrl-C/SIGTERM/SIGHUP stop it.

    Returns the entrypoint's exit code (130 when interrupted).  If someone runs
    ``mvmctl detach`` meanwhile, return 0 and leave the VM running.
    """

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    detached = False

    def keep_going() -> bool:
        nonlocal detached
        if popen.poll() is not None:
            return False
        with contextlib.suppress(MvmError, FileNotFoundError):
            if VmRecord.load(record.name).mode == Mode.DETACHED.value:
                detached = True
                return False
        return True

    interrupted = False
    try:
        sock = console.connect(record.dir / "console.sock", lambda: popen.poll() is None)
        if inject.pending(record.dir):
            with contextlib.suppress(MvmError):  # console bytes queue in the socket meanwhile
                wait_ready(popen, record.dir)
            inject.scrub(record.dir)
        with sock, console.cbreak(0) if record.accessible else contextlib.nullcontext():
            console.pump(sock, interactive=record.accessible, keep_going=keep_going)
        if not detached:
            popen.wait()
    except _Interrupted:
        interrupted = True
        record.stopped = True
        with contextlib.suppress(OSError, MvmError):  # a full disk must not keep the VM alive
            record.save()
        stop(record.pid or popen.pid, record.pid_start, record.dir, grace=3.0)
        popen.wait()
    finally:
        inject.scrub(record.dir)
        for s, h in old.items():
            signal.signal(s, h)
    if detached:
        return 0
    code = record.exit_code()
    if code is not None and not interrupted:
        return code
    if interrupted:
        return 130
    if popen.returncode:
        raise start_failure(record.dir)
    raise MvmError(
        f"VM {record.name} stopped without reporting an exit status; "
        f"see `mvmctl logs {record.name}`"
    )


def get(name: str) -> Vm:
    paths.validate_name(name, "VM name")
    if not paths.vm_dir(name).is_dir():
        raise NotFoundError(f"no VM named {name!r}", hint="`mvmctl ls` lists VMs")
    entry = load_entry(name)
    sweep(entry)
    return Vm(entry)


def list_vms() -> list[Vm]:
    entries = list_entries()
    for e in entries:
        sweep(e)
    return [Vm(e) for e in entries]


def sweep(entry: VmRecord | BrokenRecord) -> None:
    """Remove secret staging (drive images, credential files) that a killed
    ``up`` left behind: the promise is that they exist only until QEMU has read
    them.  Safe only when no mvmctl is still creating the VM and QEMU is either
    gone or already answering (it reads fw_cfg files and opens drives before
    its monitor starts)."""
    if not inject.pending(entry.dir):
        return
    if isinstance(entry, VmRecord) and pid_alive(entry.owner_pid, entry.owner_start):
        return
    pid = entry.live_pid()
    if pid is not None and run_status(entry.dir, timeout=0.5) is None:
        return
    inject.scrub(entry.dir)


def down(name: str) -> VmState:
    """Stop ``name`` if running and remove its record and run directory.

    Writes no state on the way (a full disk must not keep a VM alive), and
    stops whatever QEMU belongs to the run directory even when the record is
    broken or lacks the pid.
    """
    vm = get(name)
    rec = vm.record
    with locked(paths.vms_dir() / ".lock"):
        state = rec.state()
        pid = rec.live_pid()
        if pid is not None:
            start = rec.pid_start if isinstance(rec, VmRecord) else proc_start_time(pid)
            stop(pid, start, rec.dir)
        _remove_run_dir(rec.dir)
    return state


def up(image: Image, run: RunConfig, *, source: str, revision: str = "") -> Vm:
    """Start a detached VM and return once QEMU answers."""
    run.attached = False
    record, _popen = start(image, run, source=source, revision=revision)
    return Vm(record)


def wait(name: str, timeout: float | None = None) -> int | None:
    """Block until ``name`` is no longer running; return its exit code.

    Raises ``StateError`` when the VM ended without an exit code (stopped by
    ``down``/Ctrl-C, crashed, broken), saying which.
    """
    vm = get(name)
    deadline = None if timeout is None else time.monotonic() + timeout
    while vm.record.is_active():
        if deadline is not None and time.monotonic() > deadline:
            raise ConflictError(f"VM {name} still running after {timeout:.0f}s")
        time.sleep(0.1)
    record = vm.record
    code = record.exit_code() if isinstance(record, VmRecord) else None
    if code is None:
        state = record.state().value
        raise StateError(
            f"VM {name} is {state} and reported no exit status",
            hint=f"see `mvmctl logs {name}`",
        )
    return code


def detach(name: str) -> None:
    vm = get(name)
    if not isinstance(vm.record, VmRecord) or not vm.record.is_active():
        raise ConflictError(f"VM {name} is not running ({vm.state.value})")
    vm.record.mode = Mode.DETACHED.value
    vm.record.save()


def log_path(name: str) -> Path:
    return get(name).record.dir / "console.log"


def tail_lines(path: Path, n: int) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b""
    if n <= 0:
        return data
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:])


def follow(name: str, n: int, out: Any) -> None:
    """Print the last ``n`` lines then new output until the VM stops."""
    vm = get(name)
    path = vm.record.dir / "console.log"
    out.write(tail_lines(path, n))
    out.flush()
    pos = path.stat().st_size if path.exists() else 0
    while True:
        active = vm.record.is_active()
        if path.exists() and path.stat().st_size > pos:
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            pos += len(chunk)
            out.write(chunk)
            out.flush()
        if not active:
            return
        time.sleep(0.1)
