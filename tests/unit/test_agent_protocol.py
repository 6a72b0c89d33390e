"""The agent protocol's host side against hostile input: frames are capped and
resynced, guest messages validated into typed models, the sidecar routes
streams of several clients and cancels a departed client's streams."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from mvm.agent import codec
from mvm.agent.client import AgentClient
from mvm.agent.codec import JSON, STDERR, STDOUT, Decoder
from mvm.agent.models import Entry, GuestStatus
from mvm.agent.protocol import ExecResult, Hello
from mvm.errors import AgentError, ProtocolError


def test_roundtrip_and_split_feed() -> None:
    data = codec.encode_json(7, {"op": "ping"}) + codec.encode(STDOUT, 7, b"\x00\xffbinary")
    dec = Decoder()
    frames = [f for i in range(len(data)) for f in dec.feed(data[i : i + 1])]
    assert [(f.type, f.stream) for f in frames] == [(JSON, 7), (STDOUT, 7)]
    assert frames[0].json() == {"op": "ping"} and frames[1].payload == b"\x00\xffbinary"


def test_garbage_before_and_between_frames_is_skipped() -> None:
    good = codec.encode_json(1, {"op": "pong"})
    dec = Decoder()
    frames = dec.feed(b"junk MVA" + good + b"MVA1\xff\0\0\0" + good[:5] + good)
    assert [f.json()["op"] for f in frames] == ["pong", "pong"]
    assert dec.skipped > 0


def test_oversized_length_is_not_buffered() -> None:
    dec = Decoder(max_payload=1024)
    bad = codec.HEADER.pack(codec.MAGIC, ord("O"), 1, 1 << 30)
    frames = dec.feed(bad + codec.encode(STDERR, 2, b"x"))
    assert [(f.type, f.payload) for f in frames] == [(STDERR, b"x")]
    assert len(dec.buf) < 64  # the huge "frame" was dropped, not awaited


def test_encode_refuses_bad_frames() -> None:
    with pytest.raises(ValueError):
        codec.encode(b"X", 1, b"")
    with pytest.raises(ValueError):
        codec.encode(STDOUT, 1 << 32, b"")
    with pytest.raises(ValueError):
        codec.encode(STDOUT, 1, b"x" * (codec.MAX_PAYLOAD + 1))


@pytest.mark.parametrize("payload", [b"not json", b"[1,2]", b'{"no":"op"}', b'{"op":5}',
                                     b"[" * 100000])  # fmt: skip
def test_bad_json_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        codec.Frame(JSON, 1, payload).json()


@pytest.mark.parametrize("msg", [
    {"op": "status", "services": "x", "uptime": 1, "sealed": False},
    {"op": "status", "services": [{"name": "a", "state": "weird", "pid": 1, "restarts": 0,
                                   "health": "ready"}], "uptime": 1, "sealed": False},
    {"op": "status", "services": [{"name": "a" * 100, "state": "running", "pid": 1,
                                   "restarts": 0, "health": "ready"}], "uptime": 1,
     "sealed": False},
    {"op": "status", "services": [], "uptime": -1, "sealed": False},
    {"op": "status", "services": [], "uptime": 1},
])  # fmt: skip
def test_hostile_status_is_refused(msg: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        GuestStatus.parse(msg)


def test_status_parses() -> None:
    st = GuestStatus.parse(
        {
            "op": "status",
            "uptime": 3.5,
            "sealed": True,
            "services": [
                {"name": "web", "state": "running", "pid": 9, "restarts": 1, "health": "ready"}
            ],
        }
    )
    assert st.sealed and st.services[0].health == "ready" and st.services[0].restarts == 1


@pytest.mark.parametrize("e", [{"name": "../x", "type": "file", "mode": 0, "size": 0},
                               {"name": "a", "type": "file", "mode": 0o17777, "size": 0},
                               {"name": "a", "type": "blk", "mode": 0, "size": 0},
                               {"name": "a", "type": "file", "mode": True, "size": 0},
                               "a"])  # fmt: skip
def test_hostile_entries_are_refused(e: object) -> None:
    with pytest.raises(ProtocolError):
        Entry.parse(e)


def test_exec_result_ranges() -> None:
    assert ExecResult.parse({"op": "exit", "code": 3, "signal": 0}).code == 3
    with pytest.raises(ProtocolError):
        ExecResult.parse({"op": "exit", "code": 256, "signal": 0})
    with pytest.raises(ProtocolError):
        Hello.parse({"op": "hello", "version": 1, "nonce": 1, "verbs": ["x" * 40],
                     "sealed": False})  # fmt: skip


class FakeGuest:
    """A scripted guest agent on one end of a socketpair: answers hello, ping and
    a fake exec (echoes its argv on stdout, ``err`` on stderr, exits with 3)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.cancelled: list[int] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def run(self) -> None:
        dec = Decoder()
        self.send(b"garbage before the hello")  # a reconnect that starts mid-frame
        while data := self.sock.recv(65536):
            for f in dec.feed(data):
                msg = f.json() if f.type == JSON else {}
                op = msg.get("op")
                if op == "hello":
                    self.send(codec.encode_json(0, {"op": "hello", "nonce": msg["nonce"],
                                                    "version": 1, "sealed": False,
                                                    "verbs": ["ping", "exec"]}))  # fmt: skip
                elif op == "ping":
                    self.send(codec.encode_json(f.stream, {"op": "pong"}))
                elif op == "exec":
                    s = f.stream
                    self.send(codec.encode_json(s, {"op": "started", "pid": 5}))
                    if msg["argv"] == ["hang"]:
                        continue
                    self.send(codec.encode(STDOUT, s, " ".join(msg["argv"]).encode()))
                    self.send(codec.encode(STDERR, s, b"err"))
                    self.send(codec.encode_json(s, {"op": "exit", "code": 3, "signal": 0}))
                elif op == "cancel":
                    self.cancelled.append(f.stream)


def test_client_against_fake_guest() -> None:
    a, b = socket.socketpair()
    FakeGuest(b)
    with AgentClient(a, timeout=5) as c:
        assert c.hello.verbs == ("ping", "exec")
        r = c.exec(["echo", "hi"], timeout=5)
        assert (r.code, r.stdout, r.stderr) == (3, b"echo hi", b"err")
        with pytest.raises(AgentError, match="timed out"):
            c.exec(["hang"], timeout=0.3)


def test_sidecar_multiplexes_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clients through one sidecar to one guest; a departed client's stream
    is cancelled in the guest."""
    from mvm.runtime import sidecar

    guest_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    guest_listener.bind(str(tmp_path / "agent.sock"))
    guest_listener.listen(1)
    import os

    monkeypatch.setattr(sidecar, "_hypervisor", lambda d: (d / "agent.sock", os.getpid()))
    fakes: list[FakeGuest] = []

    def accept() -> None:
        s, _ = guest_listener.accept()
        fakes.append(FakeGuest(s))

    threading.Thread(target=accept, daemon=True).start()
    t = threading.Thread(target=sidecar.main, args=([str(tmp_path)],), daemon=True)
    t.start()
    import time

    for _ in range(300):
        if (tmp_path / sidecar.SOCKET).exists():
            break
        time.sleep(0.01)
    assert (tmp_path / sidecar.SOCKET).stat().st_mode & 0o777 == 0o600

    def client() -> AgentClient:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(tmp_path / sidecar.SOCKET))
        return AgentClient(s, timeout=10)

    c1, c2 = client(), client()
    assert c1.exec(["one"], timeout=5).stdout == b"one"
    assert c2.exec(["two"], timeout=5).stdout == b"two"
    assert c1.ping() >= 0
    c2.start_exec(["hang"])
    c2.close()
    for _ in range(300):
        if fakes and fakes[0].cancelled:
            break
        time.sleep(0.01)
    assert fakes[0].cancelled, "the departed client's stream was not cancelled"
    assert c1.exec(["three"], timeout=5).stdout == b"three"
    c1.close()
