"""QMP sessions with timeouts; the one seam where socket and protocol errors
become :class:`~mvm.errors.BackendError`.

QMP is line-delimited JSON over a Unix socket: a greeting, a capabilities
handshake, then one reply per command with asynchronous events interleaved.
It is spoken here directly with a blocking socket rather than through
``qemu.qmp``, whose asyncio machinery costs ≈90 ms of imports on every
mvmctl that talks to a VM (a snapshot restore takes a few hundred ms).

:class:`QmpSession` is the persistent session a :class:`QemuMachine` keeps for
its whole life; :func:`command` is a one-shot call (connect, run, close) for
processes that only need one answer.  Replies are validated where they enter:
a reply that is not a QMP object is an error, not a crash later; a line
longer than :data:`LINE_MAX` ends the session.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

from mvm.errors import BackendError

LINE_MAX = 16 << 20  # query replies are small; a runaway peer must not exhaust memory
EVENTS_MAX = 1000  # events kept while waiting for a reply (read and dropped beyond that)


class QmpSession:
    """One QMP connection, negotiated once, reused for every command."""

    def __init__(self, sock: Path):
        self.sock = sock
        self._s: socket.socket | None = None
        self._buf = b""
        self._id = 0

    def connect(self, timeout: float = 2.0) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._s, self._buf = s, b""
        try:
            s.settimeout(timeout)
            s.connect(str(self.sock))
            greeting = self._read(time.monotonic() + timeout)
            if "QMP" not in greeting:
                raise BackendError("not a QMP greeting")
            self._exchange({"execute": "qmp_capabilities"}, timeout)
        except (OSError, ValueError, BackendError) as exc:
            self.close()
            raise BackendError(f"QMP on {self.sock}: {_why(exc)}") from exc

    @property
    def connected(self) -> bool:
        return self._s is not None

    def _read(self, deadline: float) -> dict[str, Any]:
        """The next JSON object from the socket."""
        assert self._s is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendError("timed out")
            self._s.settimeout(left)
            chunk = self._s.recv(65536)
            if not chunk:
                raise BackendError("Disconnected")
            self._buf += chunk
            if len(self._buf) > LINE_MAX:
                raise BackendError("reply too long")
        line, _, self._buf = self._buf.partition(b"\n")
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise BackendError("malformed reply")
        return obj

    def _exchange(self, msg: dict[str, Any], timeout: float, fds: tuple[int, ...] = ()) -> Any:
        assert self._s is not None
        self._id += 1
        msg = {**msg, "id": self._id}
        data = json.dumps(msg).encode() + b"\n"
        self._s.settimeout(timeout)
        if fds:  # SCM_RIGHTS with the command that names the descriptor (getfd)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
            sent = self._s.sendmsg([data], anc)
            data = data[sent:]
        if data:
            self._s.sendall(data)
        deadline = time.monotonic() + timeout
        for _ in range(EVENTS_MAX + 1):
            reply = self._read(deadline)
            if "event" in reply:
                continue
            if reply.get("id") not in (None, self._id):
                continue  # an answer to a command given up on earlier
            return reply
        raise BackendError("too many events without a reply")

    def command(self, cmd: str, timeout: float = 5.0, **args: Any) -> Any:
        return self._command(cmd, timeout, args)

    def _command(self, cmd: str, timeout: float, args: dict[str, Any],
                 fds: tuple[int, ...] = ()) -> Any:  # fmt: skip
        if self._s is None:
            self.connect(timeout)
        msg: dict[str, Any] = {"execute": cmd}
        if args:
            msg["arguments"] = args
        try:
            reply = self._exchange(msg, timeout, fds)
        except (OSError, ValueError, BackendError) as exc:
            self.close()  # the session is unusable after a failure; reconnect next time
            raise BackendError(f"QMP {cmd} on {self.sock}: {_why(exc)}") from exc
        if "error" in reply:
            err = reply["error"]
            desc = err.get("desc", err) if isinstance(err, dict) else err
            raise BackendError(f"QMP {cmd}: {desc}")
        return reply.get("return")

    def send_fd(self, fd: int, name: str, timeout: float = 5.0) -> None:
        """Hand ``fd`` to QEMU (SCM_RIGHTS) under ``name`` (QMP ``getfd``)."""
        self._command("getfd", timeout, {"fdname": name}, (fd,))

    def close(self) -> None:
        if self._s is not None:
            with contextlib.suppress(OSError):  # closing a dead socket is not an error
                self._s.close()
            self._s = None
            self._buf = b""


def _why(exc: BaseException) -> str:
    if isinstance(exc, BackendError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ValueError):
        return "malformed reply"
    return str(exc) or type(exc).__name__


def command(sock: Path, cmd: str, timeout: float = 5.0, **args: Any) -> Any:
    """Connect to ``sock``, run one QMP command, return its result."""
    session = QmpSession(sock)
    try:
        session.connect(timeout)
        return session.command(cmd, timeout, **args)
    finally:
        session.close()
