"""``mvmctl``: a thin click layer over the library.

This is the one place that turns ``MvmError`` into a one-line message and an
exit code.  Library modules are imported inside commands so ``--help`` stays
fast.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from mvm import __version__


class Group(click.Group):
    """Lists commands in the order they were added (lifecycle order, not alphabetical)."""

    # imported only when used (or listed)
    lazy = {
        "template": "mvm.cli.template_cmds",
        "exec": "mvm.cli.agent_cmds",
        "console": "mvm.cli.agent_cmds",
        "cp": "mvm.cli.agent_cmds",
        "vars": "mvm.cli.vars_cmds",
        "systemd": "mvm.cli.systemd_cmds",
        "mcp": "mvm.cli.mcp_cmds",
        "cluster": "mvm.cli.cluster_cmds",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        for name in self.lazy:
            self.get_command(ctx, name)
        return list(self.commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            import importlib

            importlib.import_module(self.lazy[cmd_name])  # registers itself on `cli`
        return super().get_command(ctx, cmd_name)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mvmctl")
@click.option("-v", "--verbose", is_flag=True, help="Log what mvm does to stderr.")
def cli(verbose: bool) -> None:
    """Build microVM images from mvm.toml and run them under QEMU."""
    if verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="mvm: %(message)s")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: run the CLI, mapping errors to exit codes."""
    # registers commands (template, vars, systemd: lazily)
    from mvm.cli import build_cmds, manage_cmds, vm_cmds  # noqa: F401

    # Everything mvmctl creates (MVM_HOME, the cache, images, drives, logs) is private to
    # its owner; modules also set modes explicitly, for library users with another umask.
    os.umask(0o077)

    try:
        return cli.main(args=argv, prog_name="mvmctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # usage errors get the same one-line form as every other error
        click.echo(f"mvmctl: error: {_one_line(exc.format_message())}", err=True)
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            click.echo(f"hint: see `{exc.ctx.command_path} --help`", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("mvmctl: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("mvmctl: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        from mvm.errors import MvmError

        if os.environ.get("MVM_DEBUG"):
            raise
        if isinstance(exc, MvmError):
            click.echo(f"mvmctl: error: {_one_line(exc.message)}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(exc.exit_code)
        if isinstance(exc, OSError) and exc.errno == 28:
            click.echo("mvmctl: error: no space left on device", err=True)
            sys.exit(1)
        if isinstance(exc, RecursionError):
            click.echo("mvmctl: error: input is nested too deeply", err=True)
            sys.exit(2)
        click.echo(f"mvmctl: internal error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(70)
