"""``mvmctl systemd unit|install VM``: run a VM as a host service."""

from __future__ import annotations

from pathlib import Path

import click

from mvm.cli.main import cli

_LOAD_HELP = "Also give the service this host secret (LoadCredential=NAME:PATH; repeatable)."


@cli.group("systemd")
def systemd_group() -> None:
    """Host services: a mvm@VM.service unit per VM."""


@systemd_group.command("unit")
@click.argument("vm")
@click.option("--user", is_flag=True, help="For a user manager (WantedBy=default.target).")
@click.option("--load-credential", "load", multiple=True, metavar="NAME:PATH", help=_LOAD_HELP)
def unit(vm: str, user: bool, load: tuple[str, ...]) -> None:
    """Print the unit that runs VM attached under systemd."""
    from mvm.runtime import service

    creds = [service.parse_load_credential(s) for s in load]
    click.echo(service.render(vm, user=user, load_credentials=creds).text, nl=False)


@systemd_group.command("install")
@click.argument("vm")
@click.option("--user", is_flag=True, help="Install into ~/.config/systemd/user.")
@click.option("--load-credential", "load", multiple=True, metavar="NAME:PATH", help=_LOAD_HELP)
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Write into this directory instead.")  # fmt: skip
def install(vm: str, user: bool, load: tuple[str, ...], directory: str | None) -> None:
    """Write VM's unit (mvm@VM.service) where systemd finds it."""
    from mvm.runtime import service

    creds = [service.parse_load_credential(s) for s in load]
    u = service.render(vm, user=user, load_credentials=creds)
    dest = service.install(u, Path(directory) if directory else service.unit_dir(user))
    ctl = "systemctl --user" if user else "systemctl"
    click.echo(f"{vm}: wrote {dest}")
    click.echo(f"next: {ctl} daemon-reload && {ctl} enable --now {u.name}")
