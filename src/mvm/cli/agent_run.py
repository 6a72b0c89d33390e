"""What ``mvmctl exec`` and ``console`` do, without click: shared by the click
commands (:mod:`mvm.cli.agent_cmds`) and the fast path (:mod:`mvm.cli.entry`)
that runs ``mvmctl exec`` without importing click at all.
"""

from __future__ import annotations

import contextlib
import os
import sys


def parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    from mvm.errors import ConfigError

    env = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        if not eq or not key or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise ConfigError(f"-e {p!r}: expected NAME=VALUE (NAME: letters, digits, _)")
        env[key] = value
    return env


def winsize() -> tuple[int, int]:
    size = os.get_terminal_size(sys.stdout.fileno()) if os.isatty(1) else os.terminal_size((80, 24))
    return size.lines, size.columns


def interactive(
    name: str, argv: list[str], *, verb: str, env: dict[str, str], cwd: str | None,
    stdin: bool, pty: bool, timeout: float | None,
) -> int:  # fmt: skip
    from mvm.runtime import guest
    from mvm.runtime.console import raw

    with guest.connect(name, verb=verb) as client:
        size = winsize() if pty else (24, 80)
        stream = client.start_exec(argv, env=env, cwd=cwd, pty=pty, stdin=stdin, size=size)
        fd = sys.stdin.fileno() if stdin else None
        with raw(sys.stdin.fileno()) if pty and stdin else contextlib.nullcontext():
            result = client.interact(
                stream, stdin_fd=fd, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer,
                pty=pty, winsize=winsize if pty else None, timeout=timeout,
            )  # fmt: skip
    return result.code


def run_exec(name: str, argv: list[str], *, interactive_stdin: bool, tty: bool,
             env: tuple[str, ...], workdir: str | None, timeout: float | None) -> int:  # fmt: skip
    """Run ``argv`` in VM ``name``; the exit code mvmctl exits with (124: timed
    out, 126/127: the command could not be run)."""
    from mvm.errors import AgentError

    try:
        return interactive(name, argv, verb="exec", env=parse_env(env), cwd=workdir,
                           stdin=interactive_stdin, pty=tty, timeout=timeout)  # fmt: skip
    except AgentError as exc:
        code = None
        if timeout is not None and "timed out" in exc.message:
            code = 124
        elif "No such file" in exc.message:
            code = 127
        elif "Permission denied" in exc.message:
            code = 126
        if code is None:
            raise
        sys.stderr.write(f"mvmctl: error: {exc.message}\n")
        return code
    finally:
        sys.stdout.flush()
