"""A VM's sidecar: holds the one host connection to the guest agent and
serves many local clients over ``agent-mux.sock`` (0600, in the VM's run
directory).

A virtio-serial port accepts one host connection, so ``mvmctl exec`` in two
terminals cannot both connect to ``agent.sock``.  The first client starts
this process (``python -m mvm.runtime.sidecar RUN_DIR``, see
:func:`mvm.runtime.guest.connect`); it lives as long as the VM's hypervisor
and exits when it is gone.  Clients speak the agent protocol itself
(docs/agent-protocol.md): the sidecar answers their hello with the guest's,
renumbers their streams onto one global numbering, and routes the guest's
frames back.  A client that disconnects has its streams cancelled in the
guest; a guest reconnect fails every open stream with an error.

Later features (the egress proxy) run in this process too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvm.agent import MUX_SOCKET, codec
from mvm.agent.codec import JSON, Decoder
from mvm.errors import ProtocolError
from mvm.state.procs import pid_alive, proc_start_time

SOCKET = MUX_SOCKET
LOCK = "agent-mux.lock"
HELLO_RETRY = 2.0  # seconds between hellos while the guest agent has not answered
TERMINAL = frozenset(("exit", "error", "done", "pong", "status", "entries"))
CLIENT_OUT_CAP = 64 << 20  # a client that does not read its output is dropped
GUEST_OUT_HIGH = 8 << 20  # stop reading clients while this much waits for the guest


@dataclass
class Conn:
    sock: socket.socket
    dec: Decoder = field(default_factory=Decoder)
    out: bytearray = field(default_factory=bytearray)
    streams: dict[int, int] = field(default_factory=dict)  # client stream -> global
    hello_waiting: list[int] = field(default_factory=list)  # nonces to answer
    held: list[codec.Frame] = field(default_factory=list)  # requests sent before the guest's hello
    held_bytes: int = 0


class Sidecar:
    """``agent`` is the host end of the agent channel (the backend's
    ``HostChannels.agent``); ``pid`` the hypervisor this sidecar lives as long as."""

    def __init__(
        self, run_dir: Path, agent: Path, pid: int | None, transport: str = "virtio-serial"
    ) -> None:
        self.run_dir = run_dir
        self.agent = agent
        self.transport = transport  # "vsock": Firecracker's hybrid vsock (CONNECT handshake)
        self.sel = selectors.DefaultSelector()
        self.guest: Conn | None = None
        self.hello: dict[str, Any] | None = None
        self.nonce = 0
        self.last_hello = 0.0
        self.clients: dict[int, Conn] = {}
        self.routes: dict[int, tuple[Conn, int]] = {}  # global stream -> (client, stream)
        self.next_global = 1
        self.pid = pid
        self.pid_start = proc_start_time(pid) if pid else None
        self.dir_ino = os.stat(run_dir).st_ino  # a `down` + `up` makes a new run dir

    def hypervisor_alive(self) -> bool:
        try:
            if os.stat(self.run_dir).st_ino != self.dir_ino:
                return False
        except OSError:
            return False
        return pid_alive(self.pid, self.pid_start)

    # -- guest side --

    def connect_guest(self) -> None:
        from mvm.channels import open_agent

        s = open_agent(self.agent, self.transport)
        if s is None:
            return
        s.setblocking(False)
        self.guest = Conn(s)
        self.hello = None
        self.sel.register(s, selectors.EVENT_READ, "guest")
        self.send_hello()

    def send_hello(self) -> None:
        assert self.guest is not None
        self.nonce = int.from_bytes(os.urandom(6), "big")
        self.last_hello = time.monotonic()
        self.queue(self.guest, codec.encode_json(0, {"op": "hello", "version": 1,
                                                      "nonce": self.nonce}))  # fmt: skip

    def guest_lost(self, why: str) -> None:
        if self.guest is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.guest.sock)
            self.guest.sock.close()
        self.guest = None
        self.hello = None
        self.fail_all(why)

    def fail_all(self, why: str) -> None:
        for g, (c, s) in list(self.routes.items()):
            self.queue(c, codec.encode_json(s, {"op": "error", "message": why}))
            c.streams.pop(s, None)
            del self.routes[g]

    def from_guest(self, frame: codec.Frame) -> None:
        if frame.stream == 0:
            if frame.type != JSON:
                return
            try:
                msg = frame.json()
            except ProtocolError:
                return
            if msg.get("op") != "hello":
                return
            if msg.get("nonce") == self.nonce:
                first = self.hello is None
                self.hello = msg
                if first:
                    for c in list(self.clients.values()):
                        self.answer_hellos(c)
                        held, c.held, c.held_bytes = c.held, [], 0
                        for f in held:  # requests that came with the client's hello
                            if id(c) in self.clients:
                                self.from_client(c, f)
            elif self.hello is not None:
                # the agent saw a new connection (it restarted): streams are gone
                self.fail_all("the guest agent restarted")
                self.send_hello()
            return
        route = self.routes.get(frame.stream)
        if route is None:
            return
        client, stream = route
        self.queue(client, codec.encode(frame.type, stream, frame.payload))
        if frame.type == JSON:
            try:
                op = frame.json().get("op")
            except ProtocolError:
                op = "error"
            if op in TERMINAL:
                client.streams.pop(stream, None)
                del self.routes[frame.stream]

    # -- client side --

    def answer_hellos(self, c: Conn) -> None:
        if self.hello is None:
            return
        for nonce in c.hello_waiting:
            self.queue(c, codec.encode_json(0, dict(self.hello, nonce=nonce)))
        c.hello_waiting.clear()

    def from_client(self, c: Conn, frame: codec.Frame) -> None:
        if frame.stream == 0:
            try:
                msg = frame.json() if frame.type == JSON else {}
            except ProtocolError:
                return
            nonce = msg.get("nonce")
            if msg.get("op") == "hello" and isinstance(nonce, int):
                c.hello_waiting.append(nonce)
                self.answer_hellos(c)
            return
        if self.guest is None or self.hello is None:
            # a client may send its first request with its hello: hold it until the
            # guest has answered ours (bounded; the client's own timeout bounds the wait)
            c.held.append(frame)
            c.held_bytes += len(frame.payload)
            if c.held_bytes > GUEST_OUT_HIGH or len(c.held) > 4096:
                self.drop_client(c)
            return
        g = c.streams.get(frame.stream)
        if g is None:
            if frame.type != JSON:
                return  # data for a stream that ended
            g = self.next_global
            self.next_global = (self.next_global % 0xFFFFFFF0) + 1
            c.streams[frame.stream] = g
            self.routes[g] = (c, frame.stream)
        self.queue(self.guest, codec.encode(frame.type, g, frame.payload))

    def drop_client(self, c: Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        c.sock.close()
        self.clients.pop(id(c), None)
        for _s, g in c.streams.items():
            self.routes.pop(g, None)
            if self.guest is not None:
                self.queue(self.guest, codec.encode_json(g, {"op": "cancel"}))
        c.streams.clear()

    # -- plumbing --

    def queue(self, c: Conn, data: bytes) -> None:
        c.out += data
        if c is not self.guest and len(c.out) > CLIENT_OUT_CAP:
            self.drop_client(c)
            return
        self.flush(c)

    def flush(self, c: Conn) -> None:
        while c.out:
            try:
                n = c.sock.send(c.out)
            except BlockingIOError:
                break
            except OSError:
                if c is self.guest:
                    self.guest_lost("the guest agent connection broke")
                else:
                    self.drop_client(c)
                return
            del c.out[:n]
        self.update_interest(c)

    def update_interest(self, c: Conn) -> None:
        try:
            key = self.sel.get_key(c.sock)
        except (KeyError, ValueError):
            return
        ev = selectors.EVENT_WRITE if c.out else 0
        if c is self.guest or not self.guest or len(self.guest.out) < GUEST_OUT_HIGH:
            ev |= selectors.EVENT_READ
        if ev == 0:
            ev = selectors.EVENT_WRITE  # never unregistered: stays in the selector
            if not c.out:
                ev = selectors.EVENT_READ
        if key.events != ev:
            self.sel.modify(c.sock, ev, key.data)

    def accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError):
            s, _ = listener.accept()
            s.setblocking(False)
            c = Conn(s)
            self.clients[id(c)] = c
            self.sel.register(s, selectors.EVENT_READ, c)

    def read(self, c: Conn) -> None:
        try:
            data = c.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if c is self.guest:
                self.guest_lost("the guest agent connection closed")
            else:
                self.drop_client(c)
            return
        for f in c.dec.feed(data):
            if c is self.guest:
                self.from_guest(f)
            else:
                self.from_client(c, f)
                if id(c) not in self.clients:
                    return

    def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, "listen")
        last_check = 0.0
        while True:
            now = time.monotonic()
            if now - last_check > 1.0:
                last_check = now
                if not self.hypervisor_alive():
                    return
                if self.guest is None:
                    self.connect_guest()
                elif self.hello is None and now - self.last_hello > HELLO_RETRY:
                    self.send_hello()
            for key, events in self.sel.select(timeout=0.5):
                data = key.data
                if data == "listen":
                    self.accept(listener)
                    continue
                c = self.guest if data == "guest" else data
                if c is None:
                    continue
                if events & selectors.EVENT_WRITE:
                    self.flush(c)
                if events & selectors.EVENT_READ and (c is self.guest or id(c) in self.clients):
                    self.read(c)
            if self.guest is not None:
                self.update_interest(self.guest)
                for c in list(self.clients.values()):
                    self.update_interest(c)


def _hypervisor(run_dir: Path) -> tuple[Path, int | None, str]:
    """The agent channel's host end, the hypervisor's pid and the channel transport,
    from the VM's backend."""
    from mvm.backends.base import get_backend
    from mvm.state.atomic import read_json

    hypervisor = "qemu"
    with contextlib.suppress(Exception):
        rec = read_json(run_dir / "vm.json")
        if isinstance(rec, dict) and isinstance(rec.get("hypervisor"), str):
            hypervisor = rec["hypervisor"]
    backend = get_backend(hypervisor)
    ch = backend.channels(run_dir)
    return ch.agent, backend.owned_pid(run_dir), ch.transport


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m mvm.runtime.sidecar RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    try:
        lock_fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another sidecar serves this VM (or the VM is gone)
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())  # who holds it (for `ps` and tests)
    path = run_dir / SOCKET
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    tmp = run_dir / f".{SOCKET}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp))
    os.chmod(tmp, 0o600)
    listener.listen(64)
    os.rename(tmp, path)  # clients never see a socket that is not listening yet
    ours = os.stat(path).st_ino
    sidecar = Sidecar(run_dir, *_hypervisor(run_dir))
    try:
        sidecar.serve(listener)
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == ours:  # never another sidecar's socket
                path.unlink()
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main(sys.argv[1:]))
