"""``mvmctl cluster``: sandboxes across hosts on a Ray cluster (docs/cluster.md).

Thin: parse, call :mod:`mvm.cluster.client` / :mod:`mvm.cluster.local`, print.
Ray is imported only when a subcommand runs (not for ``--help``), so mvmctl's
start-up time does not change; without the extra every subcommand says
``pip install 'mvmctl[cluster]'`` in one line.
"""

from __future__ import annotations

from typing import Any

import click

from mvm.cli.main import cli
from mvm.cli.render import emit_json, table

ADDRESS = click.option("--address", envvar="MVM_CLUSTER_ADDRESS", default=None,
                       metavar="HOST:PORT",
                       help="The Ray cluster (default: $MVM_CLUSTER_ADDRESS, else the local "
                            "cluster `cluster start` made).")  # fmt: skip


@cli.group("cluster")
def cluster() -> None:
    """Place sandboxes across many hosts (a Ray cluster; one mvm worker per host)."""


@cluster.command("start")
@click.option(
    "--nodes",
    type=click.IntRange(1, 16),
    default=3,
    show_default=True,
    help="Local nodes, each its own host with its own MVM_HOME.",
)
@click.option(
    "--node-mem",
    type=click.IntRange(64, 1 << 20),
    default=1024,
    show_default=True,
    metavar="MiB",
    help="Memory each node offers to VMs.",
)
@click.option(
    "--node-cpus",
    type=click.IntRange(1, 256),
    default=2,
    show_default=True,
    help="vCPUs each node offers to VMs.",
)
@click.option(
    "--accel",
    type=click.Choice(["kvm", "tcg"]),
    default=None,
    help="Accelerator the nodes advertise (default: what mvm picks here).",
)
def start_cmd(nodes: int, node_mem: int, node_cpus: int, accel: str | None) -> None:
    """Start a Ray cluster on this machine whose NODES behave as separate hosts."""
    from mvm.cluster import local

    st = local.start(nodes, node_mem_mib=node_mem, node_cpus=node_cpus, accel=accel)
    click.echo(f"cluster of {len(st['nodes'])} nodes at {st['address']} "
               f"({node_mem} MiB, {node_cpus} vCPUs each)")  # fmt: skip
    for n in st["nodes"]:
        click.echo(f"  {n['id']}: MVM_HOME={n['home']}")


@cluster.command("stop")
def stop_cmd() -> None:
    """Stop the local cluster: its VMs, then its Ray nodes."""
    from mvm.cluster import local

    r = local.stop()
    click.echo(f"stopped {len(r['nodes'])} nodes and {len(r['vms'])} VMs")


@cluster.command("up")
@click.option("--template", "-t", required=True, help="The template (pulled by each host).")
@click.option("--replicas", "-n", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--cpus", type=click.IntRange(1, 64), default=None, help="vCPUs per VM.")
@click.option(
    "--mem",
    type=click.IntRange(64, 1 << 20),
    default=None,
    metavar="MiB",
    help="Memory per VM (default: the template's).",
)
@click.option("--spread", is_flag=True, help="Spread replicas across hosts (default: pack).")
@click.option(
    "--accel",
    type=click.Choice(["kvm", "tcg"]),
    default=None,
    help="Only hosts with this accelerator.",
)
@click.option(
    "-p",
    "--port",
    "ports",
    multiple=True,
    metavar="[ADDR:]HOST:GUEST",
    help="Forward a port; HOST 0 picks a free port on the VM's host (repeatable).",
)
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    metavar="KEY[=VALUE|@FILE]:HOST[,HOST][:HEADER]",
    help="Bind a secret to hosts, as `mvmctl up --secret` (repeatable).",
)
@click.option("--network-preset", type=click.Choice(["none", "dev", "agent", "open"]),
              default=None, help="Egress policy preset, as for `mvmctl up`.")  # fmt: skip
@click.option("--network-allow", "allow", multiple=True, metavar="HOST[:PORT]",
              help="Allow egress to HOST (repeatable).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
@ADDRESS
def up_cmd(template: str, replicas: int, cpus: int | None, mem: int | None, spread: bool,
           accel: str | None, ports: tuple[str, ...], secrets: tuple[str, ...],
           network_preset: str | None, allow: tuple[str, ...], as_json: bool,
           address: str | None) -> None:  # fmt: skip
    """Place REPLICAS VMs of TEMPLATE on the cluster's hosts and start them."""
    from mvm.cluster import client

    placed = client.up(template, replicas=replicas, cpus=cpus, mem=mem, ports=ports,
                       spread=spread, accel=accel, secrets=secrets, network=network_preset,
                       allow=allow, address=address)  # fmt: skip
    if as_json:
        emit_json(placed)
        return
    _vm_table(placed)


def _vm_table(vms: list[dict[str, Any]]) -> None:
    table(["NAME", "HOST", "STATE", "PORTS", "TEMPLATE"],
          [[v["name"], v["host"], v["state"], ",".join(v["ports"]) or None, v["template"]]
           for v in vms])  # fmt: skip


@cluster.command("ls")
@click.option("--json", "as_json", is_flag=True)
@ADDRESS
def ls_cmd(as_json: bool, address: str | None) -> None:
    """The cluster's VMs: where each runs, its state and ports."""
    from mvm.cluster import client

    vms = client.ls(address)
    if as_json:
        emit_json(vms)
        return
    _vm_table(vms)


@cluster.command("down")
@click.argument("name", required=False)
@click.option("--template", "-t", default=None, help="Every VM of this template.")
@ADDRESS
def down_cmd(name: str | None, template: str | None, address: str | None) -> None:
    """Stop and remove cluster VM NAME, or every VM of --template."""
    from mvm.cluster import client

    gone = client.down(name, template=template, address=address)
    click.echo(f"removed {len(gone)}: {' '.join(gone)}")


@cluster.command("hosts")
@click.option("--json", "as_json", is_flag=True)
@ADDRESS
def hosts_cmd(as_json: bool, address: str | None) -> None:
    """The cluster's hosts: capacity, use, cached templates."""
    from mvm.cluster import client

    hs = client.hosts(address)
    if as_json:
        emit_json(hs)
        return
    table(["HOST", "STATE", "MEM MiB (used/total)", "vCPUs", "ACCEL", "VMS", "TEMPLATES"],
          [[h["id"], "up" if h.get("answering") else ("no answer" if h["alive"] else "lost"),
            f"{h['used_mem_mib']}/{h['mem_mib']}" if h.get("answering") else None,
            f"{h['used_vcpus']}/{h['vcpus']}" if h.get("answering") else None,
            h.get("accel"), h.get("vm_count"), ",".join(h.get("templates") or []) or None]
           for h in hs])  # fmt: skip
