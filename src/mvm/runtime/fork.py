"""``mvmctl fork NAME NEW``: a running VM saved (a brief pause) and a second VM
started from that state with its own identity and RNG; both keep running.

The fork's snapshot is private to this host (``MVM_HOME/snapshots/``) and
holds the source's RAM in its state stream (a cold-booted VM's memory is
anonymous); ``down NEW`` removes it when no VM refers to it any more.
The source's config/secrets drives and credentials are *not* carried over
(their files were removed once the source's hypervisor opened them): the
fork's guest unmounts them (``remount``) and keeps its processes.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from mvm import paths
from mvm.errors import ConflictError, SnapshotError, StateError
from mvm.runtime import lifecycle
from mvm.runtime.config import RunConfig
from mvm.runtime.restore import Restore
from mvm.runtime.start import Started, start
from mvm.state.records import VmRecord, list_entries

SNAPSHOTS = "snapshots"


def snapshots_dir() -> Path:
    return paths.ensure_private_dir(paths.home() / SNAPSHOTS)


def fork(name: str, new: str, ports: tuple[str, ...] = ()) -> Started:
    from mvm.image.builder import Image
    from mvm.image.meta import read_capped
    from mvm.runtime.resolve import RuntimeDefaults, resolve
    from mvm.runtime.snapshot_save import fork_snapshot
    from mvm.runtime.vm import _machine, get

    paths.validate_name(new, "VM name")
    with lifecycle.vm_lock(name):
        src = get(name)
        lifecycle.require(src.record, "fork")
        rec = src.record
        if not isinstance(rec, VmRecord):
            raise StateError(f"VM {name} has a broken record and cannot be forked")
        machine = _machine(rec)
        if machine is None:
            raise ConflictError(f"VM {name} is not running")
        if not machine.backend.capabilities.snapshots:
            machine.close()
            raise SnapshotError(f"VM {name} runs under {machine.backend.name}, whose VMs "
                                "cannot be forked yet (docs/firecracker.md)")  # fmt: skip
        image_dir = Path(rec.image)
        try:
            snap = fork_snapshot(machine, rec.dir, snapshots_dir(), kernel=image_dir / "kernel",
                                 image_hash=rec.image_hash, memory_mib=rec.memory_mib)  # fmt: skip
        finally:
            machine.close()
    import json

    revision = json.loads(read_capped(image_dir / "revision.json", 4 << 20))
    image = Image(image_dir, revision)
    cfg = RunConfig(name=new, cpus=rec.vcpus, memory_mib=rec.memory_mib, ports=list(ports),
                    project_credentials=[], forward_host_credentials=False)  # fmt: skip
    run = resolve(image, cfg, RuntimeDefaults(origin="fork"), source=f"fork:{name}",
                  revision=rec.revision)  # fmt: skip
    stale = bool(rec.volumes) or bool(rec.credentials)
    try:
        return start(run, restore=Restore(snap, stale_drives=stale))
    except BaseException:
        release(snap.dir, exclude=new)
        raise


def release(snapshot: Path, *, exclude: str) -> None:
    """Remove a private (fork) snapshot once no VM but ``exclude`` refers to it."""
    root = paths.home() / SNAPSHOTS
    if snapshot.parent != root:
        return  # a template's snapshot belongs to its revision
    for r in list_entries():
        if isinstance(r, VmRecord) and r.name != exclude and r.snapshot == str(snapshot):
            return
    with contextlib.suppress(OSError):
        shutil.rmtree(snapshot)
