"""VMs after they started: list, inspect, stop, wait, detach, pause, resume, logs;
and the library's :func:`up`.

Every verb goes through the VM's lifecycle guard and lock
(:mod:`mvm.runtime.lifecycle`) and finds the VM's hypervisor through its
backend (:meth:`Backend.attach`), so it works from any mvmctl, whichever
one started the VM.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvm import paths
from mvm.backends.base import Machine, get_backend
from mvm.errors import ConflictError, MvmError, NotFoundError, StateError
from mvm.log import get_logger
from mvm.runtime import lifecycle
from mvm.runtime.config import RunConfig
from mvm.runtime.resolve import RuntimeDefaults, resolve
from mvm.runtime.start import remove_run_dir, start
from mvm.state.records import (
    BrokenRecord,
    Entry,
    Mode,
    Phase,
    VmRecord,
    VmState,
    list_entries,
    load_entry,
)

log = get_logger(__name__)


def _machine(entry: Entry) -> Machine | None:
    """A Machine for the VM's running hypervisor (None if it is not running)."""
    pid = entry.live_pid()
    if pid is None:
        return None
    hypervisor = entry.hypervisor if isinstance(entry, VmRecord) else "qemu"
    try:
        backend = get_backend(hypervisor)
    except MvmError:
        return None
    start_time = entry.pid_start if isinstance(entry, VmRecord) and entry.pid == pid else None
    return backend.attach(entry.dir, pid, start_time)


@dataclass
class Vm:
    """A handle on a VM; ``state`` is computed live.

    ``record`` is a :class:`BrokenRecord` when ``vm.json`` cannot be read:
    such a VM is still listed (as ``broken``), and ``down`` still stops it.
    """

    record: Entry

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def state(self) -> VmState:
        return self.record.state()

    def run_state(self) -> str:
        """The state as users should see it: a running hypervisor may have stopped
        the guest after a failed write (``paused (disk full)``)."""
        state = self.record.state()
        if state not in (VmState.RUNNING, VmState.PAUSED):
            return state.value
        machine = _machine(self.record)
        if machine is None:
            return state.value
        try:
            status = machine.status(timeout=0.5)
            if status == "io-error":
                full = getattr(machine, "disk_full", lambda: False)()
                return "paused (disk full)" if full else "paused (I/O error)"
            if status == "paused":
                return VmState.PAUSED.value
            return state.value
        finally:
            machine.close()

    def proxy(self) -> str | None:
        """The egress proxy's state: None without one; "down" means egress fails closed."""
        r = self.record
        if not isinstance(r, VmRecord) or r.proxy_pid is None:
            return None
        from mvm.network.plan import proxy_state

        st = proxy_state(r.dir)
        if st is None or not st["running"]:
            return "down (egress fails closed)" if r.is_active() else "stopped"
        return f"running (restarts: {st['restarts']})"

    def info(self) -> dict[str, Any]:
        r = self.record
        if isinstance(r, BrokenRecord):
            return {"name": r.name, "state": VmState.BROKEN.value, "reason": r.reason,
                    "pid": r.live_pid(), "mode": None, "accel": None, "uptime_s": None,
                    "exit_code": None, "source": None}  # fmt: skip
        return {
            "name": r.name,
            "state": self.run_state(),
            "mode": r.mode,
            "hypervisor": r.hypervisor,
            "hypervisor_reason": r.hypervisor_reason or None,
            "accel": r.accel,
            "accel_reason": r.accel_reason,
            "pid": r.live_pid(),
            "source": r.source,
            "boot": r.boot,
            "revision": r.revision or r.image_hash[:12],
            "image_hash": r.image_hash,
            "accessible": r.accessible,
            "entrypoint": r.entrypoint_kind,
            "vcpus": r.vcpus,
            "memory_mib": r.memory_mib,
            "ports": r.ports,
            "volumes": r.volumes,
            "credentials": r.credentials,
            "network": r.network,
            "forwards": r.forwards,
            "proxy": self.proxy(),
            "settings": r.settings,
            "uptime_s": round(u, 1) if (u := r.uptime()) is not None else None,
            "exit_code": r.exit_code(),
            "created_at": r.created_at,
            **_oci_info(r.image),
        }


def _oci_info(image: str) -> dict[str, Any]:
    """An OCI image's reference and ExposedPorts (listed, never published: only ``-p``
    forwards a port).  Read from the image's revision.json; nothing when unreadable."""
    from mvm.image.meta import load as load_meta

    try:
        oci = load_meta(Path(image) / "revision.json").image if image else None
    except (OSError, MvmError):
        oci = None
    if oci is None:
        return {"image_ref": None, "exposed_ports": []}
    return {"image_ref": oci.ref, "exposed_ports": list(oci.exposed_ports)}


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


def sweep(entry: Entry) -> None:
    """Remove secret staging (drive images, credential files) that a killed ``up``
    left behind: the promise is that they exist only until the hypervisor has
    read them.  Safe only when no mvmctl is still creating the VM and the
    hypervisor is either gone or already answering."""
    from mvm.drives.images import DRIVES_DIR

    hypervisor = entry.hypervisor if isinstance(entry, VmRecord) else "qemu"
    try:
        backend = get_backend(hypervisor)
    except MvmError:
        return
    staged = [entry.dir / DRIVES_DIR, *backend.ephemeral(entry.dir)]
    if not any(p.exists() for p in staged):
        return
    if isinstance(entry, VmRecord) and entry.phase == Phase.CREATING.value and entry.owner_alive():
        return
    machine = _machine(entry)
    if machine is not None:
        try:
            if machine.status(timeout=0.5) in ("unknown", "gone"):
                return  # still starting (or busy): it may not have read everything yet
        finally:
            machine.close()
    from mvm.drives import rmtree_force

    for p in staged:
        with contextlib.suppress(OSError):
            rmtree_force(p)


def down(name: str, *, volumes: bool = False) -> VmState:
    """Stop ``name`` if it runs and remove its record and run directory.

    Writes nothing but the phase on the way (a full disk must not keep a VM
    alive), and stops whatever hypervisor belongs to the run directory even
    when the record is broken or lacks the pid.  ``volumes`` also removes the
    VM's persistent data volumes.
    """
    vm = get(name)
    with lifecycle.vm_lock(name):
        rec = load_entry(name)
        state = rec.state()
        machine = _machine(rec)
        if machine is not None:
            if isinstance(rec, VmRecord):
                rec.phase = Phase.STOPPING.value
                with contextlib.suppress(OSError, MvmError):
                    rec.save()
            try:
                machine.stop(grace=lifecycle.stop_grace(rec))
            finally:
                machine.close()
        remove_run_dir(vm.record.dir)
        if isinstance(rec, VmRecord) and rec.snapshot:
            from mvm.runtime.fork import release

            release(Path(rec.snapshot), exclude=name)
        if volumes:
            from mvm.drives import remove_volumes

            remove_volumes(name)
    return state


def wait(name: str, timeout: float | None = None) -> int:
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
        vm = Vm(load_entry(name))
    record = vm.record
    code = record.exit_code() if isinstance(record, VmRecord) else None
    if code is None:
        raise StateError(
            f"VM {name} is {record.state().value} and reported no exit status",
            hint=f"see `mvmctl logs {name}`",
        )
    return code


def detach(name: str) -> None:
    """Let an attached VM outlive its ``run --attached``."""
    with lifecycle.vm_lock(name):
        vm = get(name)
        lifecycle.require(vm.record, "detach")
        assert isinstance(vm.record, VmRecord)
        vm.record.mode = Mode.DETACHED.value
        vm.record.save()


def pause(name: str) -> None:
    """Stop the VM's vCPUs (its memory stays; ``resume`` continues it)."""
    _set_paused(name, True)


def resume(name: str) -> None:
    _set_paused(name, False)


def _set_paused(name: str, paused: bool) -> None:
    with lifecycle.vm_lock(name):
        vm = get(name)
        lifecycle.require(vm.record, "pause" if paused else "resume")
        assert isinstance(vm.record, VmRecord)
        machine = _machine(vm.record)
        if machine is None:
            raise ConflictError(f"VM {name} is not running")
        try:
            machine.pause() if paused else machine.resume()
        finally:
            machine.close()
        vm.record.phase = (Phase.PAUSED if paused else Phase.RUNNING).value
        vm.record.save()


def log_path(name: str) -> Path:
    vm = get(name)
    hypervisor = vm.record.hypervisor if isinstance(vm.record, VmRecord) else "qemu"
    return get_backend(hypervisor).channels(vm.record.dir).console_log


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
    path = log_path(name)
    out.write(tail_lines(path, n))
    out.flush()
    pos = path.stat().st_size if path.exists() else 0
    while True:
        active = load_entry(name).is_active() if paths.vm_dir(name).is_dir() else False
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


def up(target: Any, run: RunConfig | None = None, *, source: str | None = None,
       revision: str = "", cold: bool = False) -> Vm:  # fmt: skip
    """Start a detached VM and return once it answers.

    ``target`` is a :class:`~mvm.config.Project` (built if needed), an
    :class:`~mvm.image.builder.Image` (its mvm.toml's runtime settings apply
    when it was built from a project in this process), or a template name
    given as ``"template:NAME"`` (restored from the template's snapshot when it
    has one, unless ``cold``).  mvm.toml's ports, network and
    ``[credentials]`` apply as they do for ``mvmctl up``.
    """
    from mvm.config.schema import Project
    from mvm.image.builder import Image, build

    run = run or RunConfig()
    run.attached = False
    if isinstance(target, str) and target.startswith("template:"):
        from mvm.runtime.templates import template_run

        image, defaults, rev = template_run(target.split(":", 1)[1])
        label, revision = target, rev
    elif isinstance(target, Project):
        image = build(target)
        defaults, label = RuntimeDefaults.from_spec(target.spec), str(target.root)
    elif isinstance(target, Image):
        defaults = (RuntimeDefaults.from_spec(target.spec) if target.spec is not None
                    else RuntimeDefaults.from_meta(target.meta))  # fmt: skip
        image, label = target, "python-api"
    else:
        raise TypeError("up() takes a Project, an Image or 'template:NAME'")
    resolved = resolve(image, run, defaults, source=source or label, revision=revision, who="api")
    restore = None
    if isinstance(target, str) and not cold:
        from mvm.runtime.templates import template_restore

        restore = template_restore(image)
    started = start(resolved, restore=restore)
    started.machine.close()
    return Vm(started.record)
