"""The MCP server: the :class:`~mvm.mcp.manager.Manager`'s verbs as tools, each
sandbox's console log as a resource, served over stdio or Streamable HTTP on
loopback with the official ``mcp`` SDK (``pip install 'mvmctl[mcp]'``).

Tools answer structured results (``structuredContent``); a refused or failed
call is a tool error carrying mvm's one-line message, never a traceback.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from mvm import __version__
from mvm.errors import ConfigError, MvmError
from mvm.mcp.manager import Manager
from mvm.mcp.policy import Policy

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

T = TypeVar("T")
Network = Literal["none", "dev", "agent", "open"]

INSTRUCTIONS = (
    "Sandboxes are small Linux microVMs (busybox userland). create_sandbox starts one from an "
    "allowed template (see the mvm://policy resource); exec runs a shell command in it; "
    "write_file/read_file/list_files move files; fork_sandbox copies a running sandbox; "
    "destroy_sandbox removes it. Sandboxes expire after the policy's max_lifetime."
)


def _import_mcp() -> type[MCPServer[Any]]:
    try:
        from mcp.server.mcpserver import MCPServer
    except ImportError as exc:
        raise ConfigError(
            "`mvmctl mcp` needs the mcp package (2.x)",
            hint="pip install 'mvmctl[mcp]'",
        ) from exc
    return MCPServer


def build(manager: Manager) -> MCPServer[Any]:
    """An ``MCPServer`` whose tools call ``manager`` (in worker threads)."""
    import anyio.to_thread
    from mcp.server.mcpserver.exceptions import ResourceError, ToolError

    server: MCPServer[Any] = _import_mcp()("mvm", instructions=INSTRUCTIONS, version=__version__,
                           log_level="WARNING")  # fmt: skip
    limiter = anyio.CapacityLimiter(max(4, manager.policy.max_sandboxes * 2))

    async def call(fn: Callable[[], T], err: type[Exception] = ToolError) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, limiter=limiter)
        except MvmError as exc:
            raise err(exc.message + (f" (hint: {exc.hint})" if exc.hint else "")) from None
        except OSError as exc:  # a host-side failure (disk full, …): one line, no traceback
            raise err(f"{exc.strerror or exc}") from None

    @server.tool(description="Start a sandbox from an allowed template; returns its name.")
    async def create_sandbox(template: str, network: Network = "none",
                             secrets: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
        """``secrets`` are binding names from the policy: the sandbox's egress proxy sends
        their values to the bound hosts; the values are never shown."""
        return await call(lambda: manager.create(template, network, secrets or []))

    @server.tool(description="Run a shell command (sh -c) in a sandbox; exit code, stdout, stderr.")
    async def exec(sandbox: str, command: str, cwd: str | None = None,
                   env: dict[str, str] | None = None, stdin: str | None = None,
                   timeout: float | None = None) -> dict[str, Any]:  # fmt: skip
        return await call(lambda: manager.exec(sandbox, command, cwd=cwd, env=env, stdin=stdin,
                                               timeout=timeout))  # fmt: skip

    @server.tool(description="Write a file (absolute path) in a sandbox, atomically.")
    async def write_file(sandbox: str, path: str, content: str,
                         encoding: Literal["utf-8", "base64"] = "utf-8",
                         mode: int = 0o644) -> dict[str, Any]:  # fmt: skip
        return await call(lambda: manager.write_file(sandbox, path, content, encoding=encoding,
                                                     mode=mode))  # fmt: skip

    @server.tool(description="Read a file (absolute path, at most 8 MiB) from a sandbox.")
    async def read_file(
        sandbox: str, path: str, encoding: Literal["utf-8", "base64"] = "utf-8"
    ) -> dict[str, Any]:
        return await call(lambda: manager.read_file(sandbox, path, encoding=encoding))

    @server.tool(description="List a directory (absolute path) in a sandbox.")
    async def list_files(sandbox: str, path: str = "/") -> dict[str, Any]:
        return {"path": path, "entries": await call(lambda: manager.list_files(sandbox, path))}

    @server.tool(description="List the sandboxes this server started.")
    async def list_sandboxes() -> dict[str, Any]:
        return {"sandboxes": await call(manager.list)}

    @server.tool(
        description="Fork a running sandbox (memory, files, processes); both keep running."
    )
    async def fork_sandbox(sandbox: str) -> dict[str, Any]:
        return await call(lambda: manager.fork(sandbox))

    @server.tool(description="Stop and remove a sandbox.")
    async def destroy_sandbox(sandbox: str) -> dict[str, Any]:
        return await call(lambda: manager.destroy(sandbox))

    @server.resource("mvm://sandboxes/{sandbox}/logs", mime_type="text/plain",
                     description="The last 500 lines of a sandbox's console.")  # fmt: skip
    async def sandbox_logs(sandbox: str) -> str:
        return await call(lambda: manager.logs(sandbox, 500), ResourceError)

    @server.resource("mvm://policy", mime_type="application/json",
                     description="What this server allows (secret names, not values).")  # fmt: skip
    async def policy() -> dict[str, Any]:
        return manager.policy.describe()

    del create_sandbox, exec, write_file, read_file, list_files, list_sandboxes
    del fork_sandbox, destroy_sandbox, sandbox_logs, policy
    return server


@contextlib.contextmanager
def _terminated_as_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP end the server like Ctrl-C, so its sandboxes are cleaned up."""

    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def serve(policy: Policy, *, http: bool = False, port: int = 8765, keep: bool = False) -> None:
    """Serve until the client goes away (stdio) or the process is interrupted; then
    destroy this server's sandboxes unless ``keep``."""
    _import_mcp()
    manager = Manager(policy, keep=keep)
    server = build(manager)
    manager.start_reaper()
    try:
        with _terminated_as_exit(), contextlib.suppress(KeyboardInterrupt):
            if http:
                server.run("streamable-http", host="127.0.0.1", port=port)
            else:
                server.run("stdio")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the hand-over must not be cut short
        manager.close(detached=True)
