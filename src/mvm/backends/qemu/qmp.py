"""QMP sessions over ``qemu.qmp`` with timeouts; the one seam where socket and
``qemu.qmp`` errors become :class:`~mvm.errors.BackendError`.

:class:`QmpSession` is the persistent session a :class:`QemuMachine` keeps for
its whole life; :func:`command` is a one-shot call (connect, run, close) for
processes that only need one answer.  Replies are validated where they enter:
a reply that is not a QMP object is an error, not a crash later.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from mvm.errors import BackendError


class QmpSession:
    """One QMP connection, negotiated once, reused for every command."""

    def __init__(self, sock: Path):
        self.sock = sock
        self._mon: Any = None

    def connect(self, timeout: float = 2.0) -> None:
        from qemu.qmp.legacy import QEMUMonitorProtocol

        mon = QEMUMonitorProtocol(str(self.sock))
        try:
            mon.connect(negotiate=True)
            mon.settimeout(timeout)
        except Exception as exc:  # qemu.qmp raises its own tree and OSError; translate here
            with contextlib.suppress(Exception):
                mon.close()
            raise BackendError(f"QMP on {self.sock}: {exc or type(exc).__name__}") from exc
        self._mon = mon

    @property
    def connected(self) -> bool:
        return self._mon is not None

    def command(self, cmd: str, timeout: float = 5.0, **args: Any) -> Any:
        if self._mon is None:
            self.connect(timeout)
        try:
            self._mon.settimeout(timeout)
            reply = self._mon.cmd_raw(cmd, args or None)
        except Exception as exc:
            self.close()  # the session is unusable after a failure; reconnect next time
            raise BackendError(f"QMP {cmd} on {self.sock}: {exc or type(exc).__name__}") from exc
        if not isinstance(reply, dict):
            raise BackendError(f"QMP {cmd}: malformed reply")
        if "error" in reply:
            err = reply["error"]
            desc = err.get("desc", err) if isinstance(err, dict) else err
            raise BackendError(f"QMP {cmd}: {desc}")
        return reply.get("return")

    def send_fd(self, fd: int, name: str, timeout: float = 5.0) -> None:
        """Hand ``fd`` to QEMU (SCM_RIGHTS) under ``name`` (QMP ``getfd``)."""
        if self._mon is None:
            self.connect(timeout)
        try:
            self._mon.send_fd_scm(fd)
        except Exception as exc:
            self.close()
            raise BackendError(f"QMP getfd on {self.sock}: {exc or type(exc).__name__}") from exc
        self.command("getfd", timeout, fdname=name)

    def close(self) -> None:
        if self._mon is not None:
            with contextlib.suppress(Exception):  # closing a dead socket is not an error
                self._mon.close()
            self._mon = None


def command(sock: Path, cmd: str, timeout: float = 5.0, **args: Any) -> Any:
    """Connect to ``sock``, run one QMP command, return its result."""
    session = QmpSession(sock)
    try:
        session.connect(timeout)
        return session.command(cmd, timeout, **args)
    finally:
        session.close()
