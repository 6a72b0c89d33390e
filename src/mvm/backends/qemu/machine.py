"""Start and stop QEMU processes.

A VM's QEMU runs in its own session (so a terminal's Ctrl-C reaches only
mvmctl, which then stops the VM deliberately), with stdout/stderr going to
``qemu.log`` in the VM's private run directory.  Stopping escalates:
ask the guest to power off (it syncs its disks) → QMP ``quit`` → SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from mvm import proc
from mvm.backends.base import Capabilities, VmBackend
from mvm.backends.qemu import qmp
from mvm.backends.qemu.argv import MachineConfig, build_argv
from mvm.errors import BackendError, HypervisorMissing
from mvm.log import get_logger

log = get_logger(__name__)
QEMU = "qemu-system-x86_64"


def qemu_binary() -> str:
    path = os.environ.get("MVM_QEMU") or shutil.which(QEMU)
    if not path or not os.access(path, os.X_OK):
        raise HypervisorMissing(
            f"{path or QEMU} not found (or not executable)",
            hint="install qemu-system-x86 (make setup does)",
        )
    return path


class QemuBackend(VmBackend):
    name = "qemu"
    capabilities = Capabilities(
        smbios=False, fw_cfg=True, snapshots=True, agent_transport="virtio-serial"
    )

    def argv(self, cfg: MachineConfig) -> list[str]:
        return build_argv(cfg, qemu_binary())

    def version(self) -> str:
        out = subprocess.run(
            [qemu_binary(), "--version"], capture_output=True, check=False, timeout=10
        )
        m = re.search(rb"version (\S+)", out.stdout)
        return m.group(1).decode() if m else "unknown"

    def spawn(self, cfg: MachineConfig, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        """Start QEMU for ``cfg``; the caller decides whether to wait for it.

        QEMU gets a minimal environment (mvmctl's may hold registry or API
        secrets), umask 077 (console.log, status and sockets are private),
        its run directory as cwd (how a QEMU is recognised as this VM's even
        without a record: :func:`owned_pid`) and its own session.
        """
        argv = self.argv(cfg)
        for end in ("in", "out"):  # the control port's pipe chardev (see argv.py)
            fifo = cfg.run_dir / f"control.{end}"
            if not fifo.exists():
                os.mkfifo(fifo, 0o600)
        logf = os.fdopen(
            os.open(cfg.run_dir / "qemu.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab"
        )
        try:
            return proc.spawn(argv, stdout=logf, stderr=logf, pass_fds=pass_fds,
                              cwd=cfg.run_dir, error=BackendError)  # fmt: skip
        finally:
            logf.close()


def wait_ready(popen: subprocess.Popen[bytes], run_dir: Path, timeout: float = 10.0) -> None:
    """Wait until QEMU answers on QMP (or died: raise with its log tail)."""
    deadline = time.monotonic() + timeout
    sock = run_dir / "qmp.sock"
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise start_failure(run_dir)
        if sock.exists():
            try:
                qmp.command(sock, "query-status", timeout=2)
                return
            except BackendError:
                pass
        time.sleep(0.02)
    raise BackendError(f"QEMU did not answer on {sock} within {timeout:.0f}s")


def start_failure(run_dir: Path) -> BackendError:
    tail = ""
    with contextlib.suppress(OSError):
        tail = (run_dir / "qemu.log").read_text(errors="replace").strip()
    last = tail.splitlines()[-1] if tail else "no output"
    last = re.sub(r"^qemu-system-x86_64: ", "", last)
    return BackendError(f"QEMU failed to start: {last}", log_tail=tail[-2000:])


def _dead(pid: int, start: int | None) -> bool:
    from mvm.state.records import pid_alive

    return not pid_alive(pid, start)


def _wait_dead(pid: int, start: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _dead(pid, start):
            return True
        time.sleep(0.02)
    return _dead(pid, start)


def owned_pid(run_dir: Path) -> int | None:
    """The pid of the QEMU running for ``run_dir``, found without a VM record.

    QEMU writes ``qemu.pid`` early and runs with ``run_dir`` as its cwd, so
    a VM whose record is missing, corrupt or was never saved (mvmctl killed
    right after spawning) can still be found and stopped.  The cwd check
    keeps a recycled pid from being mistaken for ours; as a last resort
    every process is checked (a QEMU killed before writing its pidfile).
    """
    with contextlib.suppress(OSError, ValueError):
        pid = int((run_dir / "qemu.pid").read_text().split()[0])
        if _runs_in(pid, run_dir):
            return pid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _runs_in(int(entry.name), run_dir):
            return int(entry.name)
    return None


def _runs_in(pid: int, run_dir: Path) -> bool:
    try:
        if os.readlink(f"/proc/{pid}/cwd") != str(run_dir):
            return False
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[1].split()[0] == "Z"
    return not zombie and any(b"qemu" in a for a in cmd[:1])


def run_status(run_dir: Path, timeout: float = 1.0) -> str | None:
    """QEMU's run state (``running``, ``paused``, ``io-error``…) or None if it does not answer."""
    try:
        reply = qmp.command(run_dir / "qmp.sock", "query-status", timeout=timeout)
    except BackendError:
        return None
    return str(reply.get("status")) if isinstance(reply, dict) else None


def request_poweroff(run_dir: Path) -> bool:
    """Ask the guest's /init to stop its services, sync and power off (control port)."""
    try:
        fd = os.open(run_dir / "control.in", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # no FIFO, or nobody (no QEMU) has it open: ENXIO
        return False
    try:
        os.write(fd, b"poweroff\n")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def stop(pid: int, start: int | None, run_dir: Path, grace: float = 8.0) -> None:
    """Stop the QEMU ``pid``: guest poweroff → QMP quit → SIGKILL.

    The guest gives its processes up to 5 s after SIGTERM (see init.sh), so
    ``grace`` is longer than that.  A paused guest (``mvmctl pause``, or an
    I/O error such as a full host disk) cannot power itself off: go straight
    to ``quit``.
    """
    if _dead(pid, start):
        return
    status = run_status(run_dir)
    if status in ("running", None) and request_poweroff(run_dir) and _wait_dead(pid, start, grace):
        return
    with contextlib.suppress(BackendError):
        qmp.command(run_dir / "qmp.sock", "quit", timeout=2)
    if _wait_dead(pid, start, 2.0):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_dead(pid, start, 2.0)
