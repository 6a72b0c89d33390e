"""The two halves of the Firecracker channels against each other, without KVM:
the host's real code (``mvm.channels``: the hybrid vsock handshake, the agent
client, ``control_requests``/``request_poweroff``, the backend's status relay)
and the guest's real programs (the agent on ``unix:``, ``mvm-vsock`` listen and
connect on ``unix:``), joined by a stand-in for Firecracker's vsock muxer
(``CONNECT <port>`` → ``OK <port>``, then bytes both ways; a guest connect to
port P is a connect to ``<uds>_P``).  Only /init's control watcher is played by
the test (it is a loop inside /init; its vsock branch runs in a real boot in
tests/integration/test_guest_vsock_mode.py).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvm import channels
from mvm.agent.client import AgentClient
from mvm.backends.spec import HostChannels
from mvm.state.procs import proc_start_time
from tests.unit.guestbin_support import install


def pump(a: socket.socket, b: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := a.recv(65536):
            b.sendall(data)
    with contextlib.suppress(OSError):
        b.shutdown(socket.SHUT_WR)


class Muxer:
    """Firecracker's hybrid vsock, host → guest direction, over Unix sockets."""

    def __init__(self, uds: Path, guest_ports: dict[int, Path]) -> None:
        self.ports = guest_ports
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(uds))
        self.sock.listen(8)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                c, _ = self.sock.accept()
                threading.Thread(target=self.one, args=(c,), daemon=True).start()

    def one(self, c: socket.socket) -> None:
        line = b""
        while not line.endswith(b"\n") and len(line) < 64:
            b = c.recv(1)
            if not b:
                break
            line += b
        words = line.split()
        target = self.ports.get(int(words[1])) if len(words) == 2 and words[1].isdigit() else None
        if words[:1] != [b"CONNECT"] or target is None:
            c.close()
            return
        g = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            g.connect(str(target))
        except OSError:
            c.close()
            return
        c.sendall(b"OK %d\n" % (40000 + int(words[1])))
        threading.Thread(target=pump, args=(g, c), daemon=True).start()
        pump(c, g)


def wait_for(path: Path, p: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert p.poll() is None and time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[tuple[HostChannels, subprocess.Popen[bytes], list[str]]]:
    """A "guest" (the agent and the control relay, as /init starts them in vsock mode)
    behind a muxer at RUN/vsock.sock; yields the host's channels, the relay and the
    requests /init's watcher saw."""
    run, guest = tmp_path / "run", tmp_path / "guest"
    run.mkdir()
    guest.mkdir()
    bins = {name: install(guest, name) for name in ("mvm-guest-agent", "mvm-vsock")}
    uid = 65534 if os.getuid() == 0 else os.getuid()
    agent = subprocess.Popen([str(bins["mvm-guest-agent"]), "-a", str(uid), "-e", str(uid),
                              "-h", "/", f"unix:{guest / 'agent'}"])  # fmt: skip
    relay = subprocess.Popen([str(bins["mvm-vsock"]), "listen", f"unix:{guest / 'control'}"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    seen: list[str] = []

    def watcher() -> None:  # /init's: read "VERB ID ARGS", answer "ID ok" (or poweroff)
        assert relay.stdout is not None and relay.stdin is not None
        for raw in relay.stdout:
            words = raw.decode().split()
            seen.append(" ".join(words[:1] + words[2:]))
            if len(words) >= 2 and words[0] != "poweroff":
                relay.stdin.write(f"{words[1]} ok\n".encode())
                relay.stdin.flush()

    try:
        wait_for(guest / "agent", agent)
        wait_for(guest / "control", relay)
        threading.Thread(target=watcher, daemon=True).start()
        mux = Muxer(run / "vsock.sock", {channels.AGENT_PORT: guest / "agent",
                                         channels.CONTROL_PORT: guest / "control"})  # fmt: skip
        ch = HostChannels(status=run / "status", control=run / "vsock.sock",
                          agent=run / "vsock.sock", console=run / "console.sock",
                          console_log=run / "console.log", transport="vsock")  # fmt: skip
        yield ch, relay, seen
        mux.sock.close()
    finally:
        for p in (agent, relay):
            p.kill()
            p.wait(timeout=10)


def test_agent_through_the_handshake(
    vm: tuple[HostChannels, subprocess.Popen[bytes], list[str]],
) -> None:
    ch = vm[0]
    for attempt in range(2):  # the sidecar reconnects: the agent accepts the next
        sock = channels.open_agent(ch.agent, ch.transport)
        assert sock is not None
        with AgentClient(sock, timeout=10) as c:
            assert c.hello.version == 1
            r = c.exec(["/bin/echo", f"over vsock {attempt}"], timeout=30)
            assert (r.code, r.stdout) == (0, f"over vsock {attempt}\n".encode())


def test_control_requests_and_poweroff(
    vm: tuple[HostChannels, subprocess.Popen[bytes], list[str]],
) -> None:
    ch, _relay, seen = vm
    answered = channels.control_requests(ch, [("ping", ()), ("identity", ("h1", "0" * 32))],
                                         timeout=20)  # fmt: skip
    assert set(answered) == {"ping", "identity"}
    assert channels.request_poweroff(ch)
    deadline = time.monotonic() + 10
    while "poweroff" not in seen:
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    assert seen == ["ping", f"identity h1 {'0' * 32}", "poweroff"]


def test_no_guest_listener_is_a_clean_refusal(tmp_path: Path) -> None:
    Muxer(tmp_path / "vsock.sock", {})
    ch = HostChannels(status=tmp_path / "s", control=tmp_path / "vsock.sock",
                      agent=tmp_path / "vsock.sock", console=tmp_path / "c",
                      console_log=tmp_path / "l", transport="vsock")  # fmt: skip
    assert channels.open_agent(ch.agent, ch.transport) is None
    assert channels.request_poweroff(ch) is False


def test_status_through_the_backend_relay(tmp_path: Path) -> None:
    """The guest's ``mvm-vsock connect vsock:1026`` (Firecracker turns it into a
    connect to ``<uds>_1026``) reaches the backend's relay, and the host reads the
    exit code as under QEMU."""
    vsock = install(tmp_path, "mvm-vsock")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    status_l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    status_l.bind(str(run / "vsock.sock_1026"))
    status_l.listen(4)
    console_l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    console_l.bind(str(run / "console.sock"))
    console_l.listen(4)
    vmm = subprocess.Popen(["sleep", "60"])  # stands in for the Firecracker process
    start = proc_start_time(vmm.pid)
    fds = (status_l.fileno(), console_l.fileno())
    relay = subprocess.Popen([sys.executable, "-m", "mvm.backends.firecracker.relay", str(run),
                              str(vmm.pid), "-" if start is None else str(start), *map(str, fds)],
                             pass_fds=fds)  # fmt: skip
    try:
        r = subprocess.run([str(vsock), "connect", f"unix:{run / 'vsock.sock_1026'}"],
                           input=b"exit 42\n", capture_output=True, timeout=30)  # fmt: skip
        assert r.returncode == 0
        ch = HostChannels(status=run / "status", control=run / "vsock.sock",
                          agent=run / "vsock.sock", console=run / "console.sock",
                          console_log=run / "console.log", transport="vsock")  # fmt: skip
        deadline = time.monotonic() + 10
        while channels.exit_code(ch) is None:
            assert time.monotonic() < deadline, "the relay never wrote the status"
            time.sleep(0.05)
        assert channels.exit_code(ch) == 42
    finally:
        vmm.kill()
        vmm.wait(timeout=10)
        relay.wait(timeout=30)  # it exits once the "Firecracker" is gone
