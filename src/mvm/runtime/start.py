"""Starting a VM: reserve its name, write its drives, launch the backend's
machine, wait until it answers — all under the VM's lock, all rolled back
if any step fails, so a failed start leaves no directory, process, volume
or secret file behind.

Name allocation is serialised by ``vms/.lock`` (two ``up`` with one name →
one wins, the other gets ``ConflictError``); the VM's own lock
(:func:`mvm.runtime.lifecycle.vm_lock`) is then held for the whole start.
A name is never reused while a hypervisor runs for it, even when its
record is broken.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mvm import channels, drives, paths
from mvm.backends.base import Backend, Machine, get_backend
from mvm.backends.spec import MachineSpec, PortForward
from mvm.errors import ConflictError
from mvm.log import get_logger
from mvm.network import plan as netplan
from mvm.runtime import lifecycle, prepare, topology
from mvm.runtime import restore as restore_mod
from mvm.runtime.resolve import ResolvedRun
from mvm.runtime.restore import Restore
from mvm.runtime.snapshots import create_ram_file
from mvm.state.atomic import locked
from mvm.state.records import BrokenRecord, Mode, Phase, VmRecord, list_entries, load_entry

log = get_logger(__name__)


@dataclass
class Started:
    """A VM that answers: its record, the machine (owned by this process) and,
    for attached runs, the console socket connected before the guest spoke."""

    record: VmRecord
    machine: Machine
    console: socket.socket | None = None
    spec: MachineSpec | None = None
    timings: dict[str, float] | None = None  # a restore's steps (bench/snapshot.py)


def _unique_name(base: str) -> str:
    taken = {r.name: r for r in list_entries()}
    if base not in taken or not taken[base].is_active():
        return base
    for i in range(2, 1000):
        cand = f"{base}-{i}"[:63]
        if cand not in taken or not taken[cand].is_active():
            return cand
    raise ConflictError(f"no free VM name starting with {base!r}")


def check_ports(ports: tuple[PortForward, ...]) -> None:
    """A host port in use is a clear error before anything starts."""
    for p in ports:
        kind = socket.SOCK_STREAM if p.proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            # as QEMU's slirp binds: connections of an earlier VM in TIME_WAIT do not count
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((p.address, p.host))
            except OSError as exc:
                where = "" if p.address == "127.0.0.1" else f" on {p.address}"
                raise ConflictError(f"host port {p.host} is already in use{where}") from exc


def describe_network(run: ResolvedRun) -> list[str]:
    """The record's network lines: preset, rules, mappings, secret names and hosts."""
    net = run.network
    lines = [f"preset {net.policy.preset}" + (" (egress proxy)" if net.uses_proxy else "")]
    lines += [f"allow {r}" for r in net.policy.describe()]
    lines += [f"host {n}={ip}" for n, ip in sorted(net.policy.hosts.items())]
    lines += [f"secret {b.key} -> {','.join(b.hosts)} ({net.secret_mode})" for b in net.bindings]
    return lines


def remove_run_dir(vdir: Path) -> None:
    """Remove a run directory (drives and credentials inside may be read-only)."""
    drives.rmtree_force(vdir)


@contextlib.contextmanager
def _reserved(name: str, explicit: bool) -> Iterator[VmRecord]:
    """Reserve ``name`` (a record in phase creating) holding its lock; roll back on failure."""
    vms = paths.ensure_private_dir(paths.vms_dir())
    stack = contextlib.ExitStack()
    with stack:
        with locked(vms / ".lock"):
            if not explicit:
                name = _unique_name(name)
            stack.enter_context(lifecycle.vm_lock(name))
            vdir = paths.vm_dir(name)
            if vdir.exists():
                old = load_entry(name)
                if old.is_active():
                    what = old.state().value
                    if isinstance(old, BrokenRecord):
                        what = f"broken record, hypervisor pid {old.live_pid()} still running"
                    raise ConflictError(
                        f"VM name {name!r} is already in use ({what})",
                        hint=f"choose another --name or run `mvmctl down {name}`",
                    )
                remove_run_dir(vdir)
            try:
                paths.ensure_private_dir(vdir)
                record = VmRecord(name=name)
                record.own()
                record.save()
            except BaseException:
                remove_run_dir(vdir)
                raise
        ok = False
        try:
            yield record
            ok = True
        finally:
            if not ok:
                remove_run_dir(vdir)


def show_command(run: ResolvedRun) -> list[str]:
    """The hypervisor command line ``run`` would use (nothing is created)."""
    backend = get_backend(str(run.hypervisor.value))
    prep = prepare.check(run)
    spec, _ = prepare.machine_spec(prep, run.name, paths.vm_dir(run.name), materialise=False)
    return backend.command(spec)


def show_text(run: ResolvedRun) -> str:
    """What ``--show-command`` prints: the backend's own rendering of :func:`show_command`
    (QEMU: one shell-quoted line; Firecracker: its argv, then one API call per line)."""
    backend = get_backend(str(run.hypervisor.value))
    prep = prepare.check(run)
    spec, _ = prepare.machine_spec(prep, run.name, paths.vm_dir(run.name), materialise=False)
    return backend.describe(spec)


def start(
    run: ResolvedRun, *, restore: Restore | None = None, snapshot_source: Path | None = None
) -> Started:
    """Start a VM for ``run``; return once its hypervisor answers.

    ``restore``: load the snapshot instead of booting (docs/snapshots.md), return
    once the guest runs under its new identity.  ``snapshot_source``: a staging
    directory that will hold a snapshot of this VM; its RAM lives there (shared), and
    it gets the snapshot topology (:func:`mvm.runtime.topology.shape`).
    """
    backend: Backend = get_backend(str(run.hypervisor.value))
    paths.validate_name(run.name, "VM name")
    check_ports(run.ports)
    prep = prepare.check(run)  # bad -v/credentials fail here: nothing created yet
    image = run.image
    with _reserved(run.name, run.name_explicit) as record:
        record.mode = (Mode.ATTACHED if run.attached else Mode.DETACHED).value
        record.hypervisor = backend.name
        record.hypervisor_reason = run.hypervisor_reason
        record.source = run.source
        record.image = str(image.path)
        record.image_hash = image.input_hash
        record.revision = run.revision
        record.accessible = image.accessible
        record.entrypoint_kind = image.meta.entrypoint_kind
        record.vcpus = int(run.vcpus.value)
        record.memory_mib = int(run.memory_mib.value)
        record.ports = [str(p) for p in run.ports]
        record.volumes = prep.record_volumes()
        record.credentials = prep.record_credentials()  # names only
        record.network = describe_network(run)
        record.settings = run.provenance()
        record.save()
        spec, att = prepare.machine_spec(prep, record.name, record.dir)
        try:
            if restore is not None:
                spec = restore_mod.shape(spec, restore.snapshot)
                restore_mod.check(restore, backend, spec)
                restore_mod.restore_rootfs(spec, restore.snapshot)
                record.boot, record.snapshot = "restored", str(restore.snapshot.dir)
            elif snapshot_source is not None:
                spec = topology.shape(spec)
                ram = create_ram_file(snapshot_source, spec.memory_mib)
                spec = restore_mod.with_ram(spec, ram)
            topo = (restore_mod.of(spec, backend, restore.snapshot) if restore is not None
                    else topology.of(spec, backend))  # fmt: skip
            topology.save(record.dir, topo)
            record.save()
            t_launch = time.monotonic()
            machine = backend.launch(spec, restore.snapshot.source() if restore else None)
        except BaseException:
            att.discard_created()
            raise
        with _owned(machine, att):
            record.pid, record.pid_start = machine.pid, machine.pid_start
            accel = getattr(machine, "accel", None)
            if backend.name == "firecracker":  # KVM or nothing
                record.accel, record.accel_reason = "kvm", "Firecracker runs on KVM only"
            elif accel is not None:
                record.accel, record.accel_reason = accel.accel, accel.reason
            record.started_at = time.time()
            record.save()
            if run.network.uses_proxy:  # before the guest's first connection; dies with QEMU
                record.proxy_pid = netplan.start_proxy(run.network, record.dir, record.name,
                                                       machine.pid, machine.pid_start)  # fmt: skip
                record.save()
            console = None
            timings = None
            if run.attached:  # connect first: the console streams from its first byte
                console = channels.connect_console(backend.channels(record.dir), machine.alive)
            machine.wait_ready()
            if restore is not None:
                fresh = bool(prep.plan) or bool(run.credentials)
                t_ready = time.monotonic()
                timings = restore_mod.finish(machine, spec, restore, fresh=fresh)
                timings = {"qemu-answers": t_ready - t_launch, **timings}
            record.phase = Phase.RUNNING.value
            record.save()
    return Started(record, machine, console, spec, timings)


@contextlib.contextmanager
def _owned(machine: Machine, att: drives.Attached) -> Iterator[None]:
    """On failure: the machine is killed, its secret files removed, new volumes undone."""
    try:
        yield
    except BaseException:
        machine.kill()
        machine.scrub()
        machine.close()
        att.discard_created()
        raise
