"""The per-VM relay of a Firecracker VM: the host ends that must *listen*.

Under QEMU, QEMU itself holds every host end (a status file, a console
socket).  Firecracker offers less: the guest's status channel is a hybrid
vsock connection *from* the guest, which Firecracker turns into a connect
to ``vsock.sock_1026`` on the host, and its serial console is just its
stdout (``console.log``).  This small process (``python -m
mvm.backends.firecracker.relay RUN_DIR PID START STATUS_FD CONSOLE_FD [CONSOLE_IN_FD]``,
started by the backend
with both listening sockets already bound, so nothing the guest sends can
arrive before it listens) does the rest for the life of the VM:

* appends what the guest sends on the status port to ``status`` (the file
  :func:`mvm.channels.exit_code` reads, so the runtime's view is the same
  as under QEMU);
* reads Firecracker's metrics from the FIFO ``metrics.fifo`` and keeps only the
  latest record in ``metrics.json`` (a metrics *file* would grow by a record a
  minute for as long as the VM runs);
* serves ``console.sock``: the first client gets the console output from the
  first byte, later ones from the moment they connected; what clients send goes
  to Firecracker's stdin (the serial console's input), a pipe whose write end
  the relay holds.

It exits (removing its sockets, and a jailed VM's cgroups) once the
Firecracker process is gone.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import time
from pathlib import Path

from mvm.state.procs import pid_alive

STATUS_MAX = 64 * 1024  # the status file stays small whatever the guest sends
# the guest opens one status connection per report; one that opens thousands and
# keeps them must not exhaust the relay's fds (accept would then fail with EMFILE
# and the listening socket stay readable: a busy loop): the oldest is dropped
STATUS_CONNS = 8
POLL = 0.1


def serve(run_dir: Path, status_l: socket.socket, console_l: socket.socket,
          pid: int, start: int | None, console_in: int | None = None) -> None:  # fmt: skip
    sel = selectors.DefaultSelector()
    for s, what in ((status_l, "status-listen"), (console_l, "console-listen")):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, what)
    clients: list[socket.socket] = []
    statuses: list[socket.socket] = []  # open status connections, oldest first
    metrics = Metrics(run_dir)
    if metrics.fd is not None:
        sel.register(metrics.fd, selectors.EVENT_READ, "metrics")
    log = run_dir / "console.log"
    status = run_dir / "status"
    written = 0
    pos = 0  # the first client (`run --attached`, connected right after the launch) gets
    served = False  # the console from its first byte; later ones from when they connect
    gone_at: float | None = None
    while True:
        if gone_at is None and not pid_alive(pid, start):
            gone_at = time.monotonic()  # drain what is queued, then leave
        if gone_at is not None and time.monotonic() - gone_at > 0.5:
            break
        for key, _ in sel.select(POLL):
            if key.data == "metrics":
                metrics.read()
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "status-listen":
                with contextlib.suppress(OSError):
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    if len(statuses) >= STATUS_CONNS:
                        _close(sel, statuses.pop(0))
                    statuses.append(conn)
                    sel.register(conn, selectors.EVENT_READ, "status")
            elif key.data == "console-listen":
                with contextlib.suppress(OSError):
                    conn, _ = sock.accept()
                    conn.setblocking(True)
                    conn.settimeout(1.0)
                    clients.append(conn)
                    served = True
                    sel.register(conn, selectors.EVENT_READ, "console-client")
            elif (data := _recv_or_close(sel, sock, clients, statuses)) is None:
                continue
            elif key.data == "console-client":  # keys typed: Firecracker's serial input
                if console_in is not None:
                    with contextlib.suppress(OSError):  # a full pipe drops keys, never blocks
                        os.write(console_in, data)
            else:  # the guest's status connection
                if written < STATUS_MAX:
                    data = data[: STATUS_MAX - written]
                    fd = os.open(status, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                                 0o600)  # fmt: skip
                    try:
                        os.write(fd, data)
                    finally:
                        os.close(fd)
                    written += len(data)
        if clients:
            try:
                with open(log, "rb") as f:
                    f.seek(pos)
                    chunk = f.read(1 << 16)
            except OSError:
                chunk = b""
            pos += len(chunk)
            if chunk:
                for c in list(clients):
                    try:
                        c.sendall(chunk)
                    except OSError:  # a client that stopped reading is dropped
                        clients.remove(c)
                        _close(sel, c)
        elif served:
            with contextlib.suppress(OSError):
                pos = log.stat().st_size
    for c in clients + statuses:
        c.close()
    metrics.close()


def _recv_or_close(sel: selectors.BaseSelector, sock: socket.socket,
                   *lists: list[socket.socket]) -> bytes | None:  # fmt: skip
    """What a connection sent; None (and the connection closed, and out of ``lists``)
    at its end."""
    try:
        data = sock.recv(4096)
    except OSError:
        data = b""
    if data:
        return data
    for conns in lists:
        if sock in conns:
            conns.remove(sock)
    _close(sel, sock)
    return None


def _close(sel: selectors.BaseSelector, sock: socket.socket) -> None:
    with contextlib.suppress(KeyError, ValueError):
        sel.unregister(sock)
    sock.close()


class Metrics:
    """The metrics FIFO's reader: complete JSON lines in, the last one kept in
    ``metrics.json`` (0600, replaced atomically)."""

    MAX_LINE = 1 << 20

    def __init__(self, run_dir: Path) -> None:
        self.out = run_dir / "metrics.json"
        self.buf = b""
        try:  # O_RDWR: never EOF while Firecracker has not opened it yet, never blocks
            self.fd: int | None = os.open(run_dir / "metrics.fifo",
                                          os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)  # fmt: skip
        except OSError:
            self.fd = None

    def read(self) -> None:
        assert self.fd is not None
        try:
            self.buf += os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            return
        *lines, self.buf = self.buf.split(b"\n")
        if len(self.buf) > self.MAX_LINE:
            self.buf = b""
        last = next((ln for ln in reversed(lines) if ln.strip()), None)
        if last is None:
            return
        tmp = self.out.with_name(".metrics.json.tmp")
        with contextlib.suppress(OSError):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, last + b"\n")
            finally:
                os.close(fd)
            tmp.rename(self.out)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def main(argv: list[str]) -> int:
    """Arguments: RUN_DIR PID START STATUS_FD CONSOLE_FD [CONSOLE_IN_FD]: the inherited
    listening sockets and the console input's write end (absent or "-": none)."""
    if len(argv) not in (5, 6):
        print("usage: python -m mvm.backends.firecracker.relay RUN_DIR PID START STATUS_FD "
              "CONSOLE_FD [CONSOLE_IN_FD]", file=sys.stderr)  # fmt: skip
        return 2
    run_dir, pid = Path(argv[0]), int(argv[1])
    start = None if argv[2] == "-" else int(argv[2])
    jailed = (run_dir / "jail").is_dir()  # now: `down` removes the run directory first
    status_l = socket.socket(fileno=int(argv[3]))
    console_l = socket.socket(fileno=int(argv[4]))
    console_in = None if len(argv) < 6 or argv[5] == "-" else int(argv[5])
    if console_in is not None:
        os.set_blocking(console_in, False)
    try:
        serve(run_dir, status_l, console_l, pid, start, console_in)
    finally:
        for name in ("vsock.sock_1026", "console.sock"):
            with contextlib.suppress(OSError):
                (run_dir / name).unlink()
        if jailed:  # the jailer's cgroups outlive Firecracker
            from mvm.backends.firecracker.jail import release_cgroups

            release_cgroups(run_dir.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
