"""Template records and their revisions under ``MVM_HOME/templates``.

Layout::

    templates/
      .NAME.lock                 flock serialising every change to NAME
      .tmp-KIND-PID-XXXX/        staging (builds, pulls); never looks usable
      NAME/
        template.json            settings (flake, profile, role, cpus, mem, data disk);
                                 cpus/mem may be null: "take the project's value"
        current                  the id of the revision ``up --template`` boots
        revisions/REV/           kernel, initramfs.cpio, rootfs.ext4,
                                 revision.json, checksums.json, signature.json

A revision is immutable once it appears, and it appears with one
``rename`` of a fully written and verified staging directory; ``current`` is
moved after that.  So a crash at any point leaves either the old state or
the new one, never a revision that looks usable but is not.

Revision ids are ``rN-DIGEST8``: ``N`` orders revisions for humans, the
digest prefix of ``checksums.json`` ties the id to its exact content (see
:mod:`mvm.templates.integrity`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvm import paths
from mvm.errors import (
    ConfigError,
    ConflictError,
    IntegrityError,
    MetadataError,
    NotFoundError,
    StateError,
    TemplateError,
)
from mvm.image.builder import Image
from mvm.image.meta import MAX_BYTES, MEMORY_RANGE, VCPUS_RANGE, ImageMeta, read_capped
from mvm.state.atomic import atomic_file, locked, private_tempdir, sweep_dead, write_json
from mvm.templates import integrity

if TYPE_CHECKING:
    from mvm.templates.signing import Provenance

SCHEMA = 1
ROLES: tuple[str, ...] = ("worker", "gateway")
CPUS_RANGE = VCPUS_RANGE  # the same bounds as mvm.toml's vcpus / memory_mib
MEM_RANGE = MEMORY_RANGE
DATA_DISK_RANGE = (1, 1 << 22)  # 1 MiB .. 4 TiB
# always used with fullmatch: ``$`` alone would accept a trailing newline
REV_RE = re.compile(r"r([1-9][0-9]{0,8})-([0-9a-f]{8})")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _int_in(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"invalid {what} {value!r}: must be an integer between {lo} and {hi}")
    return value


def validate_name(name: Any) -> str:
    """A template name (a full match: ``"x\\n"`` is refused), else ``ConfigError``."""
    if not isinstance(name, str) or not paths.NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid template name {name!r}: use 1-63 characters a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Settings:
    """What a template is built from and how its VMs run by default.

    ``cpus``/``memory_mib`` of None mean "the project's ``vcpus``/``memory_mib``":
    a template overrides mvm.toml only where ``--cpus``/``--mem`` said so.
    Records written before that (with numbers) keep their numbers.
    """

    flake: str
    profile: str = "default"
    role: str = "worker"
    cpus: int | None = None
    memory_mib: int | None = None
    data_disk_mib: int | None = None

    def validated(self) -> Settings:
        """Return self if every value makes sense, else raise ``ConfigError``."""
        if not isinstance(self.flake, str) or not self.flake:
            raise ConfigError("invalid --flake: must be a project directory")
        if not isinstance(self.profile, str) or not re.fullmatch(
            r"[A-Za-z0-9_.-]{1,64}", self.profile
        ):
            raise ConfigError(
                f"invalid --profile {self.profile!r}: use letters, digits, '_', '.', '-'"
            )
        if self.role not in ROLES:
            raise ConfigError(f"invalid --role {self.role!r}: must be one of {', '.join(ROLES)}")
        if self.cpus is not None:
            _int_in(self.cpus, "--cpus", *CPUS_RANGE)
        if self.memory_mib is not None:
            _int_in(self.memory_mib, "--mem (MiB)", *MEM_RANGE)
        if self.data_disk_mib is not None:
            _int_in(self.data_disk_mib, "--data-disk (MiB)", *DATA_DISK_RANGE)
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str) -> Settings:
        if not isinstance(data, dict):
            raise StateError(f"{where}: settings must be an object")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known}).validated()
        except (TypeError, ConfigError) as exc:
            raise StateError(f"{where}: invalid template settings ({exc})") from exc

    @property
    def profile_arg(self) -> str | None:
        """The profile for ``load_project`` ("default" means the top level)."""
        return None if self.profile == "default" else self.profile

    def effective(self, vcpus: int, memory_mib: int) -> tuple[int, int]:
        """(cpus, memory) for a project whose mvm.toml says ``vcpus``/``memory_mib``."""
        return (
            vcpus if self.cpus is None else self.cpus,
            memory_mib if self.memory_mib is None else self.memory_mib,
        )

    def source(self, key: str) -> str:
        """Where ``cpus``/``memory_mib`` comes from: ``template`` or ``project``."""
        return "project" if getattr(self, key) is None else "template"


@dataclass
class Template:
    """The record in ``template.json``."""

    name: str
    settings: Settings
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    needs_rebuild: bool = True
    origin: str = "local"  # "local" (created here) or "registry" (first pulled)
    schema: int = SCHEMA

    @property
    def dir(self) -> Path:
        return paths.template_dir(self.name)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["settings"] = self.settings.to_json()
        return data

    def save(self, directory: Path | None = None) -> None:
        self.updated_at = now_iso()
        write_json((directory or self.dir) / "template.json", self.to_json())

    @classmethod
    def from_json(cls, data: Any, where: str) -> Template:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise StateError(f"{where}: unsupported template record")
        name = data.get("name")
        if not isinstance(name, str) or not paths.NAME_RE.fullmatch(name):
            raise StateError(f"{where}: invalid template name {name!r}")
        for key in ("created_at", "updated_at", "origin"):
            if not isinstance(data.get(key, ""), str):
                raise StateError(f"{where}: {key} must be a string")
        if not isinstance(data.get("needs_rebuild", False), bool):
            raise StateError(f"{where}: needs_rebuild must be true or false")
        return cls(
            name=name,
            settings=Settings.from_json(data.get("settings"), where),
            created_at=data.get("created_at", ""),
            updated_at=data.get("updated_at", ""),
            needs_rebuild=data.get("needs_rebuild", False),
            origin=data.get("origin", "local"),
        )


@dataclass(frozen=True)
class BrokenTemplate:
    """A template directory whose ``template.json`` cannot be read: still listed,
    so it cannot vanish while ``create`` says the name is taken."""

    name: str
    reason: str


@dataclass(frozen=True)
class Revision:
    """One immutable, built revision of a template."""

    template: str
    id: str
    path: Path
    meta: ImageMeta  # revision.json, validated

    @property
    def number(self) -> int:
        return revision_number(self.id)

    @property
    def checksums(self) -> dict[str, str]:
        return integrity.load_checksums(self.path, self.where)

    @property
    def where(self) -> str:
        return f"template {self.template} revision {self.id}"

    @property
    def key(self) -> str:
        return self.meta.template.key if self.meta.template else ""

    @property
    def created_at(self) -> str:
        return self.meta.template.created_at if self.meta.template else self.meta.created_at

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.meta.template.settings) if self.meta.template else {}

    def sizes(self) -> dict[str, int]:
        out = {}
        for name in integrity.files_of(self.checksums):
            with contextlib.suppress(OSError):
                out[name] = (self.path / name).stat().st_size
        return out


def revision_number(rev_id: str) -> int:
    m = REV_RE.fullmatch(rev_id) if isinstance(rev_id, str) else None
    if not m:
        raise TemplateError(f"invalid revision id {rev_id!r} (expected rN-xxxxxxxx)")
    return int(m.group(1))


def check_id(rev_id: str, checksums: dict[str, str], where: str) -> None:
    """The id's digest suffix must match its checksum list (see module docstring)."""
    m = REV_RE.fullmatch(rev_id)
    if not m or integrity.digest(checksums)[:8] != m.group(2):
        raise IntegrityError(f"{where}: checksums.json does not match the revision id")


def validate_revision_id(rev_id: str) -> str:
    revision_number(rev_id)
    return rev_id


# -- locations and locks ---------------------------------------------------------------------


def template_dir(name: str) -> Path:
    return paths.template_dir(validate_name(name))


@contextlib.contextmanager
def lock(name: str) -> Iterator[None]:
    """Serialise changes to one template (the lock lives outside its directory,
    so deleting the template cannot race with someone waiting on it)."""
    validate_name(name)
    with private_lock(paths.templates_dir() / f".{name}.lock"):
        yield


@contextlib.contextmanager
def private_lock(path: Path) -> Iterator[None]:
    """``locked(path)`` with the lock file (and its directory) private to the owner."""
    paths.ensure_private_dir(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    with locked(path):
        yield


def staging_dir(kind: str) -> Path:
    """A fresh private directory next to the records, for an atomic rename later."""
    root = paths.ensure_private_dir(paths.templates_dir())
    for other in STAGING_KINDS:  # a killed pull or build of any kind leaves debris
        if other != kind:
            sweep_dead(root, f".tmp-{other}-")
    return private_tempdir(root, f".tmp-{kind}-")


STAGING_KINDS = ("build", "pull", "create", "delete", "old")


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text.encode())


# -- records ---------------------------------------------------------------------------------


def exists(name: str) -> bool:
    return (template_dir(name) / "template.json").is_file()


def load(name: str) -> Template:
    path = template_dir(name) / "template.json"
    try:
        raw = read_capped(path, MAX_BYTES)
    except FileNotFoundError:
        raise NotFoundError(
            f"no template named {name!r}", hint="`mvmctl template list` lists templates"
        ) from None
    except OSError as exc:
        raise StateError(f"{path}: unreadable template record ({exc.strerror or exc})") from exc
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise StateError(f"{path}: unreadable template record (not valid JSON)") from exc
    record = Template.from_json(data, str(path))
    if record.name != name:
        raise StateError(f"{path}: the record is for template {record.name!r}")
    return record


def list_all() -> list[Template | BrokenTemplate]:
    """Every template directory with a record, readable or not (sorted by name)."""
    root = paths.templates_dir()
    if not root.is_dir():
        return []
    out: list[Template | BrokenTemplate] = []
    for d in sorted(root.iterdir()):
        if paths.NAME_RE.fullmatch(d.name) and d.is_dir() and exists(d.name):
            try:
                out.append(load(d.name))
            except StateError as exc:
                out.append(BrokenTemplate(d.name, exc.message))
    return out


def list_templates() -> list[Template]:
    """The templates whose records load (see ``list_all`` for the broken ones too)."""
    return [t for t in list_all() if isinstance(t, Template)]


def resolve_flake(flake: str | Path, profile: str) -> str:
    """Absolute project directory for ``flake``; it must load with ``profile``."""
    from mvm.config import load_project

    project = load_project(
        Path(flake).expanduser(), profile=None if profile == "default" else profile
    )
    return str(project.root)


def create(name: str, settings: Settings) -> Template:
    """Register a template (no build yet).  Raises ``ConflictError`` if it exists."""
    validate_name(name)
    settings = replace(settings.validated(), flake=resolve_flake(settings.flake, settings.profile))
    with lock(name):
        if exists(name):
            raise ConflictError(
                f"template {name!r} already exists", hint="use `mvmctl template edit`"
            )
        record = Template(name=name, settings=settings)
        stage = staging_dir("create")
        try:
            record.save(stage)
            (stage / "revisions").mkdir()
            _install_dir(stage, template_dir(name))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return record


def _install_dir(stage: Path, dest: Path) -> None:
    """Move a fully prepared template directory into place (leftovers without a record go)."""
    if dest.exists():
        shutil.rmtree(dest)  # a directory without template.json is debris, not a template
    os.replace(stage, dest)


def create_multi(name: str, settings: Settings, roles: list[str]) -> list[Template]:
    """``NAME-ROLE`` for each role; all names are checked before any is created."""
    if not roles:
        raise ConfigError("--roles needs at least one role, e.g. worker,gateway")
    if len(set(roles)) != len(roles):
        raise ConfigError(f"--roles lists a role twice: {','.join(roles)}")
    names = [f"{name}-{role}" for role in roles]
    for n, role in zip(names, roles, strict=True):
        validate_name(n)
        replace(settings, role=role).validated()
        if exists(n):
            raise ConflictError(f"template {n!r} already exists")
    settings = replace(settings, flake=resolve_flake(settings.flake, settings.profile))
    created: list[Template] = []
    try:
        for n, role in zip(names, roles, strict=True):
            created.append(create(n, replace(settings, role=role)))
    except BaseException:
        for t in created:  # all or nothing
            shutil.rmtree(t.dir, ignore_errors=True)
        raise
    return created


FROM_PROJECT = "project"


def edit(name: str, **changes: Any) -> Template:
    """Change settings; the template then needs a rebuild for them to take effect.

    ``cpus``/``memory_mib`` may be ``"project"``: take mvm.toml's value again.
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        raise ConfigError("nothing to change: pass at least one of --flake, --profile, --role, "
                          "--cpus, --mem, --data-disk")  # fmt: skip
    if changes.get("data_disk_mib") == 0:
        changes["data_disk_mib"] = None  # --data-disk 0 removes the data disk
    for key in ("cpus", "memory_mib"):
        if changes.get(key) == FROM_PROJECT:
            changes[key] = None  # back to the project's vcpus / memory_mib
    with lock(name):
        record = load(name)
        try:
            new = replace(record.settings, **changes).validated()
        except TypeError as exc:
            raise ConfigError(f"invalid template setting: {exc}") from exc
        if "flake" in changes or "profile" in changes:
            new = replace(new, flake=resolve_flake(new.flake, new.profile))
        if new != record.settings:
            record.settings = new
            record.needs_rebuild = True
            record.save()
    return record


def in_use_by(name: str) -> list[str]:
    """Names of active VMs started from template ``name``."""
    from mvm.state.records import list_records

    source = f"template:{name}"
    return [r.name for r in list_records() if r.source == source and r.is_active()]


def delete(name: str, *, force: bool = False) -> None:
    """Remove a template and all its revisions (local only; the registry is untouched).

    A broken record (``template.json`` unreadable) goes only with ``force``.
    """
    with lock(name):
        try:
            load(name)
        except NotFoundError:
            raise
        except StateError as exc:
            if not force:
                raise StateError(
                    f"template {name!r} is broken: {exc.message}",
                    hint=f"`mvmctl template delete {name} --force` removes it",
                ) from exc
        users = in_use_by(name)
        if users and not force:
            raise ConflictError(
                f"template {name!r} is in use by VM{'s' if len(users) > 1 else ''} "
                f"{', '.join(users)}",
                hint="stop them with `mvmctl down`, or pass --force",
            )
        trash = staging_dir("delete")
        os.replace(template_dir(name), trash / name)  # disappears in one step
        shutil.rmtree(trash, ignore_errors=True)


# -- revisions -------------------------------------------------------------------------------


def parse_revision_meta(raw: bytes, name: str, where: str) -> ImageMeta:
    """A template revision's ``revision.json``: image metadata, template info and
    settings all valid, and made for template ``name`` (so one template's
    revision cannot be passed off as another's)."""
    meta = ImageMeta.from_bytes(raw, where)
    if meta.template is None:
        raise MetadataError(f"{where}: revision.json has no template section")
    if meta.template.name != name or meta.name != name:
        raise MetadataError(
            f"{where}: revision.json belongs to template {meta.template.name!r}, not {name!r}"
        )
    try:
        Settings.from_json(meta.template.settings, where)
    except StateError as exc:
        raise MetadataError(exc.message) from exc
    return meta


def load_revision(name: str, rev_id: str) -> Revision:
    validate_revision_id(rev_id)
    path = template_dir(name) / "revisions" / rev_id
    where = f"template {name} revision {rev_id}"
    try:
        raw = read_capped(path / "revision.json", MAX_BYTES)
    except FileNotFoundError:
        raise NotFoundError(f"template {name!r} has no revision {rev_id}") from None
    except OSError as exc:
        raise TemplateError(f"{where}: unreadable revision.json ({exc.strerror or exc})") from exc
    return Revision(name, rev_id, path, parse_revision_meta(raw, name, where))


def revisions(name: str) -> list[Revision]:
    """All complete revisions, oldest first."""
    root = template_dir(name) / "revisions"
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if REV_RE.fullmatch(d.name) and (d / integrity.CHECKSUMS).is_file():
            with contextlib.suppress(TemplateError, NotFoundError, MetadataError):
                out.append(load_revision(name, d.name))
    return sorted(out, key=lambda r: (r.created_at, r.number))


def resolve_local(name: str, ref: str) -> str:
    """A full revision id, or ``rN`` matched against this host's revisions of ``name``."""
    if REV_RE.fullmatch(ref):
        return ref
    if not re.fullmatch(r"r[1-9][0-9]{0,8}", ref):
        raise TemplateError(f"invalid revision {ref!r}: use rN or rN-xxxxxxxx")
    load(name)
    matches = [r.id for r in revisions(name) if r.id.startswith(ref + "-")]
    if not matches:
        raise NotFoundError(f"template {name!r} has no revision {ref}")
    if len(matches) > 1:
        raise ConflictError(f"revision {ref} of {name!r} is ambiguous: {', '.join(matches)}")
    return matches[0]


def current_id(name: str) -> str | None:
    try:
        text = read_capped(template_dir(name) / "current", 4096).decode(errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TemplateError(f"template {name}: cannot read current: {exc.strerror or exc}") from exc
    if not REV_RE.fullmatch(text):
        raise TemplateError(f"template {name}: current points at invalid revision {text!r}")
    return text


def set_current(name: str, rev_id: str) -> None:
    """Point ``current`` at an installed revision (caller holds the lock)."""
    load_revision(name, rev_id)
    _write_text_atomic(template_dir(name) / "current", rev_id + "\n")


def current_revision(name: str) -> Revision | None:
    rev_id = current_id(name)
    return load_revision(name, rev_id) if rev_id else None


def next_number(name: str) -> int:
    root = template_dir(name) / "revisions"
    numbers = [0]
    if root.is_dir():
        numbers += [int(m.group(1)) for d in root.iterdir() if (m := REV_RE.fullmatch(d.name))]
    return max(numbers) + 1


def install_revision(record: Template, stage: Path, rev_id: str, *, new_record: bool) -> Revision:
    """Move a verified staging directory in as ``rev_id`` and make it current.

    For a template not yet known here (first pull), ``stage`` holds the whole
    template directory and appears with one rename; otherwise ``stage`` is
    the revision directory.  The caller holds the lock.
    """
    dest_dir = template_dir(record.name)
    if new_record:
        _write_text_atomic(stage / "current", rev_id + "\n")
        record.save(stage)
        _install_dir(stage, dest_dir)
        return load_revision(record.name, rev_id)
    dest = dest_dir / "revisions" / rev_id
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():  # a damaged copy of the same id: swap it out in one step
        trash = staging_dir("old")
        os.replace(dest, trash / rev_id)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(stage, dest)
    set_current(record.name, rev_id)
    return load_revision(record.name, rev_id)


def verify(name: str, rev_id: str | None = None, *, cached: bool = False) -> Revision:
    """Recompute every sha256 of a revision (default: current) against checksums.json."""
    load(name)
    rev = load_revision(name, rev_id) if rev_id else current_revision(name)
    if rev is None:
        raise TemplateError(
            f"template {name!r} has no built revision",
            hint=f"run `mvmctl template build {name}` or `mvmctl template pull {name}`",
        )
    checksums = rev.checksums
    check_id(rev.id, checksums, rev.where)
    integrity.verify_dir(rev.path, checksums, where=rev.where, cached=cached)
    return rev


def provenance(rev: Revision) -> Provenance:
    """Who signed ``rev`` (a valid signature by any key; trust is separate)."""
    from mvm.templates import signing

    return signing.local_provenance(rev.path, rev.template, rev.id, rev.checksums)


def check_trust(rev: Revision) -> Provenance | None:
    """Refuse ``rev`` (``TrustError``) when trust is configured and its signer is
    not trusted.  Returns the provenance if it was checked (None: trust is not
    configured, so signatures were not even read)."""
    from mvm.templates import trust

    policy = trust.load_policy()
    if not policy.configured:
        return None
    prov = provenance(rev)
    policy.enforce(prov, rev.where)
    return prov


def current_image(name: str) -> tuple[Image, str]:
    """The image ``up --template NAME`` boots, after checking its checksums and,
    when trust is configured, its signature.

    Raises ``IntegrityError`` if any file of the current revision was
    modified, so a tampered template is never booted, and ``TrustError`` if
    it is not signed by a trusted key.  ``Image.revision`` is the validated
    metadata's JSON form.
    """
    rev = verify(name, cached=True)
    check_trust(rev)
    return Image(rev.path, rev.meta.to_json()), rev.id


def template_defaults(name: str) -> tuple[int, int]:
    """(cpus, memory MiB) a VM from the current revision gets unless told otherwise."""
    rev = current_revision(name)
    if rev is not None:
        return rev.meta.defaults.vcpus, rev.meta.defaults.memory_mib
    return project_defaults(load(name).settings)


def project_defaults(settings: Settings) -> tuple[int, int]:
    """(cpus, memory MiB) from the settings, filling gaps from the project's mvm.toml."""
    from mvm.config import load_project

    if settings.cpus is not None and settings.memory_mib is not None:
        return settings.cpus, settings.memory_mib
    spec = load_project(Path(settings.flake), profile=settings.profile_arg).spec
    return settings.effective(spec.vcpus, spec.memory_mib)
