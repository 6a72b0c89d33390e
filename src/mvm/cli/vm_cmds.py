"""run, up, down, ls, status, logs, wait, detach, pause, resume, volume."""

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
        click.option("-p", "--publish", "ports", multiple=True, metavar="[ADDR:]HOST:GUEST",
                     help="Forward HOST (on 127.0.0.1 unless ADDR is given) to the guest's "
                          "GUEST port; /udp for UDP (repeatable)."),
        click.option("--net/--no-net", "network", default=None,
                     help="Alias of --network-preset open (unrestricted egress) / none."),
        click.option("--network-preset", type=click.Choice(["none", "dev", "agent", "open"]),
                     help="Egress policy (default: mvm.toml's, else none). dev: package "
                          "registries and code hosting; agent: dev plus model APIs; "
                          "see docs/network.md."),
        click.option("--network-allow", multiple=True, metavar="HOST[:PORT]",
                     help="Also allow HOST (ports 80 and 443 unless PORT); *.example.com "
                          "for subdomains (repeatable)."),
        click.option("--network-allow-cidr", multiple=True, metavar="ADDR/PREFIX",
                     help="Allow an IP range (repeatable)."),
        click.option("--add-host", "add_hosts", multiple=True, metavar="NAME:IP",
                     help="Resolve NAME to IP (for the guest and the proxy; repeatable)."),
        click.option("--secret", "secrets", multiple=True,
                     metavar="KEY[=VALUE|@FILE]:HOST[,HOST][:HEADER]",
                     help="Bind a secret to hosts: the guest sees a placeholder, the egress "
                          "proxy sends the value (Authorization: Bearer, or HEADER) only to "
                          "HOST (repeatable)."),
        click.option("--secret-mode", type=click.Choice(["proxy", "drive"]), default=None,
                     help="proxy (default): the value never enters the guest; drive: the "
                          "value is on the secrets drive (mvm-secrets/KEY)."),
        click.option("--add-ca", type=click.Path(dir_okay=False), metavar="PEM",
                     help="Also trust PEM for upstream servers the proxy talks TLS to."),
        click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST_DIR:/PATH[:SIZE]",
                     help="Attach HOST_DIR at /mnt/config (read-only, 0444), /mnt/secrets "
                          "(read-only, 0400) or, with a SIZE, as a persistent data volume "
                          "(repeatable)."),
        click.option("--credential", "credentials", multiple=True, metavar="NAME@FILE|NAME=VALUE",
                     help="Deliver a credential to /run/credentials/@system/NAME (repeatable). "
                          "Prefer NAME@FILE: a VALUE on mvmctl's command line shows in ps."),
        click.option("--machine", type=click.Choice(["microvm", "q35"]), default=None,
                     help="Machine type (default: mvm.toml's, else microvm). q35 gives the "
                          "guest SMBIOS: credentials travel as type 11 OEM strings."),
        click.option("--hypervisor", type=click.Choice(["qemu", "firecracker", "auto"]),
                     default=None,
                     help="Hypervisor (default: mvm.toml's, else auto: Firecracker when "
                          "it is installed and KVM runs guests, else QEMU)."),
        click.option("--jailer/--no-jailer", "jailer", default=None,
                     help="Run Firecracker through its jailer (root: chroot, uid/gid, cgroups; "
                          "default mvm.toml's [firecracker] jailer, else off)."),
        click.option("--show-command", is_flag=True,
                     help="Print the hypervisor command line that would run, and exit."),
    ]):  # fmt: skip
        f = opt(f)
    return f


def _run_config(name: str | None, cpus: int | None, mem: int | None, ports: tuple[str, ...],
                network: bool | None, volumes: tuple[str, ...], credentials: tuple[str, ...],
                attached: bool, net: dict[str, Any] | None = None,
                machine: str | None = None) -> Any:  # fmt: skip
    """Parse -v and --credential before anything is built or started."""
    from mvm.drives import parse_volume
    from mvm.runtime.config import RunConfig, parse_port
    from mvm.secrets.credentials import parse_credential

    for p in ports:
        parse_port(p)
    return RunConfig(
        name=name, cpus=cpus, memory_mib=mem, attached=attached, ports=list(ports),
        network=network, volumes=[parse_volume(v) for v in volumes],
        credentials=[parse_credential(c, i) for i, c in enumerate(credentials, 1)],
        **_net_config(net or {}),
        machine=machine,
        hypervisor=(net or {}).get("hypervisor"),
        jailer=(net or {}).get("jailer"),  # --hypervisor (None: mvm.toml's, else auto)
    )  # fmt: skip


def _net_config(net: dict[str, Any]) -> dict[str, Any]:
    return {
        "network_preset": net.get("network_preset"),
        "network_allow": list(net.get("network_allow", ())),
        "network_allow_cidr": list(net.get("network_allow_cidr", ())),
        "add_hosts": list(net.get("add_hosts", ())),
        "secrets": list(net.get("secrets", ())),
        "secret_mode": net.get("secret_mode"),
        "add_ca": net.get("add_ca"),
    }


def _project_run(path: str | None, run_cfg: Any, image_ref: str | None = None) -> Any:
    from mvm.config import load_project
    from mvm.config.loader import image_project
    from mvm.image.builder import build
    from mvm.runtime.resolve import RuntimeDefaults, resolve

    project = image_project(image_ref) if image_ref else load_project(path)
    image = build(project)
    return resolve(image, run_cfg, RuntimeDefaults.from_spec(project.spec),
                   source=image_ref or str(project.root))  # fmt: skip


def _template_run(name: str, run_cfg: Any) -> Any:
    from mvm.runtime.resolve import resolve
    from mvm.runtime.templates import template_run

    image, defaults, rev = template_run(name)
    return resolve(image, run_cfg, defaults, source=f"template:{name}", revision=rev)


def _launch(resolved: Any, show_command: bool, cold: bool = True) -> Any:
    """Start ``resolved``: restored from its template's snapshot unless ``cold``."""
    from mvm.runtime import start

    if show_command:
        click.echo(start.show_text(resolved))
        sys.exit(0)
    restore = None
    if not cold:
        from mvm.runtime.templates import template_restore

        restore = template_restore(resolved.image)
    return start.start(resolved, restore=restore)


COLD = click.option(
    "--cold", is_flag=True, help="Boot even if the template has a snapshot (default: restore it)."
)


IMAGE_HELP = (
    "Boot an OCI image without a project: oci-archive:PATH, docker-archive:PATH, "
    "oci:DIR[:TAG] or docker://NAME[:TAG] (see docs/oci.md)."
)


def _start_source(project: tuple[str, str | None], template: str | None,
                  image_ref: str | None, run_cfg: Any, show_command: bool,
                  cold: bool) -> Any:  # fmt: skip
    """run/up: start one of a project (``project`` = (its flag, path)), a template
    (restored from its snapshot unless ``cold``) or an OCI image."""
    from mvm.errors import ConfigError

    flag, path = project
    if sum(1 for x in (path, template, image_ref) if x) > 1:
        raise ConfigError(f"use one of {flag}, --template and --image")
    resolved = (_template_run(template, run_cfg) if template
                else _project_run(path, run_cfg, image_ref))  # fmt: skip
    return _launch(resolved, show_command, cold or not template)


@cli.command()
@click.argument("path", required=False)
@click.option("--attached", is_flag=True, help="Stream the console; Ctrl-C stops the VM.")
@click.option("--image", "image_ref", metavar="REF", help=IMAGE_HELP)
@click.option("--template", "template", help="Run the current revision of a template.")
@COLD
@_run_options
def run(path: str | None, attached: bool, image_ref: str | None, template: str | None,
        cold: bool, name: str | None, cpus: int | None, mem: int | None,
        ports: tuple[str, ...], network: bool | None, volumes: tuple[str, ...],
        credentials: tuple[str, ...], machine: str | None, show_command: bool,
        **net: Any) -> None:  # fmt: skip
    """Build PATH (if needed) and boot it, start a template (restored from its
    snapshot if it has one) or an OCI image; detached unless --attached."""
    run_cfg = _run_config(
        name, cpus, mem, ports, network, volumes, credentials, attached, net, machine
    )
    started = _start_source(("PATH", path), template, image_ref, run_cfg, show_command, cold)
    if not attached:
        started.machine.close()
        name_ = started.record.name
        click.echo(f"{name_}: running (detached); `mvmctl logs -f {name_}` to follow")
        return
    from mvm.runtime.attach import run_attached

    sys.exit(run_attached(started))


@cli.command()
@click.option("--flake", "flake", type=click.Path(), help="Project directory (default: .).")
@click.option("--template", "template", help="Start the current revision of a template.")
@click.option("--image", "image_ref", metavar="REF", help=IMAGE_HELP)
@COLD
@_run_options
def up(flake: str | None, template: str | None, image_ref: str | None, cold: bool,
       name: str | None, cpus: int | None, mem: int | None, ports: tuple[str, ...],
       network: bool | None, volumes: tuple[str, ...], credentials: tuple[str, ...],
       machine: str | None, show_command: bool, **net: Any) -> None:  # fmt: skip
    """Start a detached VM from a project (--flake), a template (restored from the
    template's snapshot when it has one, unless --cold) or an OCI image (--image)."""
    run_cfg = _run_config(
        name, cpus, mem, ports, network, volumes, credentials, False, net, machine
    )
    started = _start_source(("--flake", flake), template, image_ref, run_cfg, show_command, cold)
    started.machine.close()
    how = " (restored from snapshot)" if started.record.boot == "restored" else ""
    click.echo(f"{started.record.name}: running{how}")


@cli.command()
@click.argument("name")
@click.argument("new")
@click.option(
    "-p",
    "--publish",
    "ports",
    multiple=True,
    metavar="[ADDR:]HOST:GUEST",
    help="Forward HOST to NEW's GUEST port (repeatable; NAME's forwards stay NAME's).",
)
def fork(name: str, new: str, ports: tuple[str, ...]) -> None:
    """Snapshot running VM NAME (a brief pause) and start NEW from it; both keep running."""
    from mvm.runtime.fork import fork as do_fork

    started = do_fork(name, new, ports)
    started.machine.close()
    click.echo(f"{started.record.name}: running (forked from {name})")


@cli.command()
@click.argument("name")
@click.option("--volumes", is_flag=True, help="Also remove the VM's persistent data volumes.")
def down(name: str, volumes: bool) -> None:
    """Stop NAME (if running) and remove it."""
    from mvm.runtime import vm

    state = vm.down(name, volumes=volumes)
    extra = " and its data volumes" if volumes else ""
    click.echo(f"{name}: removed{extra} (was {state.value})")


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True)
def ls(as_json: bool) -> None:
    """List VMs (running and defined) with their live state and image freshness."""
    from mvm.runtime import manage

    infos = manage.listing()
    if as_json:
        emit_json(infos)
        return
    table(
        ["NAME", "STATE", "MODE", "ACCEL", "PID", "UPTIME", "EXIT", "SOURCE", "IMAGE"],
        [[i["name"], i["state"], i["mode"], i["accel"], i["pid"], duration(i["uptime_s"]),
          i["exit_code"], i["source"], i["image"]] for i in infos],
    )  # fmt: skip


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def status(name: str, as_json: bool) -> None:
    """Show NAME's state, accelerator, pid, mode, image revision, uptime and
    where each setting came from."""
    from mvm.runtime import vm

    info = vm.get(name).info()
    if info["state"] == "running":
        from mvm.runtime import guest

        info["services"], why = guest.service_health(name)
        info["agent"] = why or "connected"
    else:
        info["services"], info["agent"] = None, "not running"
    if as_json:
        emit_json(info)
        return
    if info["state"] == "broken":
        for key in ("name", "state", "reason", "pid"):
            click.echo(f"{key + ':':<14}{'-' if info[key] is None else info[key]}")
        click.echo(f"hint: `mvmctl down {name}` stops its hypervisor (if any) and removes it")
        return
    for key in ("name", "state", "mode", "hypervisor", "hypervisor_reason", "accel",
                "accel_reason", "pid", "revision",
                "source", "boot", "image_ref", "entrypoint", "accessible", "vcpus", "memory_mib",
                "ports", "forwards", "exposed_ports", "volumes", "credentials", "network", "proxy",
                "exit_code"):  # fmt: skip
        value = info[key]
        if isinstance(value, list):
            value = ", ".join(value) or None
        src = info["settings"].get(key)
        suffix = f"  ({src})" if src else ""
        label = "why:" if key == "hypervisor_reason" else key + ":"
        click.echo(f"{label:<14}{'-' if value is None else value}{suffix}")
    click.echo(f"{'uptime:':<14}{duration(info['uptime_s'])}")
    if info["services"] is None:
        if info["state"] == "running":
            click.echo(f"{'services:':<14}unknown ({info['agent']})")
        return
    if not info["services"]:
        click.echo(f"{'services:':<14}-")
        return
    click.echo("services:")
    rows = [[s["name"], s["state"], s["health"], str(s["restarts"]), str(s["pid"] or "-")]
            for s in info["services"]]  # fmt: skip
    table(["  NAME", "STATE", "HEALTH", "RESTARTS", "PID"], [[f"  {r[0]}", *r[1:]] for r in rows])


@cli.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the VM stops.")
@click.option("-n", "--lines", type=click.IntRange(0), default=0, help="Only the last N lines.")
@click.option("--audit", is_flag=True,
              help="The egress audit log instead (JSON lines: time, host, port, verdict, "
                   "injected secret names).")  # fmt: skip
def logs(name: str, follow: bool, lines: int, audit: bool) -> None:
    """Print NAME's console output (or, with --audit, its egress decisions)."""
    from mvm.runtime import vm

    out = sys.stdout.buffer
    if audit:
        from mvm.network.plan import AUDIT_LOG

        out.write(vm.tail_lines(vm.get(name).record.dir / AUDIT_LOG, lines))
        out.flush()
        return
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

    sys.exit(vm.wait(name, timeout))


@cli.command()
@click.argument("name")
def detach(name: str) -> None:
    """Let an attached VM outlive its `mvmctl run --attached`."""
    from mvm.runtime import vm

    vm.detach(name)
    click.echo(f"{name}: detached")


@cli.command()
@click.argument("name")
def pause(name: str) -> None:
    """Stop NAME's vCPUs; its memory and devices stay (resume continues it)."""
    from mvm.runtime import vm

    vm.pause(name)
    click.echo(f"{name}: paused")


@cli.command()
@click.argument("name")
def resume(name: str) -> None:
    """Continue a paused VM."""
    from mvm.runtime import vm

    vm.resume(name)
    click.echo(f"{name}: running")


@cli.group()
def volume() -> None:
    """Persistent data volumes (kept across `down`/`up` of the same VM name)."""


@volume.command("ls")
@click.argument("vm_name", required=False)
@click.option("--json", "as_json", is_flag=True)
def volume_ls(vm_name: str | None, as_json: bool) -> None:
    """List data volumes (of VM_NAME, or of every VM)."""
    from mvm import drives

    vols = drives.list_volumes(vm_name)
    if as_json:
        emit_json([v.to_json() for v in vols])
        return
    rows = [[v.vm, v.guest, f"{v.size >> 20}M", f"{v.used >> 20}M", v.path] for v in vols]
    table(["VM", "GUEST", "SIZE", "USED", "PATH"], rows)


@volume.command("rm")
@click.argument("vm_name")
@click.argument("guest_path", required=False)
def volume_rm(vm_name: str, guest_path: str | None) -> None:
    """Remove VM_NAME's data volumes (or only the one at GUEST_PATH)."""
    from mvm import drives, paths
    from mvm.errors import ConflictError
    from mvm.runtime import lifecycle
    from mvm.state.records import load_entry

    with lifecycle.vm_lock(vm_name):
        if paths.vm_dir(vm_name).is_dir() and load_entry(vm_name).is_active():
            raise ConflictError(f"VM {vm_name} is running: its volumes are in use",
                                hint=f"`mvmctl down {vm_name}` first")  # fmt: skip
        gone = drives.remove_volumes(vm_name, guest_path)
    click.echo(f"{vm_name}: removed {len(gone)} data volume{'s' if len(gone) != 1 else ''}")


@cli.command()
@click.argument("name")
@click.argument("port", metavar="[ADDR:]HOST:GUEST")
@click.option("--detach", is_flag=True, help="Keep the forward after this command exits.")
@click.option("--rm", "remove", is_flag=True, help="Remove a detached forward.")
def forward(name: str, port: str, detach: bool, remove: bool) -> None:
    """Forward a host port (127.0.0.1 unless ADDR) to NAME's GUEST port while NAME
    runs: until Ctrl-C, or with --detach until `forward --rm`."""
    from mvm.errors import ConfigError
    from mvm.runtime import forward as fwd_mod

    if remove and detach:
        raise ConfigError("use either --detach or --rm")
    if remove:
        f = fwd_mod.remove(name, port)
        click.echo(f"{name}: forward {f} removed")
        return
    f = fwd_mod.add(name, port, detach=detach)
    if detach:
        click.echo(f"{name}: forwarding {f.address}:{f.host} -> guest {f.guest}")
        return

    def announce() -> None:
        click.echo(f"{name}: forwarding {f.address}:{f.host} -> guest {f.guest} (Ctrl-C to stop)")
        sys.stdout.flush()

    fwd_mod.hold(name, f, announce=announce)
