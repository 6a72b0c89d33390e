"""``mvmctl template …``: thin wrappers over :mod:`mvm.templates`.

Values are validated by the library (one-line ``ConfigError``s), not by
click types, so every bad value gets the same short message and exit code.
Progress bars are drawn only here, and only when stderr is a terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mvm.cli.main import cli
from mvm.cli.render import emit_json, table

NAME = click.argument("name")


@cli.group(context_settings={"help_option_names": ["-h", "--help"]})
def template() -> None:
    """Named, reusable images with revisions; push/pull through a registry."""


def _settings_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--flake", default=".", show_default=True,
                     help="Project directory holding mvm.toml (stored absolute)."),
        click.option("--profile", default="default", show_default=True,
                     help="[profiles.NAME] of mvm.toml to build."),
        click.option("--cpus", type=int, default=None,
                     help="Default vCPUs (default: the project's vcpus)."),
        click.option("--mem", type=int, default=None,
                     help="Default memory in MiB (default: the project's memory_mib)."),
        click.option("--data-disk", "data_disk", type=int, default=None, metavar="MIB",
                     help="Data disk size in MiB (recorded for data volumes)."),
    ]):  # fmt: skip
        f = opt(f)
    return f


def _settings(flake: str, profile: str, role: str, cpus: int | None, mem: int | None,
              disk: int | None) -> Any:  # fmt: skip
    from mvm.templates.store import Settings

    return Settings(flake=flake, profile=profile, role=role, cpus=cpus, memory_mib=mem,
                    data_disk_mib=disk or None)  # fmt: skip


class _RichProgress:
    """A transient rich progress bar on stderr (thread-safe ``advance``)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )  # fmt: skip
        self._task: Any = None

    def begin(self, label: str, total: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task(label, total=total)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def end(self) -> None:
        self._bar.stop()


def _progress() -> Any:
    return _RichProgress() if sys.stderr.isatty() else None


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@template.command("init")
@NAME
@click.option(
    "--local",
    is_flag=True,
    default=True,
    help="Scaffold from mvm's built-in minimal project (the default and only source).",
)
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Where to create the project (default: ./NAME).")  # fmt: skip
def init(name: str, local: bool, directory: str | None) -> None:
    """Create NAME/ (mvm.toml, .gitignore, README.md) and register template NAME."""
    from mvm.errors import ConflictError
    from mvm.templates import scaffold, store

    dest = Path(directory or name)
    if store.exists(name):
        raise ConflictError(f"template {name!r} already exists")
    created_dir = not dest.exists()
    files = scaffold.scaffold(dest, name)
    try:
        store.create(name, store.Settings(flake=str(dest)))
    except BaseException:
        for f in files:
            f.unlink(missing_ok=True)
        if created_dir:
            dest.rmdir()
        raise
    click.echo(f"{name}: created {dest}/ ({', '.join(f.name for f in files)}); "
               f"next: mvmctl template build {name}")  # fmt: skip


@template.command("create")
@NAME
@_settings_options
@click.option("--role", default="worker", show_default=True, help="worker or gateway.")
@click.option("--image", "image_ref", metavar="REF",
              help="Build from an OCI image instead of a project: oci-archive:PATH, "
                   "docker-archive:PATH, oci:DIR[:TAG] or docker://NAME (a local image is "
                   "copied into MVM_HOME).")  # fmt: skip
def create(name: str, flake: str, profile: str, cpus: int | None, mem: int | None,
           data_disk: int | None, role: str, image_ref: str | None) -> None:  # fmt: skip
    """Register template NAME built from a project directory (or an OCI image)."""
    from mvm.errors import ConfigError, ConflictError
    from mvm.templates import scaffold, store

    if image_ref:
        if flake != "." or profile != "default":
            raise ConfigError("--image makes its own project: --flake and --profile do not apply")
        if store.exists(name):
            raise ConflictError(
                f"template {name!r} already exists", hint="use `mvmctl template edit`"
            )
        flake = str(scaffold.image_project(name, image_ref))
    t = store.create(name, _settings(flake, profile, role, cpus, mem, data_disk))
    click.echo(f"{name}: created ({t.settings.role}, {t.settings.flake}); "
               f"next: mvmctl template build {name}")  # fmt: skip


@template.command("create-multi")
@NAME
@_settings_options
@click.option("--roles", required=True, help="Comma-separated roles, e.g. worker,gateway.")
def create_multi(name: str, flake: str, profile: str, cpus: int | None, mem: int | None,
                 data_disk: int | None, roles: str) -> None:  # fmt: skip
    """Register NAME-ROLE for each role (all or none)."""
    from mvm.templates import store

    role_list = [r.strip() for r in roles.split(",") if r.strip()]
    made = store.create_multi(name, _settings(flake, profile, "worker", cpus, mem, data_disk),
                              role_list)  # fmt: skip
    for t in made:
        click.echo(f"{t.name}: created ({t.settings.role})")


@template.command("build")
@NAME
@click.option("--force", is_flag=True, help="Rebuild the image even if cached.")
@click.option("--snapshot", is_flag=True,
              help="Also boot it, wait until its ports answer and save the ready VM with the "
                   "revision: `up --template` then restores instead of booting.")  # fmt: skip
def build(name: str, force: bool, snapshot: bool) -> None:
    """Build NAME; a new revision appears only when its inputs changed."""
    from mvm.templates.build import build as do_build

    hook = None
    if snapshot:
        from mvm.runtime.templates import snapshot_into

        hook = snapshot_into
    r = do_build(name, force=force, snapshot=hook)
    if r.created:
        click.echo(f"{name}: built revision {r.revision} ({r.seconds:.1f}s)")
    else:
        click.echo(f"{name}: up to date at revision {r.revision}")


@template.command("edit")
@NAME
@click.option("--flake", default=None, help="Project directory.")
@click.option("--profile", default=None, help="[profiles.NAME] of mvm.toml.")
@click.option("--role", default=None, help="worker or gateway.")
@click.option(
    "--cpus",
    default=None,
    metavar="N|project",
    help="Default vCPUs; `project` takes mvm.toml's vcpus again.",
)
@click.option(
    "--mem",
    default=None,
    metavar="MIB|project",
    help="Default memory in MiB; `project` takes mvm.toml's memory_mib again.",
)
@click.option("--data-disk", "data_disk", type=int, default=None, metavar="MIB",
              help="Data disk size in MiB (0 removes it).")  # fmt: skip
def edit(name: str, flake: str | None, profile: str | None, role: str | None, cpus: str | None,
         mem: str | None, data_disk: int | None) -> None:  # fmt: skip
    """Change NAME's settings; rebuild for them to take effect."""
    from mvm.templates import store

    store.edit(name, flake=flake, profile=profile, role=role, data_disk_mib=data_disk,
               cpus=_int_or_project(cpus, "--cpus"),
               memory_mib=_int_or_project(mem, "--mem"))  # fmt: skip
    click.echo(f"{name}: updated; run `mvmctl template build {name}` for it to take effect")


def _int_or_project(value: str | None, flag: str) -> int | str | None:
    """``edit --cpus/--mem``: a number, or ``project`` (give the choice back to mvm.toml)."""
    from mvm.errors import ConfigError

    if value is None or value == "project":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"invalid {flag} {value!r}: use a number or `project`") from None


def _summary(t: Any) -> dict[str, Any]:
    from mvm.errors import TemplateError
    from mvm.templates import store

    if isinstance(t, store.BrokenTemplate):
        return {"name": t.name, "status": "broken", "reason": t.reason, "current": None,
                "revisions": 0, "settings": None, "effective": None}  # fmt: skip
    revs = store.revisions(t.name)
    effective = _effective(t)
    try:
        current = store.current_id(t.name)
    except TemplateError:  # a damaged pointer must not hide every other template
        return {**t.to_json(), "current": None, "revisions": len(revs), "status": "damaged",
                "effective": effective}  # fmt: skip
    status = "not built" if current is None else ("needs rebuild" if t.needs_rebuild else "ready")
    return {**t.to_json(), "current": current, "revisions": len(revs), "status": status,
            "effective": effective}  # fmt: skip


def _effective(t: Any) -> dict[str, Any]:
    """What ``up --template`` uses for cpus/memory and where each comes from.

    The current revision's defaults when built (that is what boots); else the
    settings, filled from the project's mvm.toml (None if it cannot be read).
    """
    from mvm.errors import MvmError
    from mvm.templates import store

    values: tuple[int | None, int | None] = (None, None)
    try:
        rev = store.current_revision(t.name)
        if rev is not None:
            values = (rev.meta.defaults.vcpus, rev.meta.defaults.memory_mib)
        else:
            values = store.project_defaults(t.settings)
    except MvmError:
        values = (t.settings.cpus, t.settings.memory_mib)
    return {key: {"value": v, "source": t.settings.source(key)}
            for key, v in zip(("cpus", "memory_mib"), values, strict=True)}  # fmt: skip


def _shown(effective: dict[str, Any] | None, key: str) -> str:
    if effective is None:
        return "-"
    e = effective[key]
    return f"{'-' if e['value'] is None else e['value']} ({e['source']})"


@template.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_(as_json: bool) -> None:
    """List templates (a template whose record cannot be read shows as broken)."""
    from mvm.templates import store

    rows = [_summary(t) for t in store.list_all()]
    if as_json:
        emit_json(rows)
        return
    table(
        ["NAME", "ROLE", "CPUS", "MEM", "CURRENT", "REVS", "STATUS", "FLAKE"],
        [[r["name"], (r["settings"] or {}).get("role", "-"), _shown(r["effective"], "cpus"),
          _shown(r["effective"], "memory_mib"), r["current"], r["revisions"], r["status"],
          (r["settings"] or {}).get("flake", "-")] for r in rows],
    )  # fmt: skip


def _load_any(name: str) -> Any:
    """The record, or a ``BrokenTemplate`` if it exists but cannot be read."""
    from mvm.errors import NotFoundError, StateError
    from mvm.templates import store

    try:
        return store.load(name)
    except NotFoundError:
        raise
    except StateError as exc:
        return store.BrokenTemplate(store.validate_name(name), exc.message)


@template.command("info")
@NAME
@click.option("--json", "as_json", is_flag=True)
def info(name: str, as_json: bool) -> None:
    """Show NAME's settings and revisions (date, size, checksums, signer, current)."""
    from mvm.templates import store, trust

    data = _summary(_load_any(name))
    if data["status"] == "broken":
        if as_json:
            emit_json(data)
            return
        click.echo(f"{'name:':<15}{name}\n{'status:':<15}broken\n{'reason:':<15}{data['reason']}")
        click.echo(f"hint: `mvmctl template delete {name} --force` removes it")
        return
    policy = trust.load_policy()
    revs = []
    for rev in store.revisions(name):
        sizes = rev.sizes()
        prov = store.provenance(rev)
        revs.append({
            "id": rev.id, "created_at": rev.created_at, "size": sum(sizes.values()),
            "sizes": sizes, "checksums": rev.checksums, "settings": rev.settings,
            "current": rev.id == data["current"], "signer": prov.signer,
            "trusted": policy.trusted(prov), "signature": policy.describe(prov),
        })  # fmt: skip
    data["revisions"] = revs
    if as_json:
        emit_json(data)
        return
    s = data["settings"]
    for key, value in [("name", name), ("status", data["status"]), ("origin", data["origin"]),
                       ("flake", s["flake"]), ("profile", s["profile"]), ("role", s["role"]),
                       ("cpus", _shown(data["effective"], "cpus")),
                       ("memory_mib", _shown(data["effective"], "memory_mib")),
                       ("data_disk_mib", s["data_disk_mib"]), ("created", data["created_at"]),
                       ("updated", data["updated_at"]), ("current", data["current"])]:  # fmt: skip
        click.echo(f"{key + ':':<15}{'-' if value is None else value}")
    click.echo("revisions:" if revs else "revisions:     none")
    for r in reversed(revs):
        mark = "*" if r["current"] else " "
        tag = "  (current)" if r["current"] else ""
        click.echo(f"  {mark} {r['id']}  {r['created_at']}  {_mb(r['size'])}{tag}")
        click.echo(f"      {r['signature']}")
        for fname, digest in sorted(r["checksums"].items()):
            click.echo(f"      {fname:<15}sha256:{digest}")


@template.command("delete")
@NAME
@click.option("--force", is_flag=True, help="Delete even while VMs use it.")
def delete(name: str, force: bool) -> None:
    """Remove NAME and its revisions from this host (not from the registry)."""
    from mvm.templates import store

    store.delete(name, force=force)
    click.echo(f"{name}: deleted")


@template.command("push")
@NAME
@click.option("--force", is_flag=True, help="Upload every object, even those that check out.")
def push(name: str, force: bool) -> None:
    """Sign (if unsigned) and upload NAME's current revision; make it current there.

    Objects already in the registry are checked against the local checksums
    and sizes; missing or damaged ones are uploaded again.
    """
    from mvm.templates import sync
    from mvm.templates.registry import from_env

    registry = from_env()
    try:
        r = sync.push(name, registry, force=force, progress=_progress())
    finally:
        registry.close()
    if r.repaired:
        click.echo(f"{name}: {r.revision} repaired in {registry.description} "
                   f"({r.files} damaged or missing file{'s' if r.files > 1 else ''} "
                   f"uploaded again, {_mb(r.bytes)})")  # fmt: skip
    elif r.bytes:
        click.echo(
            f"{name}: pushed {r.revision} to {registry.description} "
            f"({r.files} files, {_mb(r.bytes)}, {r.seconds:.1f}s, {r.mb_per_s:.1f} MB/s); "
            f"signed by {r.signer}"
        )
    elif r.moved_current:
        click.echo(f"{name}: {r.revision} already in the registry; made it current")
    else:
        click.echo(f"{name}: {r.revision} already in the registry; nothing transferred")


@template.command("pull")
@NAME
@click.option(
    "--revision", default=None, help="rN or rN-xxxxxxxx (default: the registry's current)."
)
def pull(name: str, revision: str | None) -> None:
    """Download NAME from the registry, verify it, and make it current here."""
    from mvm.templates import sync
    from mvm.templates.registry import from_env

    registry = from_env()
    try:
        r = sync.pull(name, registry, revision=revision, progress=_progress())
    finally:
        registry.close()
    signed = f"signed by {r.signer}" if r.signer else "unsigned"
    if r.bytes:
        click.echo(f"{name}: pulled {r.revision} ({r.files} files, {_mb(r.bytes)}, "
                   f"{r.seconds:.1f}s, {r.mb_per_s:.1f} MB/s); verified; {signed}")  # fmt: skip
    else:
        click.echo(f"{name}: {r.revision} already here and intact; nothing transferred")


@template.command("verify")
@NAME
@click.option("--revision", default=None, help="Revision id (default: current).")
def verify(name: str, revision: str | None) -> None:
    """Recompute every sha256 against checksums.json and check the signature.

    Fails naming a bad file; when trust is configured, also fails for an
    unsigned revision or one whose signer is not trusted.
    """
    from mvm.templates import store, trust

    rev = store.verify(name, store.resolve_local(name, revision) if revision else None)
    policy = trust.load_policy()
    prov = store.provenance(rev)
    policy.enforce(prov, rev.where)
    click.echo(f"{name}: {rev.id} ok ({len(rev.checksums)} files verified); "
               f"{policy.describe(prov)}")  # fmt: skip


from mvm.cli import template_keys  # noqa: E402, F401 - registers `key`, `trust`, `sign`
