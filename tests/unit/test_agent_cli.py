"""`mvmctl exec`'s fast path: the hand parser accepts exactly the documented
forms (everything else goes to click), and the modules it imports stay lean."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mvm.cli.entry import parse_exec


def test_documented_forms() -> None:
    a = parse_exec(["vm", "-i", "-t", "-e", "A=1", "-eB=2", "--env=C=3", "-w", "/tmp",
                    "--timeout", "2.5", "--", "sh", "-c", "echo -e x"])  # fmt: skip
    assert a is not None
    assert (a.name, a.interactive, a.tty, a.env, a.workdir, a.timeout) == (
        "vm", True, True, ["A=1", "B=2", "C=3"], "/tmp", 2.5)  # fmt: skip
    assert a.command == ["sh", "-c", "echo -e x"]
    b = parse_exec(["-it", "vm", "ls", "-la"])  # options before NAME; the command's own after
    assert b is not None and b.interactive and b.tty and b.command == ["ls", "-la"]


@pytest.mark.parametrize("args", [
    [], ["vm"], ["vm", "--"], ["--help"], ["vm", "--help"], ["-x", "vm", "true"],
    ["vm", "--timeout", "0", "--", "true"], ["vm", "--timeout", "soon", "true"],
    ["vm", "-e"], ["--workdir"],
])  # fmt: skip
def test_everything_else_goes_to_click(args: list[str]) -> None:
    assert parse_exec(args) is None


def test_exec_path_imports_no_click_typing_or_dataclasses() -> None:
    code = ("import sys, mvm.cli.entry, mvm.cli.agent_run, mvm.runtime.guest, "
            "mvm.runtime.console, mvm.agent.client; "
            "print(sorted(m for m in ('click', 'typing', 'dataclasses', 'mvm.state.records') "
            "if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
