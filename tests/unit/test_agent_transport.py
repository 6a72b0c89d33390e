"""The real guest agent binary, run on the host over its ``unix:PATH`` transport
(the test seam of the listening transports: Firecracker's ``vsock:PORT`` takes
the same accept/serve/reconnect path), driven by the real host client.

Run as root the agent drops to an unprivileged uid exactly as in a guest (the
listening socket is bound first); the commands it runs use that uid.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvm.agent.client import AgentClient
from mvm.errors import AgentError
from tests.unit.guestbin_support import install

NOBODY = 65534


def connect(path: Path, **kw: float) -> AgentClient:
    # the socket file appears at bind(), a moment before listen(): refused until then
    deadline = time.monotonic() + 10
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            break
        except ConnectionRefusedError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    return AgentClient(s, **kw)  # type: ignore[arg-type]


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d.name))
    return out


@pytest.fixture(scope="module")
def agent_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(tmp_path_factory.mktemp("agent-bin"), "mvm-guest-agent")


@pytest.fixture
def agent(agent_bin: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    sock = tmp_path / "agent.sock"
    uid = NOBODY if os.getuid() == 0 else os.getuid()
    p = subprocess.Popen([str(agent_bin), "-a", str(uid), "-e", str(uid), "-h", "/",
                          f"unix:{sock}"], stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert p.poll() is None, f"agent exited with {p.returncode}"
            assert time.monotonic() < deadline, "agent socket never appeared"
            time.sleep(0.02)
        yield p, sock
    finally:
        p.kill()
        p.wait(timeout=10)


def test_serves_the_protocol_over_unix(agent: tuple[subprocess.Popen[bytes], Path]) -> None:
    _p, sock = agent
    assert (sock.stat().st_mode & 0o077) == 0  # the agent's socket is its owner's only
    with connect(sock, timeout=10) as c:
        assert c.hello.version == 1
        r = c.exec(["/bin/sh", "-c", "echo out; echo err >&2; id -u; exit 3"], timeout=30)
        assert (r.code, r.stdout, r.stderr) == (
            3,
            f"out\n{NOBODY if os.getuid() == 0 else os.getuid()}\n".encode(),
            b"err\n",
        )
        assert c.ping() >= 0


def test_reconnect_kills_the_old_sessions(agent: tuple[subprocess.Popen[bytes], Path]) -> None:
    p, sock = agent
    c = connect(sock, timeout=10)
    c.start_exec(["/bin/sleep", "300"], timeout=30)
    assert len(children(p.pid)) == 1
    c.close()
    deadline = time.monotonic() + 10
    while children(p.pid):  # the host went away: its sessions end
        assert time.monotonic() < deadline, "the old session survived the disconnect"
        time.sleep(0.05)
    with connect(sock, timeout=10) as c2:  # the next connection is served
        assert c2.exec(["/bin/echo", "again"], timeout=30).stdout == b"again\n"
    assert p.poll() is None


def test_one_connection_at_a_time(agent: tuple[subprocess.Popen[bytes], Path]) -> None:
    _p, sock = agent
    first = connect(sock, timeout=10)
    second = connect(sock, timeout=30, wait=False)  # queued behind the first
    second.sock.settimeout(1.0)
    with pytest.raises(TimeoutError):
        second.sock.recv(1)  # not served while the first is connected
    assert first.exec(["/bin/echo", "first"], timeout=30).stdout == b"first\n"
    first.close()
    assert second.hello.version == 1  # accepted once the first left
    assert second.exec(["/bin/echo", "second"], timeout=30).stdout == b"second\n"
    second.close()


@pytest.mark.parametrize("port", ["vsock:0", "vsock:x", "vsock:", "vsock:1024x", "unix:", ""])
def test_bad_transport_refused(agent_bin: Path, port: str) -> None:
    r = subprocess.run([str(agent_bin), port], capture_output=True, timeout=10)
    assert r.returncode == 2


def test_client_sees_a_closed_agent(agent: tuple[subprocess.Popen[bytes], Path]) -> None:
    p, sock = agent
    c = connect(sock, timeout=10)
    p.kill()
    p.wait(timeout=10)
    with pytest.raises(AgentError):
        c.exec(["/bin/true"], timeout=10)
