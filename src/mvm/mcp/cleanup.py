"""``python -m mvm.mcp.cleanup NAME…``: remove an MCP server's sandboxes after it
stopped, in a process of its own session.

An MCP client ends its server by closing stdin and, 2 s later, signalling the
server's process group: a ``down`` per sandbox does not fit in that, and one
interrupted halfway leaves VMs behind.  So the server hands the names to
this detached process and exits; each VM is removed in parallel here.
"""

from __future__ import annotations

import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from mvm import paths
from mvm.errors import MvmError


def down_all(names: list[str]) -> None:
    from mvm.runtime.vm import down

    def one(name: str) -> None:
        with contextlib.suppress(MvmError, OSError):
            down(name)

    with ThreadPoolExecutor(max(1, min(8, len(names)))) as pool:
        list(pool.map(one, names))


def spawn(names: list[str]) -> None:
    """Start the detached cleanup of ``names`` (valid VM names only)."""
    from mvm.proc import spawn as spawn_child

    names = [paths.validate_name(n, "VM name") for n in names]
    if not names:
        return
    env = {"PYTHONPATH": os.pathsep.join(sys.path), "MVM_HOME": str(paths.home())}
    spawn_child([sys.executable, "-m", "mvm.mcp.cleanup", "--", *names], env=env,
                what="starting the sandbox cleanup")  # fmt: skip


def main(argv: list[str]) -> int:
    os.umask(0o077)
    names = [a for a in argv if a != "--"]
    down_all([n for n in names if paths.NAME_RE.fullmatch(n)])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
