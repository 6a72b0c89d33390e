"""QEMU snapshots: save a VM's full state to files, and restore it.

**Save** (:func:`save`): QMP ``stop``, then ``migrate`` to a file descriptor
handed over with ``getfd`` (never an ``exec:`` URI built from a path; QEMU
7.2 has no ``file:`` URI), ``query-migrate`` polled to ``completed`` with a
timeout, then the caller quits the VM or resumes it (fork).

**Memory sharing.** A VM started for a snapshot keeps its RAM in a file
(``-object memory-backend-file,share=on,mem-path=<dir>/ram``); with the
``x-ignore-shared`` capability the migration stream then carries only device
state, and the RAM *is* that file.  A restored clone maps it copy-on-write
(``share=off``: ``MAP_PRIVATE``), so clones of one snapshot share every page
they have not written through the page cache and never write back to it.
A VM whose RAM is anonymous (any VM started without a snapshot, e.g. the
source of a fork) migrates its RAM into the stream instead.

**Restore** (:func:`restore_options` at launch, :func:`finish_restore` once
QEMU answers): QEMU starts with the same device topology and
``-incoming fd:N`` (the state file, inherited), loads the state, stays
paused (the source was stopped when it was saved) until ``cont``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mvm.errors import BackendError

if TYPE_CHECKING:
    from mvm.backends.qemu.machine import QemuMachine

FDNAME = "mvm-snapshot"


def migrate_timeout(memory_mib: int) -> float:
    """A generous bound for writing or loading ``memory_mib`` of state under TCG."""
    return 60.0 + memory_mib / 8


def save(machine: QemuMachine, state: Path, *, memory_mib: int, shared_ram: bool) -> None:
    """Stop the guest and write its state to the new file ``state`` (in a private dir).

    With ``shared_ram`` the guest's RAM already lives in a file (the VM was
    launched with :func:`ram_backend` pointing there) and is left out of the stream.
    The guest stays paused; the caller resumes or quits it.
    """
    session = machine.session
    session.command("stop")
    caps = [{"capability": "x-ignore-shared", "state": shared_ram}]
    session.command("migrate-set-capabilities", 5.0, capabilities=caps)
    fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        session.send_fd(fd, FDNAME)
    finally:
        os.close(fd)  # QEMU holds its own copy now
    session.command("migrate", 10.0, uri=f"fd:{FDNAME}")
    deadline = time.monotonic() + migrate_timeout(memory_mib)
    while True:
        info = session.command("query-migrate", 5.0)
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            break
        if status in ("failed", "cancelled"):
            err = info.get("error-desc", status) if isinstance(info, dict) else status
            raise BackendError(f"saving the VM state failed: {err}")
        if time.monotonic() > deadline:
            session.command("migrate_cancel")
            raise BackendError("saving the VM state timed out")
        time.sleep(0.02)
    # the stream is complete once QEMU says so; make it durable before it is published
    fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ram_backend(path: Path, memory_mib: int, *, share: bool) -> list[str]:
    """The arguments that put guest RAM in ``path`` (shared: written back; else private)."""
    mem = str(path).replace(",", ",,")
    on = "on" if share else "off"
    return [
        "-object", f"memory-backend-file,id=mem,size={memory_mib}M,mem-path={mem},share={on}",
        "-machine", "memory-backend=mem",
    ]  # fmt: skip


def start_incoming(machine: QemuMachine, fd: int, *, shared_ram: bool) -> None:
    """Start loading the state from the fd QEMU inherited (``-incoming defer``)."""
    caps = [{"capability": "x-ignore-shared", "state": shared_ram}]
    machine.session.command("migrate-set-capabilities", 5.0, capabilities=caps)
    machine.session.command("migrate-incoming", 5.0, uri=f"fd:{fd}")


def wait_loaded(machine: QemuMachine, memory_mib: int) -> None:
    """Wait until the incoming state is loaded (QEMU leaves ``inmigrate``)."""
    deadline = time.monotonic() + migrate_timeout(memory_mib)
    while True:
        if not machine.alive():
            raise machine.launch_error("QEMU exited while loading the snapshot")
        reply = machine.session.command("query-status", 5.0)
        status = reply.get("status") if isinstance(reply, dict) else None
        if status not in ("inmigrate", "prelaunch", None):
            if status in ("paused", "postmigrate", "running"):
                return
            raise machine.launch_error(f"QEMU could not load the snapshot (state {status})")
        if time.monotonic() > deadline:
            raise machine.launch_error("loading the snapshot timed out")
        time.sleep(0.005)
