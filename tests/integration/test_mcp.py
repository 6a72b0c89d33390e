"""``mvmctl mcp`` driven by the ``mcp`` SDK's own client over stdio, against real
VMs restored from one snapshot template: list tools, create, exec, write+read a
file, fork, destroy (structured results asserted, not text); policy refusals;
the server's sandboxes are ordinary VMs and go away when it stops."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MVMCTL, ok
from tests.integration.sdk_support import TEMPLATE

pytest_plugins = ["tests.integration.sdk_support"]  # the template home fixtures

mcp = pytest.importorskip("mcp")
from mcp import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

pytestmark = pytest.mark.integration


@asynccontextmanager
async def session(home: Path, *args: str) -> AsyncIterator[ClientSession]:
    env = {"MVM_HOME": str(home), "MVM_CACHE": os.environ["MVM_CACHE"],
           "PATH": os.environ.get("PATH", "")}  # fmt: skip
    params = StdioServerParameters(command=MVMCTL, args=["mcp", *args], env=env)
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        yield s


async def call(s: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    res = await s.call_tool(tool, args, read_timeout_seconds=600)
    assert not res.is_error, res.content
    assert isinstance(res.structured_content, dict), res
    return res.structured_content


async def refused(s: ClientSession, tool: str, **args: Any) -> str:
    res = await s.call_tool(tool, args, read_timeout_seconds=600)
    assert res.is_error and res.structured_content is None
    text = res.content[0].text  # type: ignore[union-attr]
    assert "Traceback" not in text
    return str(text)


def vm_names() -> set[str]:
    return {i["name"] for i in json.loads(ok("ls", "--json"))}


async def gone(name: str, timeout: float = 120) -> bool:
    for _ in range(int(timeout)):
        if name not in vm_names():
            return True
        await asyncio.sleep(1)
    return False


def test_tools_create_exec_files_fork_destroy(home: Path) -> None:
    async def main() -> None:
        async with session(home, "--allow-template", TEMPLATE, "--max-sandboxes", "3") as s:
            tools = {t.name for t in (await s.list_tools()).tools}
            assert tools == {"create_sandbox", "exec", "write_file", "read_file", "list_files",
                             "list_sandboxes", "fork_sandbox", "destroy_sandbox"}  # fmt: skip
            created = await call(s, "create_sandbox", template=TEMPLATE)
            name = created["name"]
            assert name.startswith("mcp-") and created["boot"] == "restored"
            assert name in vm_names()  # an ordinary VM: `mvmctl ls` shows it
            r = await call(s, "exec", sandbox=name, command="echo out; echo err >&2; exit 4")
            assert (r["exit_code"], r["stdout"], r["stderr"]) == (4, "out\n", "err\n")
            r = await call(s, "exec", sandbox=name, command="cat; echo \"$X\"", stdin="in\n",
                           env={"X": "y"}, cwd="/tmp")  # fmt: skip
            assert r["stdout"] == "in\ny\n"
            w = await call(s, "write_file", sandbox=name, path="/tmp/work/a.txt", content="hello")
            assert w["size"] == 5
            got = await call(s, "read_file", sandbox=name, path="/tmp/work/a.txt")
            assert (got["content"], got["size"]) == ("hello", 5)
            b64 = await call(s, "read_file", sandbox=name, path="/tmp/work/a.txt",
                             encoding="base64")  # fmt: skip
            assert b64["content"] == "aGVsbG8="
            ls = await call(s, "list_files", sandbox=name, path="/tmp/work")
            assert {"name": "a.txt", "type": "file", "size": 5}.items() <= next(
                e for e in ls["entries"] if e["name"] == "a.txt").items()  # fmt: skip
            forked = await call(s, "fork_sandbox", sandbox=name)
            child = forked["name"]
            got = await call(s, "read_file", sandbox=child, path="/tmp/work/a.txt")
            assert got["content"] == "hello"
            listed = (await call(s, "list_sandboxes"))["sandboxes"]
            assert {x["name"] for x in listed} == {name, child}
            logs = await s.read_resource(f"mvm://sandboxes/{name}/logs")
            assert logs.contents and isinstance(logs.contents[0].text, str)  # type: ignore[union-attr]
            assert (await call(s, "destroy_sandbox", sandbox=child))["destroyed"] is True
            assert child not in vm_names()
            assert "from this server" in await refused(s, "exec", sandbox=child, command="true")
            # the server's own sandboxes only
            assert "from this server" in await refused(s, "destroy_sandbox", sandbox="sdk-other")
            assert name in vm_names()
        # the server stopped (stdin closed): its sandbox goes away
        assert await gone(name)

    asyncio.run(main())


def test_policy_refusals_and_keep(home: Path, tmp_path: Path) -> None:
    pol = tmp_path / "policy.toml"
    pol.write_text(f'templates = ["{TEMPLATE}"]\nmax_sandboxes = 1\n'
                   '[secrets]\nkey = "API_KEY=sk-never-shown:api.example.com"\n')  # fmt: skip

    async def main() -> str:
        async with session(home, "--policy", str(pol), "--keep") as s:
            assert "not allowed" in await refused(s, "create_sandbox", template="other")
            assert "not allowed" in await refused(s, "create_sandbox", template=TEMPLATE,
                                                  network="open")  # fmt: skip
            assert "unknown secret binding" in await refused(
                s, "create_sandbox", template=TEMPLATE, secrets=["nope"])  # fmt: skip
            first = await call(s, "create_sandbox", template=TEMPLATE)
            assert "at most 1" in await refused(s, "create_sandbox", template=TEMPLATE)
            assert "at most 1" in await refused(s, "fork_sandbox", sandbox=first["name"])
            pr = await s.read_resource("mvm://policy")
            text = pr.contents[0].text  # type: ignore[union-attr]
            assert json.loads(text)["secrets"] == ["key"] and "sk-never" not in text
            return str(first["name"])

    name = asyncio.run(main())
    assert name in vm_names()  # --keep: left running, an ordinary VM
    ok("down", name)


def test_max_lifetime_destroys_old_sandboxes(home: Path) -> None:
    async def main() -> str:
        async with session(home, "--allow-template", TEMPLATE, "--max-lifetime", "3") as s:
            name = str((await call(s, "create_sandbox", template=TEMPLATE))["name"])
            for _ in range(60):
                if not (await call(s, "list_sandboxes"))["sandboxes"]:
                    break
                await asyncio.sleep(1)
            assert (await call(s, "list_sandboxes"))["sandboxes"] == []
            assert name not in vm_names()
            return name

    asyncio.run(main())


def test_streamable_http_on_loopback(home: Path) -> None:
    import signal
    import socket
    import subprocess
    import time

    from mcp.client.streamable_http import streamable_http_client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([MVMCTL, "mcp", "--http", "--port", str(port),
                             "--allow-template", TEMPLATE],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        end = time.monotonic() + 60
        while True:
            with socket.socket() as c:
                if c.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < end, proc.stderr
            time.sleep(0.2)

        async def main() -> str:
            async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (r, w), \
                    ClientSession(r, w) as s:  # fmt: skip
                await s.initialize()
                assert "exec" in {t.name for t in (await s.list_tools()).tools}
                name = str((await call(s, "create_sandbox", template=TEMPLATE))["name"])
                r2 = await call(s, "exec", sandbox=name, command="echo over-http")
                assert r2["stdout"] == "over-http\n"
                return name

        name = asyncio.run(main())
        assert name in vm_names()
        proc.send_signal(signal.SIGTERM)  # stopping the server removes its sandboxes
        assert proc.wait(timeout=60) == 0
        assert asyncio.run(gone(name))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
