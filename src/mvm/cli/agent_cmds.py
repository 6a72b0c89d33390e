"""exec, console, cp: commands served by the guest agent.

Imported lazily (``mvmctl exec`` must start fast): this module and
:mod:`mvm.runtime.guest` import nothing that builds or launches VMs.
"""

from __future__ import annotations

import contextlib
import os
import sys

import click

from mvm.cli.main import cli

# options go after NAME (`exec NAME -e K=V -- CMD…`); `--` ends them; unknown
# options (the command's own) pass through
EXEC_SETTINGS = {"ignore_unknown_options": True}


@cli.command("exec", context_settings=EXEC_SETTINGS)
@click.argument("name")
@click.option("-i", "--interactive", is_flag=True, help="Send mvmctl's stdin to the command.")
@click.option("-t", "--tty", is_flag=True, help="Run the command on a pseudo-terminal.")
@click.option("-e", "--env", "env", multiple=True, metavar="NAME=VALUE",
              help="Set an environment variable (repeatable).")  # fmt: skip
@click.option("-w", "--workdir", metavar="DIR", help="Working directory in the guest.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Kill the command after this long (exit 124).")  # fmt: skip
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(name: str, interactive: bool, tty: bool, env: tuple[str, ...], workdir: str | None,
             timeout: float | None, command: tuple[str, ...]) -> None:  # fmt: skip
    """Run COMMAND in VM NAME (accessible images only) as its entrypoint user.

    stdout and stderr stay separate; mvmctl exits with the command's exit code.
    """
    from mvm.cli.agent_run import run_exec

    argv = list(command[1:] if command and command[0] == "--" else command)
    if not argv:
        raise click.UsageError("missing the command to run")
    sys.exit(run_exec(name, argv, interactive_stdin=interactive, tty=tty, env=env,
                      workdir=workdir, timeout=timeout))  # fmt: skip


@cli.command("console")
@click.argument("name")
@click.option("--shell", default="/bin/sh", show_default=True, help="The shell to start.")
def console_cmd(name: str, shell: str) -> None:
    """Open an interactive shell in VM NAME (accessible images only); exit leaves it."""
    from mvm.cli.agent_run import interactive

    code = interactive(name, [shell, "-l"], verb="console", env={}, cwd=None, stdin=True,
                       pty=True, timeout=None)  # fmt: skip
    sys.exit(code)


def _split(arg: str) -> tuple[str | None, str]:
    """``NAME:/PATH`` → (NAME, /PATH); anything else is a host path."""
    from mvm.paths import NAME_RE

    name, colon, path = arg.partition(":")
    if colon and NAME_RE.fullmatch(name) and path.startswith("/"):
        return name, path
    return None, arg


@cli.command("cp")
@click.argument("src")
@click.argument("dst")
def cp_cmd(src: str, dst: str) -> None:
    """Copy a file between the host and a VM: SRC and DST are host paths or NAME:/PATH.

    The guest side is read and written as the entrypoint user; a guest file is
    replaced atomically; the file mode is kept.
    """
    from mvm.errors import ConfigError

    (sname, spath), (dname, dpath) = _split(src), _split(dst)
    if (sname is None) == (dname is None):
        raise ConfigError("cp: exactly one of SRC and DST must be NAME:/PATH (a VM's file)")
    if dname is not None:
        _to_guest(spath, dname, dpath)
    else:
        assert sname is not None
        _from_guest(sname, spath, dpath)


def _to_guest(local: str, name: str, path: str) -> None:
    import stat

    from mvm.errors import ConfigError
    from mvm.runtime import guest

    try:
        f = open(local, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConfigError(f"cp: {local}: {exc.strerror}") from exc
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"cp: {local}: not a regular file")
        if path.endswith("/"):
            path += os.path.basename(local)
        with guest.connect(name, verb="cp") as client:
            client.write_file(path, f, stat.S_IMODE(st.st_mode) & 0o7777)


def _from_guest(name: str, path: str, local: str) -> None:
    from mvm.errors import ConfigError
    from mvm.runtime import guest

    if os.path.isdir(local):
        local = os.path.join(local, os.path.basename(path.rstrip("/")) or "file")
    target_dir = os.path.dirname(os.path.abspath(local))
    tmp = os.path.join(target_dir, f".{os.path.basename(local)}.mvm-cp-{os.getpid()}")
    with guest.connect(name, verb="cp") as client:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cp: {local}: {exc.strerror}") from exc
        ok = False
        try:
            with os.fdopen(fd, "wb") as out:
                mode = 0o644
                for data, m in client.iter_file(path):
                    if data is None:
                        mode = m
                    else:
                        out.write(data)
                os.fchmod(out.fileno(), mode & 0o777)
            os.replace(tmp, local)
            ok = True
        finally:
            if not ok:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
