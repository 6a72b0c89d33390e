"""Declared VMs: ``MVM_HOME/defs/NAME.json``, written by ``mvmctl create``.

A definition is what the seeds' ``microvm -c NAME -f FLAKE`` keeps in
``/var/lib/microvms/NAME``: where the VM comes from (a project directory or a
template), the run settings given at ``create``, and the image hash it was
last built at (so ``ls`` can say ``current``/``outdated``/``stale`` without a
running VM).  A VM record (``vms/NAME/vm.json``) exists only while the VM is
started; the definition outlives it, so ``start``/``restart``/``update`` know
what to boot.

Definitions are untrusted files like every record: each field is checked on
load, and a bad one is a one-line ``StateError``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mvm import paths
from mvm.errors import ConfigError, NotFoundError, StateError
from mvm.state.atomic import locked, read_json, write_json

SCHEMA = 1


@dataclass
class VmDef:
    name: str
    flake: str | None = None  # absolute project directory
    template: str | None = None
    profile: str | None = None
    cpus: int | None = None
    memory_mib: int | None = None
    ports: list[str] = field(default_factory=list)
    network: bool | None = None
    image_hash: str = ""  # what `create`/`update` last built
    created_at: float = field(default_factory=time.time)

    @property
    def source(self) -> str:
        return f"template:{self.template}" if self.template else str(self.flake)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> VmDef:
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
            raise StateError(f"{where}: not a VM definition of schema {SCHEMA}")
        types: dict[str, tuple[type, ...]] = {
            "name": (str,), "flake": (str, type(None)), "template": (str, type(None)),
            "profile": (str, type(None)), "cpus": (int, type(None)),
            "memory_mib": (int, type(None)), "ports": (list,), "network": (bool, type(None)),
            "image_hash": (str,), "created_at": (float, int),
        }  # fmt: skip
        values: dict[str, Any] = {}
        for key, allowed in types.items():
            if key not in raw:
                continue
            v = raw[key]
            if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
                raise StateError(f"{where}: field {key!r} has the wrong type")
            values[key] = v
        if "name" not in values or not all(isinstance(p, str) for p in values.get("ports", [])):
            raise StateError(f"{where}: malformed VM definition")
        d = cls(**values)
        if (d.flake is None) == (d.template is None):
            raise StateError(f"{where}: needs exactly one of flake or template")
        if d.flake is not None and not os.path.isabs(d.flake):
            raise StateError(f"{where}: flake must be an absolute path")
        return d


def defs_dir() -> Path:
    return paths.home() / "defs"


def def_path(name: str) -> Path:
    return defs_dir() / f"{paths.validate_name(name, 'VM name')}.json"


def exists(name: str) -> bool:
    return def_path(name).is_file()


def load(name: str) -> VmDef:
    path = def_path(name)
    try:
        raw = read_json(path)
    except FileNotFoundError:
        hint = f"`mvmctl create {name} --flake PATH` declares it"
        raise NotFoundError(f"no VM named {name!r} is defined", hint=hint) from None
    d = VmDef.from_json(raw, str(path))
    if d.name != name:
        raise StateError(f"{path}: names VM {d.name!r}, not {name!r}")
    return d


@contextlib.contextmanager
def def_lock(name: str) -> Iterator[None]:
    """One writer per definition (create, clone, rm, update)."""
    paths.ensure_private_dir(defs_dir())
    with locked(defs_dir() / f".{paths.validate_name(name, 'VM name')}.lock", timeout=120):
        yield


def find(name: str) -> VmDef | None:
    return load(name) if exists(name) else None


def save(d: VmDef) -> None:
    paths.ensure_private_dir(defs_dir())
    write_json(def_path(d.name), d.to_json())


def remove(name: str) -> bool:
    try:
        os.unlink(def_path(name))
        return True
    except FileNotFoundError:
        return False


def list_defs() -> list[VmDef]:
    out: list[VmDef] = []
    if not defs_dir().is_dir():
        return out
    for p in sorted(defs_dir().glob("*.json")):
        name = p.name[: -len(".json")]
        if not paths.NAME_RE.fullmatch(name):
            continue
        try:
            out.append(load(name))
        except StateError:
            continue  # listed by `ls` as broken through its record, if any
    return out


def project_dir_for(name: str, flake: str | Path | None = None) -> Path:
    """The project directory whose mvm.toml declares VM ``name``'s generators:
    ``flake`` if given, else its definition's, else the directory a running
    VM of that name was started from."""
    if flake is not None:
        return Path(flake)
    d = find(name)
    if d is not None:
        if d.flake is None:
            raise ConfigError(f"VM {name} comes from template {d.template}: templates do not "
                              "carry generators; give --flake PATH")  # fmt: skip
        return Path(d.flake)
    from mvm.state.records import VmRecord, load_entry

    if paths.vm_dir(name).is_dir():
        rec = load_entry(name)
        if isinstance(rec, VmRecord) and rec.source and os.path.isabs(rec.source):
            return Path(rec.source)
    raise NotFoundError(f"no project known for VM {name!r}",
                        hint=f"give --flake PATH, or declare it with "
                             f"`mvmctl create {name} --flake PATH`")  # fmt: skip
