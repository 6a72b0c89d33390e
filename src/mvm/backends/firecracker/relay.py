"""The per-VM relay of a Firecracker VM: the host ends that must *listen*.

Under QEMU, QEMU itself holds every host end (a status file, a console
socket).  Firecracker offers less: the guest's status channel is a hybrid
vsock connection *from* the guest, which Firecracker turns into a connect
to ``vsock.sock_1026`` on the host, and its serial console is just its
stdout (``console.log``).  This small process (``python -m
mvm.backends.firecracker.relay RUN_DIR PID START STATUS_FD CONSOLE_FD``, started by the backend
with both listening sockets already bound, so nothing the guest sends can
arrive before it listens) does the rest for the life of the VM:

* appends what the guest sends on the status port to ``status`` (the file
  :func:`mvm.channels.exit_code` reads, so the runtime's view is the same
  as under QEMU);
* serves ``console.sock``: the first client gets the console output from the
  first byte, later ones from the moment they connected (output only:
  Firecracker's serial input is its stdin).

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
POLL = 0.1


def serve(run_dir: Path, status_l: socket.socket, console_l: socket.socket,
          pid: int, start: int | None) -> None:  # fmt: skip
    sel = selectors.DefaultSelector()
    for s, what in ((status_l, "status-listen"), (console_l, "console-listen")):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, what)
    clients: list[socket.socket] = []
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
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "status-listen":
                with contextlib.suppress(OSError):
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "status")
            elif key.data == "console-listen":
                with contextlib.suppress(OSError):
                    conn, _ = sock.accept()
                    conn.setblocking(True)
                    conn.settimeout(1.0)
                    clients.append(conn)
                    served = True
            else:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    sock.close()
                    continue
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
                        c.close()
        elif served:
            with contextlib.suppress(OSError):
                pos = log.stat().st_size
    for c in clients:
        c.close()


def main(argv: list[str]) -> int:
    """Arguments: RUN_DIR PID START STATUS_FD CONSOLE_FD (the inherited listening sockets)."""
    if len(argv) != 5:
        print("usage: python -m mvm.backends.firecracker.relay RUN_DIR PID START STATUS_FD "
              "CONSOLE_FD", file=sys.stderr)  # fmt: skip
        return 2
    run_dir, pid = Path(argv[0]), int(argv[1])
    start = None if argv[2] == "-" else int(argv[2])
    jailed = (run_dir / "jail").is_dir()  # now: `down` removes the run directory first
    status_l = socket.socket(fileno=int(argv[3]))
    console_l = socket.socket(fileno=int(argv[4]))
    try:
        serve(run_dir, status_l, console_l, pid, start)
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
