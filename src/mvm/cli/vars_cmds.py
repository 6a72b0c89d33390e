"""``mvmctl vars …``: generate, list, get, export, import a VM's generated secrets."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from mvm.cli.main import cli
from mvm.cli.render import emit_json, table

PASSPHRASE_ENV = "MVM_VARS_PASSPHRASE"
BUNDLE_MAX = 64 << 20


def _generators(vm: str, flake: str | None) -> Any:
    from mvm.config import load_project
    from mvm.runtime.defs import project_dir_for

    project = load_project(project_dir_for(vm, flake))
    return project.spec.generators


def _passphrase(confirm: bool) -> str:
    """From ``$MVM_VARS_PASSPHRASE`` or a prompt on the controlling terminal (stdin
    may be the bundle): never from argv."""
    import getpass

    from mvm.errors import VarsError

    value = os.environ.get(PASSPHRASE_ENV)
    if value is not None:
        if not value:
            raise VarsError(f"{PASSPHRASE_ENV} is set but empty")
        return value
    try:
        with open("/dev/tty", "rb"):
            pass
        first = getpass.getpass("passphrase: ")
        if confirm and getpass.getpass("passphrase (again): ") != first:
            raise VarsError("the passphrases differ")
    except OSError as exc:
        raise VarsError(f"no terminal to ask for the passphrase: set {PASSPHRASE_ENV}") from exc
    if not first:
        raise VarsError("the passphrase is empty")
    return first


@cli.group("vars")
def vars_group() -> None:
    """Generated secrets per VM ([vars.generators.NAME] in mvm.toml)."""


@vars_group.command("generate")
@click.argument("vm")
@click.option("--flake", type=click.Path(), help="Project directory (default: the VM's own).")
@click.option("--regenerate", is_flag=True, help="Run generators again even if their vars exist.")
@click.option("--generator", "only", help="Only this generator.")
def generate(vm: str, flake: str | None, regenerate: bool, only: str | None) -> None:
    """Run VM's generators and store their output (secret files encrypted)."""
    from mvm.secrets import vars as vars_mod

    gens = _generators(vm, flake)
    if not gens:
        click.echo(f"{vm}: the project declares no [vars.generators]")
        return
    for o in vars_mod.generate(vm, gens, regenerate=regenerate, only=only):
        click.echo(f"{vm}: {o.generator}: {o.action}")


@vars_group.command("list")
@click.argument("vm")
@click.option("--flake", type=click.Path(), help="Project directory (default: the VM's own).")
@click.option("--json", "as_json", is_flag=True)
def list_(vm: str, flake: str | None, as_json: bool) -> None:
    """List VM's vars: generator, file, secret or public, size, state."""
    from mvm.errors import MvmError
    from mvm.secrets import vars as vars_mod
    from mvm.secrets import varstore

    stored = varstore.generators(vm)
    try:
        gens = _generators(vm, flake)
    except MvmError:
        gens = ()  # no project known (e.g. imported before `create`): show the store
    states = vars_mod.state(vm, gens)
    rows: list[dict[str, Any]] = []
    for g in gens:
        s = stored.get(g.name)
        for f in g.files:
            info = s.files.get(f.name) if s else None
            rows.append({"generator": g.name, "file": f.name, "secret": f.secret,
                         "size": info.get("size") if info else None,
                         "state": "ok" if info and states[g.name] == "ok" else
                         ("missing" if not info else states[g.name]),
                         "generated_at": s.generated_at if s else None})  # fmt: skip
    declared = {g.name for g in gens}
    for name, s in stored.items():
        if name in declared:
            continue
        for fname, info in sorted(s.files.items()):
            rows.append({"generator": name, "file": fname, "secret": bool(info.get("secret")),
                         "size": info.get("size"), "state": "undeclared" if gens else "stored",
                         "generated_at": s.generated_at})  # fmt: skip
    if as_json:
        emit_json(rows)
        return
    table(["VAR", "SECRET", "SIZE", "STATE", "GENERATED"],
          [[f"{r['generator']}/{r['file']}", "yes" if r["secret"] else "no", r["size"],
            r["state"], r["generated_at"]] for r in rows])  # fmt: skip


@vars_group.command("get")
@click.argument("vm")
@click.argument("var", metavar="GEN/FILE")
@click.option("--reveal", is_flag=True, help="Print a secret's value (public ones always are).")
def get(vm: str, var: str, reveal: bool) -> None:
    """Print one var's value (a secret only with --reveal)."""
    from mvm.errors import ConfigError, VarsError
    from mvm.secrets import varstore

    gen, sep, name = var.partition("/")
    if not sep or not gen or not name:
        raise ConfigError(f"expected GEN/FILE, got {var!r}")
    vf = varstore.read(vm, gen, name)
    if vf.secret and not reveal:
        raise VarsError(f"{var} is secret ({len(vf.value)} bytes): add --reveal to print it")
    sys.stdout.buffer.write(vf.value)
    sys.stdout.buffer.flush()


@vars_group.command("export")
@click.argument("vm")
@click.option("--recipient", metavar="AGE1…", help="Encrypt to this age recipient "
              "(`mvmctl vars recipient` on the target host prints its own).")  # fmt: skip
@click.option(
    "--passphrase",
    is_flag=True,
    help=f"Encrypt with a passphrase (prompted, or ${PASSPHRASE_ENV}).",
)
def export(vm: str, recipient: str | None, passphrase: bool) -> None:
    """Write VM's vars to stdout as one age-encrypted bundle."""
    from mvm.errors import VarsError
    from mvm.secrets import varstore

    if bool(recipient) == passphrase:
        raise VarsError("give exactly one of --recipient AGE1… or --passphrase")
    if sys.stdout.isatty():
        raise VarsError("refusing to write the bundle to a terminal: redirect stdout to a file")
    pw = _passphrase(confirm=True) if passphrase else None
    data = varstore.export_bundle(vm, recipient=recipient, passphrase=pw)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@vars_group.command("import")
@click.argument("vm")
@click.option(
    "--identity",
    type=click.Path(dir_okay=False),
    help="age identity file to decrypt with (default: this host's).",
)
def import_(vm: str, identity: str | None) -> None:
    """Read a bundle from stdin (from `vars export`) into VM's store."""
    from pathlib import Path

    from mvm.errors import VarsError
    from mvm.secrets import varstore

    if sys.stdin.isatty():
        raise VarsError("expected the bundle on stdin: mvmctl vars import VM < FILE")
    data = sys.stdin.buffer.read(BUNDLE_MAX + 1)
    pw = _passphrase(confirm=False) if varstore.needs_passphrase(data) else None
    names = varstore.import_bundle(vm, data, passphrase=pw,
                                   identity=Path(identity) if identity else None)  # fmt: skip
    click.echo(f"{vm}: imported {', '.join(names)}", err=True)


@vars_group.command("recipient")
def recipient() -> None:
    """Print this host's age recipient (export to it from another host)."""
    from mvm.secrets import varstore

    click.echo(varstore.host_recipient())
