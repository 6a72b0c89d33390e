"""The sandbox SDK against real VMs (restored from one snapshot template per
module): sync create → exec → files → pause/resume → fork → close, cleanup on
exceptions, and five async sandboxes at once exchanging files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import mvm
from mvm.errors import ConfigError, DeadlineError, NotFoundError
from tests.conftest import ok
from tests.integration.sdk_support import TEMPLATE

pytest_plugins = ["tests.integration.sdk_support"]  # the template home fixtures

pytestmark = pytest.mark.integration


def names() -> set[str]:
    return {i["name"] for i in json.loads(ok("ls", "--json"))}


def test_sync_sandbox_exec_files_pause_fork_close(home: Path) -> None:
    with mvm.Sandbox.create(template=TEMPLATE, name="sb-sync", timeout=300) as sb:
        assert sb.name == "sb-sync" and "sb-sync" in names()  # an ordinary VM
        assert sb.info()["boot"] == "restored"
        r = sb.exec("echo out; echo err >&2; exit 3")
        assert (r.exit_code, r.stdout, r.stderr, r.ok) == (3, "out\n", "err\n", False)
        r = sb.exec(["sh", "-c", 'echo "$FOO"; pwd; id -u'], env={"FOO": "bar"}, cwd="/tmp")
        assert r.stdout.split() == ["bar", "/tmp", "1000"] and r.stdout_bytes.startswith(b"bar")
        assert sb.exec("cat", input=b"piped").stdout == "piped"
        # streaming: chunks in order, then the result
        with sb.exec_stream("echo one; echo two >&2; echo three") as s:
            chunks = list(s)
        assert b"".join(c.data for c in chunks if c.stream == "stdout") == b"one\nthree\n"
        assert [c.text for c in chunks if c.stream == "stderr"] == ["two\n"]
        assert s.result is not None and s.result.exit_code == 0
        seen: list[bytes] = []
        assert sb.exec("echo cb", on_stdout=seen.append).exit_code == 0 and seen == [b"cb\n"]
        with pytest.raises(DeadlineError):
            sb.exec("sleep 60", timeout=2)
        with pytest.raises(ConfigError):
            sb.exec([])
        # files
        assert sb.files.write("/tmp/work/hello.txt", "hi there\n", mode=0o600) == 9
        assert sb.files.read("/tmp/work/hello.txt") == b"hi there\n"
        assert sb.exec("stat -c %a /tmp/work/hello.txt").stdout.strip() == "600"
        listing = {e.name: e for e in sb.files.list("/tmp/work")}
        assert listing["hello.txt"].size == 9 and listing["hello.txt"].type == "file"
        sb.files.remove("/tmp/work/hello.txt")
        assert "hello.txt" not in {e.name for e in sb.files.list("/tmp/work")}
        sb.files.remove("/tmp/work/hello.txt")  # already gone: fine
        with pytest.raises(mvm.AgentError):
            sb.files.read("/tmp/work/hello.txt")
        # pause / resume
        sb.pause()
        assert sb.info()["state"] == "paused"
        sb.resume()
        assert sb.exec("echo back").stdout == "back\n"
        # fork keeps memory-only state (a tmpfs file) and diverges afterwards
        sb.exec("echo kept > /tmp/work/state")
        with sb.fork() as child:
            assert child.name != sb.name and child.name.startswith("sb-")
            assert child.info()["boot"] == "restored"
            assert child.files.read("/tmp/work/state") == b"kept\n"
            child.files.write("/tmp/work/only-child", b"x")
            assert "only-child" not in {e.name for e in sb.files.list("/tmp/work")}
            child_name = child.name
        assert child_name not in names()
        assert "sb-sync" in names()
        assert isinstance(sb.logs(), str)
    assert "sb-sync" not in names()
    sb.close()  # idempotent
    with pytest.raises(NotFoundError):
        mvm.Sandbox.connect("sb-sync")


def test_context_manager_cleans_up_on_exception_and_connect(home: Path) -> None:
    with pytest.raises(RuntimeError), mvm.Sandbox.create(template=TEMPLATE) as sb:
        name = sb.name
        assert name.startswith("sb-") and name in names()
        other = mvm.Sandbox.connect(name)  # a second handle on the same VM
        assert other.exec("echo via-connect").stdout == "via-connect\n"
        raise RuntimeError("boom")
    assert name not in names()


def test_create_refuses_bad_arguments_before_starting(home: Path) -> None:
    with pytest.raises(ConfigError):
        mvm.Sandbox.create(template=TEMPLATE, project="/tmp")
    with pytest.raises(ConfigError):
        mvm.Sandbox.create(template=TEMPLATE, network="everything")
    with pytest.raises(NotFoundError):
        mvm.Sandbox.create(template="no-such-template")
    assert names() == set()


def test_five_async_sandboxes_in_parallel_exchange_files(home: Path) -> None:
    async def main() -> list[str]:
        boxes = await asyncio.gather(*(
            mvm.AsyncSandbox.create(template=TEMPLATE, name=f"sb-par-{i}", timeout=600)
            for i in range(5)))  # fmt: skip
        try:
            assert {b.name for b in boxes} <= names()

            async def produce(i: int, b: mvm.AsyncSandbox) -> str:
                await b.files.write("/tmp/work/in.txt", f"from-host-{i}\n")
                r = await b.exec("tr a-z A-Z < /tmp/work/in.txt > /tmp/work/out.txt; "
                                 "head -c8 /dev/urandom | od -An -tx1 | tr -d ' \\n'")  # fmt: skip
                assert r.exit_code == 0, r
                assert await b.files.read_text("/tmp/work/out.txt") == f"FROM-HOST-{i}\n"
                return r.stdout

            tokens = await asyncio.gather(*(produce(i, b) for i, b in enumerate(boxes)))
            assert len(set(tokens)) == 5  # each restored clone has its own RNG

            async def receive(i: int, b: mvm.AsyncSandbox) -> str:  # from the previous box
                await b.files.write("/tmp/work/peer", tokens[i - 1])
                return (await b.exec("cat /tmp/work/peer")).stdout

            got = await asyncio.gather(*(receive(i, b) for i, b in enumerate(boxes)))
            assert got == [tokens[i - 1] for i in range(5)]
            chunks = [c async for c in await boxes[0].exec_stream("echo streamed")]
            assert [c.data for c in chunks] == [b"streamed\n"]
            return [b.name for b in boxes]
        finally:
            await asyncio.gather(*(b.close() for b in boxes))

    created = asyncio.run(main())
    assert not set(created) & names()


def test_project_source_and_credentials_cold_and_restored(home: Path, tmp_path: Path) -> None:
    from tests.conftest import write_project
    from tests.integration.sdk_support import PROJECT

    proj = write_project(tmp_path / "proj", PROJECT)
    with mvm.Sandbox.create(project=proj, credentials={"DB_PASS": "pw-1"}) as sb:
        info = sb.info()
        assert info["boot"] == "cold" and info["credentials"] == ["DB_PASS"]
        assert sb.exec("cat /run/credentials/@system/DB_PASS").stdout == "pw-1"
        assert "pw-1" not in json.dumps(info)
    with mvm.Sandbox.create(template=TEMPLATE, credentials={"TOKEN": b"t\0k"}) as sb:
        assert sb.info()["boot"] == "restored"  # credentials reach a restored guest too
        assert sb.files.read("/run/credentials/@system/TOKEN") == b"t\0k"
