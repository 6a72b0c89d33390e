"""run, up, down, ls, status, logs, wait, detach."""

from __future__ import annotations

import sys
from typing import Any

import click

from mvm.cli.main import cli
from mvm.cli.render import duration, emit_json, table


def _run_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--name", help="VM name (default: the image's name)."),
        click.option("--cpus", type=click.IntRange(1, 64), help="vCPUs (default: mvm.toml)."),
        click.option("--mem", type=click.IntRange(64, 1 << 20), help="Memory in MiB."),
        click.option("-p", "--publish", "ports", multiple=True, metavar="HOST:GUEST",
                     help="Forward 127.0.0.1:HOST to the guest's GUEST port (repeatable)."),
        click.option("--net/--no-net", "network", default=None,
                     help="Give the guest outbound network (default: off)."),
        click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST_DIR:/PATH[:SIZE]",
                     help="Attach HOST_DIR at /mnt/config (read-only, 0444), /mnt/secrets "
                          "(read-only, 0400) or, with a SIZE, as a persistent data volume "
                          "(repeatable)."),
        click.option("--credential", "credentials", multiple=True, metavar="NAME@FILE|NAME=VALUE",
                     help="Deliver a credential to /run/credentials/@system/NAME (repeatable). "
                          "Prefer NAME@FILE: a VALUE on mvmctl's command line shows in ps."),
    ]):  # fmt: skip
        f = opt(f)
    return f


def _run_config(name: str | None, cpus: int | None, mem: int | None, ports: tuple[str, ...],
                network: bool | None, attached: bool, **extra: Any) -> Any:  # fmt: skip
    from mvm.runtime.config import RunConfig

    return RunConfig(name=name, cpus=cpus, memory_mib=mem, attached=attached,
                     ports=list(ports), network=network, **extra)  # fmt: skip


def _injected(volumes: tuple[str, ...], credentials: tuple[str, ...]) -> dict[str, Any]:
    """Check -v and --credential before anything is built or started."""
    from mvm.drives import parse_volume
    from mvm.secrets.credentials import parse_credential

    return {
        "volumes": [parse_volume(v) for v in volumes],
        "credentials": [parse_credential(c, i) for i, c in enumerate(credentials, 1)],
    }


def _project_credentials(project: Any) -> list[Any]:
    """mvm.toml's [credentials], read now (each file at most 1 MiB)."""
    from mvm.secrets.credentials import read_file

    return [read_file(c.name, c.file, "mvm.toml") for c in project.spec.credentials]


def _project_image(path: str | None) -> tuple[Any, Any]:
    from mvm.config import load_project
    from mvm.image.builder import build

    project = load_project(path)
    return project, build(project)


@cli.command()
@click.argument("path", required=False)
@click.option("--attached", is_flag=True, help="Stream the console; Ctrl-C stops the VM.")
@_run_options
def run(path: str | None, attached: bool, name: str | None, cpus: int | None, mem: int | None,
        ports: tuple[str, ...], network: bool | None, volumes: tuple[str, ...],
        credentials: tuple[str, ...]) -> None:  # fmt: skip
    """Build PATH (if needed) and boot it; detached unless --attached."""
    from mvm.runtime import vm

    extra = _injected(volumes, credentials)
    project, image = _project_image(path)
    run_cfg = _run_config(name, cpus, mem, ports + project.spec.ports,
                          network if network is not None else project.spec.network, attached,
                          project_credentials=_project_credentials(project), **extra)  # fmt: skip
    record, popen = vm.start(image, run_cfg, source=str(project.root))
    if not attached:
        click.echo(f"{record.name}: running (detached); `mvmctl logs -f {record.name}` to follow")
        return
    sys.exit(vm.run_attached(record, popen))


@cli.command()
@click.option("--flake", "flake", type=click.Path(), help="Project directory (default: .).")
@click.option("--template", "template", help="Start the current revision of a template.")
@_run_options
def up(flake: str | None, template: str | None, name: str | None, cpus: int | None,
       mem: int | None, ports: tuple[str, ...], network: bool | None, volumes: tuple[str, ...],
       credentials: tuple[str, ...]) -> None:  # fmt: skip
    """Start a detached VM from a project (--flake) or a template."""
    from mvm.errors import ConfigError
    from mvm.runtime import vm

    if flake and template:
        raise ConfigError("use either --flake or --template, not both")
    extra = _injected(volumes, credentials)
    extra_ports: tuple[str, ...] = ()
    if template:
        from mvm.templates.store import current_image

        image, revision = current_image(template)
        source, rev = f"template:{template}", revision
    else:
        project, image = _project_image(flake)
        source, rev = str(project.root), ""
        extra_ports = project.spec.ports
        if network is None:
            network = project.spec.network
        extra["project_credentials"] = _project_credentials(project)
    run_cfg = _run_config(name, cpus, mem, ports + extra_ports, network, attached=False, **extra)
    handle = vm.up(image, run_cfg, source=source, revision=rev)
    click.echo(f"{handle.name}: running")


@cli.command()
@click.argument("name")
def down(name: str) -> None:
    """Stop NAME (if running) and remove it."""
    from mvm.runtime import vm

    state = vm.down(name)
    click.echo(f"{name}: removed (was {state.value})")


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True)
def ls(as_json: bool) -> None:
    """List VMs and their live state."""
    from mvm.runtime import vm

    infos = [v.info() for v in vm.list_vms()]
    if as_json:
        emit_json(infos)
        return
    table(
        ["NAME", "STATE", "MODE", "ACCEL", "PID", "UPTIME", "EXIT", "SOURCE"],
        [[i["name"], i["state"], i["mode"], i["accel"], i["pid"], duration(i["uptime_s"]),
          i["exit_code"], i["source"]] for i in infos],
    )  # fmt: skip


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def status(name: str, as_json: bool) -> None:
    """Show NAME's state, accelerator, pid, mode, image revision and uptime."""
    from mvm.runtime import vm

    info = vm.get(name).info()
    if as_json:
        emit_json(info)
        return
    if info["state"] == "broken":
        for key in ("name", "state", "reason", "pid"):
            click.echo(f"{key + ':':<14}{'-' if info[key] is None else info[key]}")
        click.echo(f"hint: `mvmctl down {name}` stops its QEMU (if any) and removes it")
        return
    for key in ("name", "state", "mode", "accel", "accel_reason", "pid", "revision", "source",
                "entrypoint", "accessible", "vcpus", "memory_mib", "ports", "volumes",
                "credentials", "exit_code"):  # fmt: skip
        value = info[key]
        if isinstance(value, list):
            value = ", ".join(value) or None
        click.echo(f"{key + ':':<14}{'-' if value is None else value}")
    click.echo(f"{'uptime:':<14}{duration(info['uptime_s'])}")


@cli.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the VM stops.")
@click.option("-n", "--lines", type=int, default=0, help="Only the last N lines (0: all).")
def logs(name: str, follow: bool, lines: int) -> None:
    """Print NAME's console output."""
    from mvm.runtime import vm

    out = sys.stdout.buffer
    if follow:
        vm.follow(name, lines, out)
    else:
        out.write(vm.tail_lines(vm.log_path(name), lines))
        out.flush()


@cli.command()
@click.argument("name")
@click.option("--timeout", type=float, default=None, help="Give up after SECONDS.")
def wait(name: str, timeout: float | None) -> None:
    """Block until NAME exits; exit with its entrypoint's exit code."""
    from mvm.runtime import vm

    code = vm.wait(name, timeout)
    sys.exit(code if code is not None else 1)  # wait() raises when there is no exit code


@cli.command()
@click.argument("name")
def detach(name: str) -> None:
    """Let an attached VM outlive its `mvmctl run --attached`."""
    from mvm.runtime import vm

    vm.detach(name)
    click.echo(f"{name}: detached")
