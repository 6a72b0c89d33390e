"""A blocking client of the agent protocol, over any connected stream socket
(in practice the VM's sidecar, :mod:`mvm.runtime.sidecar`, which speaks the
same frames and multiplexes them onto the one virtio-serial connection).

Every wait has a deadline; every reply is validated (:mod:`.protocol`).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from collections import defaultdict, deque

from mvm.agent import codec
from mvm.agent.codec import JSON, STDERR, STDIN, STDOUT, Decoder, Frame
from mvm.agent.protocol import VERSION as PROTOCOL_VERSION
from mvm.agent.protocol import ExecResult, Hello, error_text
from mvm.errors import AgentError, ProtocolError

TYPE_CHECKING = False  # typing costs start-up time on `mvmctl exec`'s path
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, BinaryIO

    from mvm.agent.models import Entry, GuestStatus

CHUNK = 256 * 1024
MAX_READ = 1 << 31
MAX_OUTPUT = 64 << 20  # what exec() captures of stdout + stderr before it gives up


class AgentClient:
    """One connection to a VM's agent (through its sidecar)."""

    def __init__(self, sock: socket.socket, *, timeout: float = 60.0) -> None:
        self.sock = sock
        self.dec = Decoder()
        self.pending: dict[int, deque[Frame]] = defaultdict(deque)
        self.next_stream = 1
        self.hello = self._handshake(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames --

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise AgentError(f"the guest agent connection broke: {exc.strerror or exc}") from exc

    def send_json(self, stream: int, msg: dict[str, Any]) -> None:
        self._send(codec.encode_json(stream, msg))

    def send_data(self, stream: int, data: bytes) -> None:
        for i in range(0, len(data), CHUNK):
            self._send(codec.encode(STDIN, stream, data[i : i + CHUNK]))

    def _pump(self, deadline: float) -> None:
        """Read once from the socket (until ``deadline``) into per-stream queues."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise AgentError("timed out waiting for the guest agent")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError as exc:
            raise AgentError("timed out waiting for the guest agent") from exc
        except OSError as exc:
            raise AgentError(f"the guest agent connection broke: {exc.strerror or exc}") from exc
        if not data:
            raise AgentError("the guest agent connection closed")
        for f in self.dec.feed(data):
            if f.stream < self.next_stream:  # frames for streams we never opened are dropped
                self.pending[f.stream].append(f)

    def next_frame(self, stream: int, deadline: float) -> Frame:
        q = self.pending[stream]
        while not q:
            self._pump(deadline)
        return q.popleft()

    def _handshake(self, timeout: float) -> Hello:
        nonce = int.from_bytes(os.urandom(7), "big")
        self.send_json(0, {"op": "hello", "version": 1, "nonce": nonce})
        deadline = time.monotonic() + timeout
        while True:
            f = self.next_frame(0, deadline)
            msg = f.json() if f.type == JSON else {}
            if msg.get("op") == "error":
                raise AgentError(error_text(msg))
            if msg.get("op") == "hello" and msg.get("nonce") == nonce:
                hello = Hello.parse(msg)
                if hello.version != PROTOCOL_VERSION:
                    raise AgentError(f"the guest agent speaks protocol version {hello.version}; "
                                     f"this mvm speaks {PROTOCOL_VERSION}")  # fmt: skip
                return hello

    def open(self, msg: dict[str, Any]) -> int:
        stream = self.next_stream
        self.next_stream += 1
        self.send_json(stream, msg)
        return stream

    def reply(self, stream: int, deadline: float) -> dict[str, Any]:
        """The next JSON message on ``stream`` (an ``error`` raises)."""
        while True:
            f = self.next_frame(stream, deadline)
            if f.type != JSON:
                continue
            msg = f.json()
            if msg["op"] == "error":
                raise AgentError(error_text(msg))
            return msg

    def call(self, msg: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        stream = self.open(msg)
        return self.reply(stream, time.monotonic() + timeout)

    # -- verbs --

    def ping(self, timeout: float = 10.0) -> float:
        t0 = time.monotonic()
        if self.call({"op": "ping"}, timeout)["op"] != "pong":
            raise ProtocolError("the guest agent did not answer ping with pong")
        return time.monotonic() - t0

    def status(self, timeout: float = 30.0) -> GuestStatus:
        from mvm.agent.models import GuestStatus

        msg = self.call({"op": "status"}, timeout)
        if msg["op"] != "status":
            raise ProtocolError("the guest agent did not answer status")
        return GuestStatus.parse(msg)

    def start_exec(self, argv: list[str], *, env: dict[str, str] | None = None,
                   cwd: str | None = None, pty: bool = False, stdin: bool = False,
                   size: tuple[int, int] = (24, 80), timeout: float = 30.0) -> int:  # fmt: skip
        """Start a command; return its stream once the guest says it started."""
        req: dict[str, Any] = {"op": "exec", "argv": argv, "env": env or {}, "pty": pty,
                               "stdin": stdin, "rows": size[0], "cols": size[1]}  # fmt: skip
        if cwd:
            req["cwd"] = cwd
        stream = self.open(req)
        msg = self.reply(stream, time.monotonic() + timeout)
        if msg["op"] != "started":
            raise ProtocolError("the guest agent did not start the command")
        return stream

    def exec(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
             input: bytes | None = None, timeout: float | None = None,
             max_output: int = MAX_OUTPUT) -> ExecResult:  # fmt: skip
        """Run a command to completion, capturing stdout and stderr separately
        (at most ``max_output`` bytes together: more kills the command)."""
        stream = self.start_exec(argv, env=env, cwd=cwd, stdin=input is not None)
        if input is not None:
            self.send_data(stream, input)
            self.send_json(stream, {"op": "eof"})
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        while True:
            try:
                f = self.next_frame(stream, deadline)
            except AgentError:
                if time.monotonic() >= deadline:
                    self.kill(stream)
                    raise AgentError(f"{argv[0]}: timed out after {timeout:g}s") from None
                raise
            if f.type == STDOUT:
                out += f.payload
            elif f.type == STDERR:
                err += f.payload
            elif f.type == JSON:
                msg = f.json()
                if msg["op"] == "exit":
                    return ExecResult.parse(msg, bytes(out), bytes(err))
                if msg["op"] == "error":
                    raise AgentError(error_text(msg))
            if len(out) + len(err) > max_output:
                self.kill(stream)
                raise AgentError(f"{argv[0]}: more than {max_output} bytes of output")

    def kill(self, stream: int) -> None:
        with contextlib.suppress(AgentError):
            self.send_json(stream, {"op": "signal", "signal": signal.SIGKILL})

    def interact(self, stream: int, *, stdin_fd: int | None, stdout: BinaryIO,
                 stderr: BinaryIO, pty: bool, winsize: Callable[[], tuple[int, int]] | None = None,
                 timeout: float | None = None) -> ExecResult:  # fmt: skip
        """Pump a started command: local stdin to the guest, its output to
        ``stdout``/``stderr``; SIGWINCH resizes the guest pty; SIGINT (without a
        pty, where Ctrl-C is a byte the guest's terminal turns into SIGINT) is
        forwarded to the command.  Returns when the command exits."""
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "sock")
        if stdin_fd is not None:
            sel.register(stdin_fd, selectors.EVENT_READ, "stdin")
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        sel.register(rfd, selectors.EVENT_READ, "signal")
        pending_signals: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            pending_signals.append(signum)
            with contextlib.suppress(OSError):
                os.write(wfd, b"!")

        old: dict[int, Any] = {}
        with contextlib.suppress(ValueError):  # not the main thread: no signal forwarding
            if pty and winsize is not None:
                old[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, on_signal)
            if not pty:
                old[signal.SIGINT] = signal.signal(signal.SIGINT, on_signal)
                old[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_signal)
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        try:
            while True:
                q = self.pending[stream]
                while q:
                    f = q.popleft()
                    if f.type == STDOUT:
                        stdout.write(f.payload)
                        stdout.flush()
                    elif f.type == STDERR:
                        stderr.write(f.payload)
                        stderr.flush()
                    elif f.type == JSON:
                        msg = f.json()
                        if msg["op"] == "exit":
                            return ExecResult.parse(msg)
                        if msg["op"] == "error":
                            raise AgentError(error_text(msg))
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill(stream)
                    raise AgentError(f"the command timed out after {timeout:g}s")
                for key, _ in sel.select(min(left, 3600)):
                    if key.data == "sock":
                        self._pump(deadline)
                    elif key.data == "stdin":
                        assert stdin_fd is not None
                        try:
                            data = os.read(stdin_fd, 65536)
                        except OSError:
                            data = b""
                        if data:
                            self.send_data(stream, data)
                        else:
                            sel.unregister(stdin_fd)
                            self.send_json(stream, {"op": "eof"})
                    else:
                        with contextlib.suppress(OSError):
                            os.read(rfd, 512)
                        while pending_signals:
                            sig = pending_signals.pop(0)
                            if sig == signal.SIGWINCH and winsize is not None:
                                rows, cols = winsize()
                                self.send_json(stream, {"op": "resize", "rows": rows, "cols": cols})
                            else:
                                self.send_json(stream, {"op": "signal", "signal": int(sig)})
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            sel.close()
            os.close(rfd)
            os.close(wfd)

    # -- files --

    def read_file(self, path: str, *, max_size: int = MAX_READ, timeout: float = 300.0
                  ) -> tuple[bytes, int]:  # fmt: skip
        """A guest file's bytes and mode (read as the entrypoint uid)."""
        chunks = []
        mode, size = 0o644, 0
        for data, m in self.iter_file(path, max_size=max_size, timeout=timeout):
            if data is None:
                mode = m
            else:
                chunks.append(data)
                size += len(data)
        return b"".join(chunks), mode

    def iter_file(self, path: str, *, max_size: int = MAX_READ, timeout: float = 300.0
                  ) -> Iterator[tuple[bytes | None, int]]:  # fmt: skip
        """Yield ``(None, mode)`` first, then ``(chunk, mode)`` for each chunk."""
        stream = self.open({"op": "read", "path": path})
        deadline = time.monotonic() + timeout
        head = self.reply(stream, deadline)
        if head["op"] != "file" or not isinstance(head.get("size"), int):
            raise ProtocolError("the guest agent did not answer read")
        if head["size"] > max_size:
            self.send_json(stream, {"op": "cancel"})
            raise AgentError(f"{path}: {head['size']} bytes is more than {max_size}")
        mode = head.get("mode")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise ProtocolError("the guest agent sent a bad file mode")
        yield None, mode
        got = 0
        while True:
            f = self.next_frame(stream, deadline)
            if f.type == STDOUT:
                got += len(f.payload)
                if got > max_size:
                    self.send_json(stream, {"op": "cancel"})
                    raise AgentError(f"{path}: more than {max_size} bytes")
                yield f.payload, mode
            elif f.type == JSON:
                msg = f.json()
                if msg["op"] == "error":
                    raise AgentError(error_text(msg))
                if msg["op"] == "done":
                    return

    def write_file(self, path: str, data: bytes | BinaryIO, mode: int = 0o644,
                   timeout: float = 300.0) -> int:  # fmt: skip
        """Write a guest file atomically (temp file beside it, then rename)."""
        stream = self.open({"op": "write", "path": path, "mode": mode})
        deadline = time.monotonic() + timeout
        if self.reply(stream, deadline)["op"] != "ready":
            raise ProtocolError("the guest agent did not accept the write")
        if isinstance(data, bytes):
            self.send_data(stream, data)
        else:
            while chunk := data.read(CHUNK):
                self.send_data(stream, chunk)
                self._raise_early_error(stream)
        self.send_json(stream, {"op": "eof"})
        msg = self.reply(stream, deadline)
        if msg["op"] != "done":
            raise ProtocolError("the guest agent did not finish the write")
        size = msg.get("size")
        return size if isinstance(size, int) and not isinstance(size, bool) else 0

    def _raise_early_error(self, stream: int) -> None:
        q = self.pending[stream]
        for f in q:
            if f.type == JSON and f.json()["op"] == "error":
                raise AgentError(error_text(f.json()))

    def list_dir(self, path: str, timeout: float = 30.0) -> list[Entry]:
        from mvm.agent.models import Entry

        msg = self.call({"op": "list", "path": path}, timeout)
        entries = msg.get("entries")
        if msg["op"] != "entries" or not isinstance(entries, list) or len(entries) > 10000:
            raise ProtocolError("the guest agent did not answer list")
        return [Entry.parse(e) for e in entries]
