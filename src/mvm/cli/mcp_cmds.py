"""``mvmctl mcp``: serve sandboxes to a model over MCP (stdio, or Streamable HTTP
on 127.0.0.1 with ``--http``)."""

from __future__ import annotations

import click

from mvm.cli.main import cli


@cli.command("mcp")
@click.option(
    "--http", "http", is_flag=True, help="Serve Streamable HTTP on 127.0.0.1 (default: stdio)."
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8765,
    show_default=True,
    help="Port for --http.",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Policy file (TOML; see docs/sdk.md). Flags override it.",
)
@click.option(
    "--allow-template",
    "templates",
    multiple=True,
    metavar="NAME",
    help="A template a model may start (repeatable; default: any).",
)
@click.option("--max-sandboxes", type=click.IntRange(1, 1000), help="At most N at a time (4).")
@click.option(
    "--max-lifetime",
    type=click.FloatRange(1, 10**7),
    metavar="SECONDS",
    help="Destroy sandboxes older than this (3600).",
)
@click.option(
    "--allow-network",
    "networks",
    multiple=True,
    type=click.Choice(["none", "dev", "agent", "open"]),
    help="A network preset a model may pick (repeatable; default: none only).",
)
@click.option("--keep", is_flag=True, help="Leave the sandboxes running when the server stops.")
def mcp(http: bool, port: int, policy_file: str | None, templates: tuple[str, ...],
        max_sandboxes: int | None, max_lifetime: float | None, networks: tuple[str, ...],
        keep: bool) -> None:  # fmt: skip
    """Serve sandboxes as MCP tools: create_sandbox, exec, write_file, read_file,
    list_files, list_sandboxes, fork_sandbox, destroy_sandbox; console logs as
    resources.  Sandboxes are ordinary VMs named mcp-…, removed when the server
    stops unless --keep."""
    from mvm.mcp import policy as policy_mod
    from mvm.mcp.server import serve

    pol = policy_mod.load(policy_file) if policy_file else policy_mod.Policy()
    flags: dict[str, object] = {}
    if templates:
        flags["templates"] = list(templates)
    if networks:
        flags["networks"] = list(networks)
    if max_sandboxes is not None:
        flags["max_sandboxes"] = max_sandboxes
    if max_lifetime is not None:
        flags["max_lifetime"] = max_lifetime
    pol = policy_mod.from_mapping(flags, pol, where="flags")
    serve(pol, http=http, port=port, keep=keep)
