"""Imperative VM management, the seeds' ``microvm -c/-u/-R/-l``: create, start,
restart, update, clone, rm, and each VM's image freshness for ``ls``.

A defined VM (:mod:`mvm.runtime.defs`) boots the image it was last built at
(``VmDef.image_hash``), not whatever the project says now: editing mvm.toml
makes the VM **outdated** until ``update`` rebuilds it, and a rebuilt VM that
still runs the old image is **stale** until it restarts, as in microvm.nix:

=========  ==============================================  =========================
freshness  meaning                                         fix
=========  ==============================================  =========================
current    running (or would boot) what the project builds  -
outdated   the project changed since the last build         ``update VM --restart``
stale      rebuilt, but the running VM has the old image    ``restart VM``
=========  ==============================================  =========================

A VM started with ``run PATH``/``up --flake`` without ``create`` is managed
the same way through an implicit definition taken from its record, so
``restart`` and ``update`` work for it too (``update`` then saves the
definition).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvm import paths
from mvm.errors import ConflictError, MvmError, NotFoundError
from mvm.log import get_logger
from mvm.runtime import defs
from mvm.runtime.config import RunConfig
from mvm.runtime.defs import VmDef
from mvm.state.records import VmRecord, load_entry

if TYPE_CHECKING:
    from mvm.image.builder import Image
    from mvm.image.contents import Diff
    from mvm.runtime.resolve import ResolvedRun
    from mvm.runtime.start import Started
    from mvm.secrets.vars import Outcome

log = get_logger(__name__)

OUTDATED = "outdated (rebuild and restart: mvmctl update {name} --restart)"
STALE = "stale (restart: mvmctl restart {name})"


@dataclass
class Updated:
    definition: VmDef
    old_hash: str
    new_hash: str
    diff: Diff
    restarted: bool


def _record(name: str) -> VmRecord | None:
    if not paths.vm_dir(name).is_dir():
        return None
    rec = load_entry(name)
    return rec if isinstance(rec, VmRecord) else None


def definition(name: str) -> VmDef:
    """The VM's definition, or an implicit one from the record of a VM started from a
    project directory (``run PATH``)."""
    paths.validate_name(name, "VM name")
    d = defs.find(name)
    if d is not None:
        return d
    rec = _record(name)
    if rec is not None and rec.source and os.path.isabs(rec.source):
        cli = {k for k, v in rec.settings.items() if v in ("cli", "api")}
        return VmDef(name=name, flake=rec.source, image_hash=rec.image_hash,
                     cpus=rec.vcpus if "vcpus" in cli else None,
                     memory_mib=rec.memory_mib if "memory_mib" in cli else None)  # fmt: skip
    if rec is not None and rec.source.startswith("template:"):
        return VmDef(name=name, template=rec.source.split(":", 1)[1], image_hash=rec.image_hash)
    raise NotFoundError(f"no VM named {name!r} is defined",
                        hint=f"`mvmctl create {name} --flake PATH` declares it")  # fmt: skip


def create(name: str, *, flake: str | Path | None = None, template: str | None = None,
           profile: str | None = None, cpus: int | None = None, memory_mib: int | None = None,
           ports: list[str] | None = None, network: bool | None = None) -> VmDef:  # fmt: skip
    """Declare VM ``name`` (and build its image) without starting it."""
    from mvm.errors import ConfigError

    paths.validate_name(name, "VM name")
    if (flake is None) == (template is None):
        raise ConfigError("give exactly one of --flake PATH or --template NAME")
    with defs.def_lock(name):
        return _create(name, flake, template, profile, cpus, memory_mib, ports, network)


def _create(name: str, flake: str | Path | None, template: str | None, profile: str | None,
            cpus: int | None, memory_mib: int | None, ports: list[str] | None,
            network: bool | None) -> VmDef:  # fmt: skip
    if defs.exists(name):
        raise ConflictError(f"VM {name!r} is already defined",
                            hint=f"`mvmctl rm {name}` first, or `mvmctl clone` it")  # fmt: skip
    rec = _record(name)
    if rec is not None and rec.is_active():
        raise ConflictError(f"VM name {name!r} is in use by a running VM",
                            hint=f"`mvmctl down {name}` first")  # fmt: skip
    from mvm.runtime.config import parse_port

    for p in ports or []:
        parse_port(p)
    d = VmDef(name=name, template=template, profile=profile, cpus=cpus,
              memory_mib=memory_mib, ports=list(ports or []), network=network)  # fmt: skip
    if flake is not None:
        from mvm.config import load_project

        d.flake = str(load_project(flake, profile).root)
    d.image_hash = _build(d).input_hash
    defs.save(d)
    return d


def _build(d: VmDef) -> Image:
    """The image the project (or template) gives now, built if needed."""
    if d.template is not None:
        from mvm.runtime.templates import template_run

        return template_run(d.template)[0]
    from mvm.config import load_project
    from mvm.image.builder import build

    return build(load_project(d.flake, d.profile))


def _resolved(d: VmDef, attached: bool = False) -> ResolvedRun:
    """What starting ``d`` means: its last-built image (rebuilt only if it is gone),
    the project's current runtime settings, the definition's overrides."""
    from dataclasses import replace as dc_replace

    from mvm.image.builder import Image, build
    from mvm.runtime.resolve import RuntimeDefaults, resolve

    run = RunConfig(name=d.name, cpus=d.cpus, memory_mib=d.memory_mib, ports=list(d.ports),
                    network=d.network, attached=attached)  # fmt: skip
    if d.template is not None:
        from mvm.runtime.templates import template_run

        image, tdefaults, rev = template_run(d.template)
        return resolve(image, run, tdefaults, source=d.source, revision=rev)
    from mvm.config import load_project

    project = load_project(d.flake, d.profile)
    built = paths.images_dir() / d.image_hash if d.image_hash else None
    if built is not None and (built / "revision.json").is_file():
        image = dc_replace(Image.load(built), spec=project.spec)
    else:
        image = build(project)
        d.image_hash = image.input_hash
        if defs.exists(d.name):
            defs.save(d)
    return resolve(image, run, RuntimeDefaults.from_spec(project.spec), source=d.source)


def start_defined(name: str, *, attached: bool = False) -> Started:
    """Start a defined VM; ``ConflictError`` if it already runs.  Detached, the
    machine handle is closed on return; attached (``systemd``'s ExecStart), the
    caller pumps the console (:func:`mvm.runtime.attach.run_attached`)."""
    from mvm.runtime.start import start

    d = definition(name)
    rec = _record(name)
    if rec is not None and rec.is_active():
        raise ConflictError(f"VM {name} is already running",
                            hint=f"`mvmctl restart {name}` restarts it")  # fmt: skip
    started = start(_resolved(d, attached))
    if not attached:
        started.machine.close()
    return started


def restart(name: str) -> Started:
    """Stop the VM if it runs (its data volumes stay) and start it again: new
    credentials and vars are read, and the last-built image boots."""
    from mvm.runtime import vm

    d = definition(name)
    rec = _record(name)
    if rec is not None or paths.vm_dir(name).is_dir():
        vm.down(name)
    from mvm.runtime.start import start

    started = start(_resolved(d))
    started.machine.close()
    return started


def update(name: str, *, restart_vm: bool = False) -> Updated:
    """Rebuild the VM's image from its project (or the template's current revision)
    and say what changed; restart only when asked."""
    from mvm.image import contents

    d = definition(name)
    old = d.image_hash
    image = _build(d)
    old_manifest = contents.load(paths.images_dir() / old) if old else None
    change = contents.diff(old_manifest, contents.load(image.path))
    if old == image.input_hash:
        change = contents.Diff()
    d.image_hash = image.input_hash
    defs.save(d)
    restarted = False
    if restart_vm:
        restart(name)
        restarted = True
    return Updated(d, old, image.input_hash, change, restarted)


def clone(name: str, new: str) -> tuple[VmDef, list[Outcome]]:
    """Define ``new`` like ``name``: same source and settings, its own identity (name,
    run directory, volumes) and its own vars, generated fresh."""
    paths.validate_name(new, "VM name")
    d = definition(name)
    with defs.def_lock(new):
        return _clone(d, new)


def _clone(d: VmDef, new: str) -> tuple[VmDef, list[Outcome]]:
    if defs.exists(new) or _record(new) is not None:
        raise ConflictError(f"VM name {new!r} is already in use")
    nd = replace(d, name=new, created_at=time.time(), ports=[])  # a port binds once per host
    outcomes: list[Outcome] = []
    if nd.flake is not None:
        from mvm.config import load_project

        gens = load_project(nd.flake, nd.profile).spec.generators
        if gens:
            from mvm.secrets.vars import generate

            outcomes = generate(new, gens, regenerate=True)  # never a previous owner's
    defs.save(nd)
    return nd, outcomes


def remove(name: str, *, volumes: bool = False) -> list[str]:
    """Stop and forget VM ``name``: its record, definition and vars (and data
    volumes with ``volumes``).  Returns what was removed."""
    from mvm.runtime import vm
    from mvm.secrets import varstore

    paths.validate_name(name, "VM name")
    removed = []
    if paths.vm_dir(name).is_dir():
        vm.down(name, volumes=volumes)
        removed.append("vm")
    elif volumes:
        from mvm.drives import remove_volumes

        if remove_volumes(name):
            removed.append("volumes")
    if defs.remove(name):
        removed.append("definition")
    if varstore.vm_root(name).exists():
        with varstore.vm_lock(name):
            varstore.remove(name)
        removed.append("vars")
    if not removed:
        raise NotFoundError(f"no VM named {name!r}")
    return removed


def freshness(name: str, rec: VmRecord | None) -> str:
    """``current``, ``outdated (…)``, ``stale (…)``, or ``-`` when unknown (a template,
    or a project that no longer loads)."""
    try:
        d = definition(name)
    except MvmError:
        return "-"
    if d.template is not None:
        return "-"
    try:
        from mvm.config import load_project
        from mvm.image.builder import current_hash

        now = current_hash(load_project(d.flake, d.profile))
    except (MvmError, OSError) as exc:
        log.info("freshness of %s unknown: %s", name, exc)
        return "-"
    if now != d.image_hash:
        return OUTDATED.format(name=name)
    if rec is not None and rec.is_active() and rec.image_hash != d.image_hash:
        return STALE.format(name=name)
    return "current"


def listing() -> list[dict[str, Any]]:
    """``ls`` rows: every VM with a record (its live info) and every defined VM that
    is not running, each with its image freshness."""
    from mvm.runtime import vm

    rows = []
    seen = set()
    for v in vm.list_vms():
        info = v.info()
        rec = v.record if isinstance(v.record, VmRecord) else None
        info["image"] = freshness(v.name, rec) if rec is not None else "-"
        info["defined"] = defs.exists(v.name)
        rows.append(info)
        seen.add(v.name)
    for d in defs.list_defs():
        if d.name in seen:
            continue
        rows.append({"name": d.name, "state": "defined", "mode": None, "accel": None,
                     "pid": None, "uptime_s": None, "exit_code": None, "source": d.source,
                     "image": freshness(d.name, None), "defined": True})  # fmt: skip
    return sorted(rows, key=lambda r: str(r["name"]))
