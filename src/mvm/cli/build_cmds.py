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
    """Manage the cached guest kernels (mvm's own build, Debian's cloud kernel)."""


@kernel.command("fetch")
@click.option("--refresh", is_flag=True, help="Resolve the newest Debian cloud kernel again.")
def kernel_fetch(refresh: bool) -> None:
    """Fetch the Debian cloud kernel into the cache (once per version)."""
    from mvm.image.kernel import debian_kernel

    k = debian_kernel(refresh=refresh)
    click.echo(f"kernel {k.version}: {k.image}")


@kernel.command("build")
@click.option("--force", is_flag=True, help="Build again even if this key is cached.")
def kernel_build(force: bool) -> None:
    """Build the mvm kernel (kernel = "mvm") once per machine; cached builds are reused."""
    from mvm.image import kernelbuild

    k = kernelbuild.resolve(force=force)
    click.echo(f"kernel {k.key}: {k.image}")


@kernel.command("list")
@click.option("--json", "as_json", is_flag=True)
def kernel_list(as_json: bool) -> None:
    """List the kernels in the shared cache."""
    from mvm.image.kernel import cached_kernels

    rows = cached_kernels()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no cached kernels (`mvmctl kernel build` or `mvmctl kernel fetch`)")
    for r in rows:
        size = f"{r['size'] / (1 << 20):.1f} MiB" if isinstance(r.get("size"), int) else "?"
        click.echo(f"{r['name']:<40} {r['provider']:<7} {r['version']:<24} {size}")


@kernel.command("rm")
@click.argument("name")
def kernel_rm(name: str) -> None:
    """Remove the cached kernel NAME (as `kernel list` shows it)."""
    from mvm.image.kernel import remove_cached

    click.echo(f"removed {remove_cached(name)}")


@kernel.command("info")
@PATH_ARG
@click.option("--json", "as_json", is_flag=True)
def kernel_info(path: str | None, as_json: bool) -> None:
    """Which kernel the project at PATH uses, and whether it is cached."""
    from mvm.config import load_project
    from mvm.runtime.doctor import project_kernel

    info = project_kernel(load_project(path))
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        click.echo(f"{key + ':':<14}{value}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def doctor(as_json: bool) -> None:
    """Report QEMU, accelerator (and why), cached kernels (and the one the project
    in the current directory uses) and free disk."""
    from pathlib import Path

    from mvm.runtime.doctor import report

    project = None
    if Path("mvm.toml").is_file():
        from mvm.config import load_project

        project = load_project(None)
    info = report(project)
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        click.echo(f"{key + ':':<14}{value}")
