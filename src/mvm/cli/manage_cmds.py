"""create, start, restart, update, clone, rm: imperative management of defined VMs."""

from __future__ import annotations

import click

from mvm.cli.main import cli
from mvm.cli.render import emit_json


@cli.command()
@click.argument("name")
@click.option("--flake", type=click.Path(), help="Project directory.")
@click.option("--template", help="A template (its current revision).")
@click.option("--profile", help="mvm.toml profile.")
@click.option("--cpus", type=click.IntRange(1, 64), help="vCPUs (default: mvm.toml).")
@click.option("--mem", type=click.IntRange(64, 1 << 20), help="Memory in MiB.")
@click.option("-p", "--publish", "ports", multiple=True, metavar="[ADDR:]HOST:GUEST",
              help="Port forward added to mvm.toml's (repeatable).")  # fmt: skip
@click.option("--net/--no-net", "network", default=None, help="Outbound network.")
def create(name: str, flake: str | None, template: str | None, profile: str | None,
           cpus: int | None, mem: int | None, ports: tuple[str, ...],
           network: bool | None) -> None:  # fmt: skip
    """Declare VM NAME from a project or template (and build it) without starting it."""
    from mvm.runtime import manage

    d = manage.create(name, flake=flake, template=template, profile=profile, cpus=cpus,
                      memory_mib=mem, ports=list(ports), network=network)  # fmt: skip
    click.echo(f"{name}: defined from {d.source} (image {d.image_hash[:12]})")
    _vars_hint(name)


def _vars_hint(name: str) -> None:
    from mvm.errors import MvmError

    try:
        from mvm.config import load_project
        from mvm.runtime.defs import project_dir_for
        from mvm.secrets.vars import state

        gens = load_project(project_dir_for(name)).spec.generators
    except MvmError:
        return
    if gens and any(s != "ok" for s in state(name, gens).values()):
        click.echo(f"{name}: vars not generated yet: Run 'mvmctl vars generate {name}' first")


@cli.command()
@click.argument("name")
@click.option(
    "--attached",
    is_flag=True,
    help="Stream the console and stop the VM on SIGINT/SIGTERM (for systemd units).",
)
def start(name: str, attached: bool) -> None:
    """Start defined VM NAME from the image it was last built at (detached unless
    --attached; attached, the exit code is the entrypoint's)."""
    import sys

    from mvm.runtime import manage

    started = manage.start_defined(name, attached=attached)
    if attached:
        from mvm.runtime.attach import run_attached

        sys.exit(run_attached(started))
    click.echo(f"{name}: running")


@cli.command()
@click.argument("name")
def restart(name: str) -> None:
    """Stop NAME if it runs and start it again (reads vars and credentials anew)."""
    from mvm.runtime import manage

    manage.restart(name)
    click.echo(f"{name}: restarted")


@cli.command()
@click.argument("name")
@click.option("--restart", "restart_vm", is_flag=True, help="Restart NAME on the new image.")
@click.option("--json", "as_json", is_flag=True)
def update(name: str, restart_vm: bool, as_json: bool) -> None:
    """Rebuild NAME's image and print what changed (packages, files)."""
    from mvm.runtime import manage

    u = manage.update(name, restart_vm=restart_vm)
    if as_json:
        emit_json({"name": name, "old": u.old_hash, "new": u.new_hash,
                   "diff": u.diff.to_json(), "restarted": u.restarted})  # fmt: skip
        return
    if u.old_hash == u.new_hash:
        click.echo(f"{name}: image {u.new_hash[:12]} is current")
    else:
        click.echo(f"{name}: image {u.old_hash[:12] or '-'} → {u.new_hash[:12]}")
        for line in u.diff.lines():
            click.echo(line)
    if u.restarted:
        click.echo(f"{name}: restarted")
    elif u.old_hash != u.new_hash:
        click.echo(f"{name}: not restarted: `mvmctl restart {name}` boots the new image")


@cli.command()
@click.argument("name")
@click.argument("new")
def clone(name: str, new: str) -> None:
    """Define NEW like NAME, with its own identity and freshly generated vars."""
    from mvm.runtime import manage

    _d, outcomes = manage.clone(name, new)
    click.echo(f"{new}: defined as a clone of {name}")
    for o in outcomes:
        click.echo(f"{new}: {o.generator}: {o.action}")


@cli.command("rm")
@click.argument("name")
@click.option("--volumes", is_flag=True, help="Also remove its persistent data volumes.")
def rm(name: str, volumes: bool) -> None:
    """Stop and remove NAME: its record, definition and generated vars."""
    from mvm.runtime import manage

    removed = manage.remove(name, volumes=volumes)
    click.echo(f"{name}: removed {', '.join(removed)}")
