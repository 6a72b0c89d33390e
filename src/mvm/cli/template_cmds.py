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
        click.option("--cpus", type=int, default=2, show_default=True, help="Default vCPUs."),
        click.option("--mem", type=int, default=1024, show_default=True,
                     help="Default memory in MiB."),
        click.option("--data-disk", "data_disk", type=int, default=None, metavar="MIB",
                     help="Data disk size in MiB (recorded for data volumes)."),
    ]):  # fmt: skip
        f = opt(f)
    return f


def _settings(flake: str, profile: str, role: str, cpus: int, mem: int, disk: int | None) -> Any:
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
def create(name: str, flake: str, profile: str, cpus: int, mem: int, data_disk: int | None,
           role: str) -> None:  # fmt: skip
    """Register template NAME built from a project directory."""
    from mvm.templates import store

    t = store.create(name, _settings(flake, profile, role, cpus, mem, data_disk))
    click.echo(f"{name}: created ({t.settings.role}, {t.settings.flake}); "
               f"next: mvmctl template build {name}")  # fmt: skip


@template.command("create-multi")
@NAME
@_settings_options
@click.option("--roles", required=True, help="Comma-separated roles, e.g. worker,gateway.")
def create_multi(name: str, flake: str, profile: str, cpus: int, mem: int,
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
def build(name: str, force: bool) -> None:
    """Build NAME; a new revision appears only when its inputs changed."""
    from mvm.templates.build import build as do_build

    r = do_build(name, force=force)
    if r.created:
        click.echo(f"{name}: built revision {r.revision} ({r.seconds:.1f}s)")
    else:
        click.echo(f"{name}: up to date at revision {r.revision}")


@template.command("edit")
@NAME
@click.option("--flake", default=None, help="Project directory.")
@click.option("--profile", default=None, help="[profiles.NAME] of mvm.toml.")
@click.option("--role", default=None, help="worker or gateway.")
@click.option("--cpus", type=int, default=None, help="Default vCPUs.")
@click.option("--mem", type=int, default=None, help="Default memory in MiB.")
@click.option("--data-disk", "data_disk", type=int, default=None, metavar="MIB",
              help="Data disk size in MiB (0 removes it).")  # fmt: skip
def edit(name: str, flake: str | None, profile: str | None, role: str | None, cpus: int | None,
         mem: int | None, data_disk: int | None) -> None:  # fmt: skip
    """Change NAME's settings; rebuild for them to take effect."""
    from mvm.templates import store

    store.edit(name, flake=flake, profile=profile, role=role, cpus=cpus, memory_mib=mem,
               data_disk_mib=data_disk)  # fmt: skip
    click.echo(f"{name}: updated; run `mvmctl template build {name}` for it to take effect")


def _summary(t: Any) -> dict[str, Any]:
    from mvm.errors import TemplateError
    from mvm.templates import store

    revs = store.revisions(t.name)
    try:
        current = store.current_id(t.name)
    except TemplateError:  # a damaged pointer must not hide every other template
        return {**t.to_json(), "current": None, "revisions": len(revs), "status": "damaged"}
    status = "not built" if current is None else ("needs rebuild" if t.needs_rebuild else "ready")
    return {**t.to_json(), "current": current, "revisions": len(revs), "status": status}


@template.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_(as_json: bool) -> None:
    """List templates."""
    from mvm.templates import store

    rows = [_summary(t) for t in store.list_templates()]
    if as_json:
        emit_json(rows)
        return
    table(
        ["NAME", "ROLE", "CPUS", "MEM", "CURRENT", "REVS", "STATUS", "FLAKE"],
        [[r["name"], r["settings"]["role"], r["settings"]["cpus"], r["settings"]["memory_mib"],
          r["current"], r["revisions"], r["status"], r["settings"]["flake"]] for r in rows],
    )  # fmt: skip


@template.command("info")
@NAME
@click.option("--json", "as_json", is_flag=True)
def info(name: str, as_json: bool) -> None:
    """Show NAME's settings and revisions (date, size, checksums, current)."""
    from mvm.templates import store

    data = _summary(store.load(name))
    revs = []
    for rev in store.revisions(name):
        sizes = rev.sizes()
        revs.append({
            "id": rev.id, "created_at": rev.created_at, "size": sum(sizes.values()),
            "sizes": sizes, "checksums": rev.checksums, "settings": rev.settings,
            "current": rev.id == data["current"],
        })  # fmt: skip
    data["revisions"] = revs
    if as_json:
        emit_json(data)
        return
    s = data["settings"]
    for key, value in [("name", name), ("status", data["status"]), ("origin", data["origin"]),
                       ("flake", s["flake"]), ("profile", s["profile"]), ("role", s["role"]),
                       ("cpus", s["cpus"]), ("memory_mib", s["memory_mib"]),
                       ("data_disk_mib", s["data_disk_mib"]), ("created", data["created_at"]),
                       ("updated", data["updated_at"]), ("current", data["current"])]:  # fmt: skip
        click.echo(f"{key + ':':<15}{'-' if value is None else value}")
    click.echo("revisions:" if revs else "revisions:     none")
    for r in reversed(revs):
        mark = "*" if r["current"] else " "
        tag = "  (current)" if r["current"] else ""
        click.echo(f"  {mark} {r['id']}  {r['created_at']}  {_mb(r['size'])}{tag}")
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
def push(name: str) -> None:
    """Upload NAME's current revision to the registry and make it current there."""
    from mvm.templates import sync
    from mvm.templates.registry import from_env

    registry = from_env()
    try:
        r = sync.push(name, registry, progress=_progress())
    finally:
        registry.close()
    if r.bytes:
        click.echo(
            f"{name}: pushed {r.revision} to {registry.description} "
            f"({r.files} files, {_mb(r.bytes)}, {r.seconds:.1f}s, {r.mb_per_s:.1f} MB/s)"
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
    if r.bytes:
        click.echo(f"{name}: pulled {r.revision} ({r.files} files, {_mb(r.bytes)}, "
                   f"{r.seconds:.1f}s, {r.mb_per_s:.1f} MB/s); verified")  # fmt: skip
    else:
        click.echo(f"{name}: {r.revision} already here and intact; nothing transferred")


@template.command("verify")
@NAME
@click.option("--revision", default=None, help="Revision id (default: current).")
def verify(name: str, revision: str | None) -> None:
    """Recompute every sha256 against checksums.json; fail naming a bad file."""
    from mvm.templates import store

    rev = store.verify(name, store.resolve_local(name, revision) if revision else None)
    click.echo(f"{name}: {rev.id} ok ({len(rev.checksums)} files verified)")
