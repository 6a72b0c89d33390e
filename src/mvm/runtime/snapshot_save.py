"""Saving snapshots: of a freshly booted, ready VM (``template build --snapshot``)
and of a running VM (``fork``).

A template snapshot never holds secrets or host data: its VM boots with no
drives, no credentials and its ports forwarded to free host ports (the
template's own may be in use); it is saved once every declared port
answers and the guest's control port answers ``ping``.  Its RAM lives in
the snapshot directory (shared), so restored clones map it copy-on-write.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from mvm import channels
from mvm.backends.spec import PortForward
from mvm.errors import BackendError, MvmError, SnapshotError
from mvm.log import get_logger
from mvm.runtime import rootfs, snapshots, topology
from mvm.runtime.snapshots import Snapshot

if TYPE_CHECKING:
    from mvm.backends.base import Machine
    from mvm.runtime.resolve import ResolvedRun

log = get_logger(__name__)
READY_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_answers(port: int, timeout: float = 1.0) -> bool:
    """Whether a service answers behind a forwarded port: slirp accepts at once on the
    host side and closes the connection when the guest refuses, so an accepted
    connection counts only if it is not closed straight away."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(0.4)
            try:
                return s.recv(1) != b""
            except TimeoutError:
                return True  # open and waiting for a request (HTTP)
            except OSError:
                return False
    except OSError:
        return False


def wait_ports(ports: tuple[PortForward, ...], machine: Machine, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in ports:
        if p.proto != "tcp":
            continue
        while not port_answers(p.host):
            if not machine.alive():
                raise SnapshotError(
                    "the VM exited before its services were ready",
                    hint="see its console output with MVM_TRACE_BOOT=1",
                )
            if time.monotonic() > deadline:
                raise SnapshotError(
                    f"guest port {p.guest} did not answer within {timeout:.0f}s: "
                    "the service is not ready, nothing was saved"
                )
            time.sleep(0.1)


def wait_services(name: str, machine: Machine, timeout: float) -> None:
    """Wait until the guest agent reports every service's readiness check passing
    (``[services.X] ready = …``); an unhealthy or failed service is an error naming it."""
    from mvm.runtime import guest

    deadline = time.monotonic() + timeout
    waiting: list[str] = []
    while time.monotonic() < deadline:
        if not machine.alive():
            raise SnapshotError("the VM exited before its services were ready")
        try:
            st = guest.status(name, timeout=min(30.0, max(1.0, deadline - time.monotonic())))
        except MvmError:
            time.sleep(0.2)  # the agent is still starting
            continue
        bad = [s.name for s in st.services if s.health in ("unhealthy", "down")]
        if bad:
            raise SnapshotError(f"service {bad[0]} is {_health(st, bad[0])}: nothing was saved",
                                hint="its readiness check (ready = …) must pass")  # fmt: skip
        waiting = [s.name for s in st.services if s.health == "starting"]
        if not waiting:
            return
        time.sleep(0.2)
    what = f"service {waiting[0]} is not ready" if waiting else "the guest agent did not answer"
    raise SnapshotError(f"{what} after {timeout:.0f}s: nothing was saved")


def _health(st: object, name: str) -> str:
    for s in getattr(st, "services", ()):
        if s.name == name:
            return str(s.health)
    return "unhealthy"


def template_snapshot(run: ResolvedRun, into: Path, *, timeout: float = READY_TIMEOUT) -> Snapshot:
    """Boot ``run`` (secret-free), wait until it is ready, save it; the checked snapshot
    files are then moved into the directory ``into`` (a revision being staged)."""
    from mvm.runtime.start import start
    from mvm.runtime.vm import down

    ports = tuple(replace(p, host=free_port(), address="127.0.0.1") for p in run.ports)
    run = replace(run, name=f"snap-{os.getpid()}-{os.urandom(3).hex()}", name_explicit=True,
                  ports=ports, volumes=(), config_files=(), secret_files=(), credentials=(),
                  attached=False)  # fmt: skip
    tmp = snapshots.staging(into)
    try:
        started = start(run, snapshot_source=tmp)
        try:
            machine, spec = started.machine, started.spec
            assert spec is not None
            wait_ports(ports, machine, timeout)
            if run.image.meta.agent_binary == "real":
                wait_services(run.name, machine, timeout)
            ch = machine.backend.channels(spec.run_dir)
            try:
                channels.control_request(ch, "ping", timeout=timeout)
            except BackendError as exc:
                raise SnapshotError(f"the guest's control port did not answer: {exc.message}",
                                    hint="rebuild the image with this mvm") from exc  # fmt: skip
            kernel_sha = snapshots.file_sha256(spec.kernel)
            machine.snapshot(tmp / snapshots.STATE, memory_mib=spec.memory_mib, shared_ram=True)
            if run.image.accessible:  # its writable rootfs, as the saved state knows it
                rootfs.clone(rootfs.path(spec.run_dir), tmp / snapshots.ROOTFS)
            snapshots.write_meta(
                tmp, hypervisor=machine.backend.name, version=machine.backend.version(),
                topology=topology.of(spec, machine.backend), kernel_sha256=kernel_sha,
                image_hash=run.image.input_hash, shared_ram=True,
            )  # fmt: skip
        finally:
            with contextlib.suppress(Exception):
                machine.kill()
            machine.close()
            with contextlib.suppress(Exception):
                down(run.name)
        snap = snapshots.load(tmp)
        for name in snap.files():
            os.rename(tmp / name, into / name)
        return snapshots.Snapshot(into, snap.meta)
    finally:
        snapshots.discard(tmp)


def fork_snapshot(machine: Machine, run_dir: Path, dest_parent: Path, *, kernel: Path,
                  image_hash: str, memory_mib: int) -> Snapshot:  # fmt: skip
    """Pause a running VM, save its state (RAM in the stream), resume it."""
    topo = topology.load(run_dir)
    if topo is None:
        raise SnapshotError("this VM was started by an mvm that did not record its devices; "
                            "it cannot be forked")  # fmt: skip
    disks = topo.get("disks", [])
    if any(str(d).startswith("rw") for d in disks[1:]) or any("ephemeral" in str(d) for d in disks):
        raise SnapshotError("a VM with a data volume (or started by an mvm that kept a dev "
                            "rootfs in a temp overlay) cannot be forked")  # fmt: skip
    own_rootfs = bool(disks) and str(disks[0]) == "rw"
    tmp = snapshots.staging(dest_parent)
    try:
        kernel_sha = snapshots.file_sha256(kernel)
        was_running = machine.status() == "running"  # a paused source stays paused
        try:
            machine.snapshot(tmp / snapshots.STATE, memory_mib=memory_mib, shared_ram=False)
            if own_rootfs:  # stopped, disk flushed: the copy matches the saved state
                rootfs.clone(rootfs.path(run_dir), tmp / snapshots.ROOTFS)
        finally:
            if was_running:
                with contextlib.suppress(BackendError):
                    machine.resume()
        snapshots.write_meta(
            tmp, hypervisor=machine.backend.name, version=machine.backend.version(),
            topology=topo, kernel_sha256=kernel_sha, image_hash=image_hash, shared_ram=False,
        )  # fmt: skip
        return snapshots.publish(tmp, dest_parent / f"snap-{os.urandom(4).hex()}")
    except BaseException:
        snapshots.discard(tmp)
        raise
