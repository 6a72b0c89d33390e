"""``mvmctl``'s entry point: ``mvmctl exec`` without click.

Importing click and every command module costs more than an exec round trip
itself (about 10 ms to the guest and back), so the common forms of ``mvmctl
exec NAME [-i] [-t] [-e K=V] [-w DIR] [--timeout S] [--] CMD…`` are parsed
here by hand and run through :mod:`mvm.cli.agent_run`.  Anything else —
``--help``, an option this parser does not know, a missing command — goes to
the click CLI (:func:`mvm.cli.main.main`), which prints the usual help and
usage errors; behaviour is the same either way.
"""

from __future__ import annotations

import os
import sys

FLAGS = {"-i": "interactive", "--interactive": "interactive", "-t": "tty", "--tty": "tty"}
VALUES = {"-e": "env", "--env": "env", "-w": "workdir", "--workdir": "workdir",
          "--timeout": "timeout"}  # fmt: skip


class ExecArgs:
    """Parsed ``exec`` arguments (a plain class: dataclasses cost start-up time)."""

    def __init__(self) -> None:
        self.name = ""
        self.command: list[str] = []
        self.interactive = False
        self.tty = False
        self.env: list[str] = []
        self.workdir: str | None = None
        self.timeout: float | None = None


def _value(opts: ExecArgs, dest: str, value: str) -> bool:
    if dest == "env":
        opts.env.append(value)
    elif dest == "workdir":
        opts.workdir = value
    else:
        try:
            opts.timeout = float(value)
        except ValueError:
            return False
        if not opts.timeout > 0:
            return False
    return True


def parse_exec(args: list[str]) -> ExecArgs | None:
    """``exec``'s arguments, or None for anything the click CLI should handle."""
    opts = ExecArgs()
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            if opts.name:
                break  # the command starts (its own options pass through)
            opts.name = a
            i += 1
            continue
        if a in ("-it", "-ti"):
            opts.interactive = opts.tty = True
        elif a in FLAGS:
            setattr(opts, FLAGS[a], True)
        else:
            key, eq, inline = a.partition("=") if a.startswith("--") else (a[:2], "", a[2:])
            if key not in VALUES:
                return None  # --help, or an option only click knows
            if not (eq or inline):
                i += 1
                if i >= len(args):
                    return None
                inline = args[i]
            if not _value(opts, VALUES[key], inline):
                return None
        i += 1
    opts.command = args[i:]
    if not opts.name or not opts.command:
        return None
    return opts


def report(exc: BaseException) -> int:
    """The one-line error form of :mod:`mvm.cli.main`, without click."""
    from mvm.errors import MvmError

    if isinstance(exc, MvmError):
        sys.stderr.write(f"mvmctl: error: {' '.join(exc.message.split())}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        sys.stderr.write("mvmctl: interrupted\n")
        return 130
    sys.stderr.write(f"mvmctl: internal error: {type(exc).__name__}: {exc}\n")
    return 70


def main() -> None:
    args = sys.argv[1:]
    opts = parse_exec(args[1:]) if args[:1] == ["exec"] else None
    if opts is None:
        from mvm.cli.main import main as click_main

        click_main()
        return
    os.umask(0o077)  # as mvm.cli.main: everything mvmctl creates is private
    from mvm.cli.agent_run import run_exec

    try:
        code = run_exec(opts.name, opts.command, interactive_stdin=opts.interactive,
                        tty=opts.tty, env=tuple(opts.env), workdir=opts.workdir,
                        timeout=opts.timeout)  # fmt: skip
    except Exception as exc:
        if os.environ.get("MVM_DEBUG"):
            raise
        code = report(exc)
    except KeyboardInterrupt as exc:
        code = report(exc)
    sys.exit(code)
