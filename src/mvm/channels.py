"""The host ends of the guest channels, in one place.

Every VM has three named channels besides its console (``org.mvm.status``,
``org.mvm.control``, ``org.mvm.agent``: virtio-serial ports under QEMU; a
backend without virtio-serial maps them to vsock).  A backend says where
their host ends are (:class:`~mvm.backends.spec.HostChannels`); this module
is what reads and writes them, so the guest protocol lives here once:

* **status** — the guest appends ``exit N`` when its entrypoint ends;
* **control** — the host writes ``poweroff`` and the guest's PID 1 stops its
  services (SIGTERM, up to 5 s), syncs, remounts data volumes read-only and
  powers off.  Its host end is always connected (a pipe), so the guest can
  block on it from boot;
* **agent** — a stream socket the host connects to whenever it likes (the
  agent tolerates late connections and reconnects);
* **console** — the serial console socket (``run --attached``, ``logs``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable

from mvm.backends.spec import HostChannels
from mvm.errors import BackendError


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


def _connect(
    path: os.PathLike[str], alive: Callable[[], bool], timeout: float, what: str
) -> socket.socket:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(os.fspath(path))
                return s
            except OSError:
                s.close()
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
    return _connect(ch.agent, alive, timeout, "agent")
