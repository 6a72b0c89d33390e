"""The host ends of the guest channels, in one place.

Every VM has three named channels besides its console (``org.mvm.status``,
``org.mvm.control``, ``org.mvm.agent``: virtio-serial ports under QEMU; a
backend without virtio-serial maps them to vsock).  A backend says where
their host ends are (:class:`~mvm.backends.spec.HostChannels`); this module
is what reads and writes them, so the guest protocol lives here once:

* **status** — the guest appends ``exit N`` when its entrypoint ends;
* **control** — the host writes ``poweroff`` and the guest's PID 1 stops its
  services (SIGTERM, up to 5 s), syncs, remounts data volumes read-only and
  powers off; or a root operation (``remount``, ``identity``, ``reseed``,
  ``restart``, ``ping``: :func:`control_request`, docs/snapshots.md), which
  the guest answers on the same port.  Its host end is always connected (a pipe), so the guest can
  block on it from boot;
* **agent** — a stream socket the host connects to whenever it likes (the
  agent tolerates late connections and reconnects);
* **console** — the serial console socket (``run --attached``, ``logs``).

Under Firecracker (``HostChannels.transport == "vsock"``) agent and control
are ports of the guest's vsock device, reached through Firecracker's hybrid
vsock Unix socket: connect, send ``CONNECT <port>\\n``, read ``OK <n>\\n``,
then the stream is the guest's (:func:`vsock_connect`).  The guest listens
on :data:`AGENT_PORT` and :data:`CONTROL_PORT` (the control protocol is the
same lines, answered on the same connection); it connects to the host for
:data:`STATUS_PORT`, which the backend's relay appends to the status file.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Callable

from mvm.backends.spec import HostChannels
from mvm.errors import BackendError
from mvm.unixsock import try_connect

AGENT_PORT = 1024
CONTROL_PORT = 1025
STATUS_PORT = 1026
HANDSHAKE_MAX = 64  # "OK 1073741824\n" is 14 bytes; anything longer is not Firecracker


def vsock_connect(uds: os.PathLike[str], port: int, timeout: float = 2.0) -> socket.socket:
    """A stream to guest vsock ``port`` through a hybrid vsock Unix socket.

    The answer line is read one byte at a time so not a byte of the guest's
    stream is consumed; ``timeout`` bounds the whole handshake.  Refused (no
    listener in the guest yet, or the socket is not Firecracker's): ``BackendError``.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout  # for the whole handshake, not each byte
    try:
        s.settimeout(timeout)
        s.connect(os.fspath(uds))
        s.sendall(f"CONNECT {port}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendError(f"vsock port {port}: no handshake answer within {timeout:g}s")
            s.settimeout(left)
            b = s.recv(1)
            if not b or len(line) >= HANDSHAKE_MAX:
                break
            line += b
        words = line.split()
        if len(words) != 2 or words[0] != b"OK" or not words[1].isdigit():
            raise BackendError(f"vsock port {port}: no guest listener (handshake refused)")
        s.settimeout(None)
        return s
    except OSError as exc:
        s.close()
        raise BackendError(f"vsock port {port}: {exc.strerror or exc}") from exc
    except BaseException:
        s.close()
        raise


def exit_code(ch: HostChannels) -> int | None:
    """The entrypoint's exit code as the guest reported it, if it has."""
    try:
        text = ch.status.read_text(errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        if line.startswith("exit "):
            with contextlib.suppress(ValueError):
                code = int(line.split()[1])
                if 0 <= code <= 255:
                    return code
    return None


def request_poweroff(ch: HostChannels) -> bool:
    """Ask the guest to stop its services, sync and power off; False if nobody listens."""
    if ch.transport == "vsock":
        try:
            with vsock_connect(ch.control, CONTROL_PORT, timeout=1.0) as s:
                s.sendall(b"poweroff\n")
            return True
        except (BackendError, OSError):
            return False
    try:
        fd = os.open(ch.control, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # no FIFO, or no hypervisor holds it open (ENXIO)
        return False
    try:
        os.write(fd, b"poweroff\n")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


ROOT_VERBS = ("ping", "remount", "identity", "reseed", "restart")


def control_request(ch: HostChannels, verb: str, *args: str, timeout: float = 30.0) -> None:
    """Ask the guest's PID 1 for one root operation and wait for its answer."""
    control_requests(ch, [(verb, args)], timeout=timeout)


def control_requests(
    ch: HostChannels, requests: list[tuple[str, tuple[str, ...]]], *, timeout: float = 30.0
) -> dict[str, float]:
    """Send root operations to the guest's PID 1 in one write (it runs them in order)
    and wait for every answer; return the seconds until each verb's answer.

    A request is one line ``VERB ID ARGS…``; the guest answers ``ID ok`` or
    ``ID err REASON`` on the same port (docs/snapshots.md).  Arguments are
    checked here to be single printable words (the guest checks again).
    Lines with other ids (answers nobody waited for) are skipped.  The first
    failure raises (the verbs after it may still have run).
    """
    if ch.control_reply is None and ch.transport != "vsock":
        raise BackendError("this hypervisor has no control reply channel")
    ids: dict[str, str] = {}
    lines = []
    for verb, args in requests:
        if verb not in ROOT_VERBS:
            raise BackendError(f"unknown control verb {verb!r}")
        for a in args:
            if not a or not a.isprintable() or any(c.isspace() for c in a):
                raise BackendError(f"control {verb}: bad argument")
        rid = os.urandom(6).hex()
        ids[rid] = verb
        lines.append(" ".join((verb, rid, *args)) + "\n")
    answered: dict[str, float] = {}
    t0 = time.monotonic()
    sock: socket.socket | None = None
    if ch.transport == "vsock":  # one connection: requests out, answers back
        sock = vsock_connect(ch.control, CONTROL_PORT, timeout=min(timeout, 5.0))
        sock.setblocking(False)
        rfd = sock.fileno()
    else:
        assert ch.control_reply is not None
        rfd = os.open(ch.control_reply, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if sock is not None:
            sock.setblocking(True)
            sock.sendall("".join(lines).encode())
            sock.setblocking(False)
        else:
            wfd = os.open(ch.control, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                os.write(wfd, "".join(lines).encode())
            finally:
                os.close(wfd)
        deadline = t0 + timeout
        buf = b""
        while len(answered) < len(ids):
            left = deadline - time.monotonic()
            if left <= 0:
                waiting = [v for r, v in ids.items() if ids[r] not in answered]
                raise BackendError(f"the guest did not answer {waiting[0]} within {timeout:.0f}s")
            r, _, _ = select.select([rfd], [], [], min(left, 0.5))
            if not r:
                continue
            try:
                chunk = os.read(rfd, 4096)
            except BlockingIOError:
                continue
            if not chunk:  # no writer right now (QEMU holds it open O_RDWR; be patient)
                if sock is not None:
                    raise BackendError("the guest closed the control connection")
                time.sleep(0.01)
                continue
            buf += chunk
            *done, buf = buf.split(b"\n")
            for line in done:
                rid, _, rest = line.decode(errors="replace").partition(" ")
                if rid not in ids:
                    continue
                if rest != "ok":
                    reason = rest[4:] if rest.startswith("err ") else rest
                    # the guest's words go to the user's terminal: no escape sequences
                    reason = "".join(c if c.isprintable() else "?" for c in reason[:200])
                    raise BackendError(f"guest {ids[rid]} failed: {reason}")
                answered[ids[rid]] = time.monotonic() - t0
    except OSError as exc:
        raise BackendError(f"control request: {exc.strerror or exc}") from exc
    finally:
        if sock is not None:
            sock.close()
        else:
            os.close(rfd)
    return answered


def _connect(
    path: os.PathLike[str], alive: Callable[[], bool], timeout: float, what: str
) -> socket.socket:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = try_connect(path) if os.path.exists(path) else None
        if s is not None:
            return s
        if not alive():
            raise BackendError(f"the hypervisor exited before its {what} was ready")
        time.sleep(0.003)
    raise BackendError(f"{what} socket {os.fspath(path)} did not appear within {timeout:.0f}s")


def connect_console(
    ch: HostChannels, alive: Callable[[], bool], timeout: float = 15.0
) -> socket.socket:
    return _connect(ch.console, alive, timeout, "console")


def connect_agent(
    ch: HostChannels, alive: Callable[[], bool], timeout: float = 15.0
) -> socket.socket:
    if ch.transport == "vsock":
        deadline = time.monotonic() + timeout
        while True:
            try:
                return vsock_connect(ch.agent, AGENT_PORT)
            except BackendError:
                if not alive():
                    raise BackendError("the hypervisor exited before its agent was ready") from None
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)
    return _connect(ch.agent, alive, timeout, "agent")


def open_agent(agent: os.PathLike[str], transport: str) -> socket.socket | None:
    """One attempt at the agent channel's host end ``agent`` (``HostChannels.agent``
    of that ``transport``); the sidecar retries.  None if it is not up."""
    if transport == "vsock":
        try:
            return vsock_connect(agent, AGENT_PORT, timeout=1.0)
        except BackendError:
            return None
    return try_connect(agent)
