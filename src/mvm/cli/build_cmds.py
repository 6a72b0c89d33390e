"""validate, build, kernel, doctor."""

from __future__ import annotations

import click

from mvm.cli.main import cli
from mvm.cli.render import emit_json

PATH_ARG = click.argument("path", required=False, type=click.Path(file_okay=True, dir_okay=True))


@cli.command()
@PATH_ARG
def validate(path: str | None) -> None:
    """Check PATH/mvm.toml (default: the current directory)."""
    from mvm.config import load_project

    project = load_project(path)
    spec = project.spec
    mode = "accessible" if spec.accessible else "sealed"
    click.echo(f"{project.manifest}: ok ({spec.name}, {spec.entrypoint.kind} entrypoint, {mode})")


@cli.command()
@PATH_ARG
@click.option("--force", is_flag=True, help="Rebuild even if the inputs are unchanged.")
@click.option("--json", "as_json", is_flag=True, help="Print revision.json.")
def build(path: str | None, force: bool, as_json: bool) -> None:
    """Build the image for PATH/mvm.toml (cached by a hash of its inputs)."""
    from mvm.config import load_project
    from mvm.image.builder import build as do_build

    image = do_build(load_project(path), force=force)
    if as_json:
        emit_json(image.revision)
    else:
        click.echo(f"{image.revision['name']}: {image.path}")


@cli.group()
def kernel() -> None:
    """Manage the cached guest kernel."""


@kernel.command("fetch")
@click.option("--refresh", is_flag=True, help="Resolve the newest Debian cloud kernel again.")
def kernel_fetch(refresh: bool) -> None:
    """Fetch the Debian cloud kernel into the cache (once per version)."""
    from mvm.image.kernel import debian_kernel

    k = debian_kernel(refresh=refresh)
    click.echo(f"kernel {k.version}: {k.image}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def doctor(as_json: bool) -> None:
    """Report QEMU, accelerator (and why), kernel cache and free disk."""
    from mvm.runtime.doctor import report

    info = report()
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        click.echo(f"{key + ':':<14}{value}")
