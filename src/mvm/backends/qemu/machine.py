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
import socket
import subprocess
import time
from pathlib import Path

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
        """Start QEMU for ``cfg``; the caller decides whether to wait for it."""
        argv = self.argv(cfg)
        # everything QEMU creates (console.log, status, sockets) is private: umask 077
        logf = os.fdopen(
            os.open(cfg.run_dir / "qemu.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab"
        )
        try:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                start_new_session=True, umask=0o077, pass_fds=pass_fds, cwd=cfg.run_dir,
            )  # fmt: skip
        except OSError as exc:
            raise BackendError(f"cannot start {argv[0]}: {exc.strerror}") from exc
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


def request_poweroff(run_dir: Path) -> bool:
    """Ask the guest's /init to sync and power off over the control port."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(run_dir / "control.sock"))
            s.sendall(b"poweroff\n")
            time.sleep(0.05)
        return True
    except OSError:
        return False


def stop(pid: int, start: int | None, run_dir: Path, grace: float = 5.0) -> None:
    """Stop the QEMU ``pid``: guest poweroff → QMP quit → SIGKILL."""
    if _dead(pid, start):
        return
    if request_poweroff(run_dir) and _wait_dead(pid, start, grace):
        return
    with contextlib.suppress(BackendError):
        qmp.command(run_dir / "qmp.sock", "quit", timeout=2)
    if _wait_dead(pid, start, 2.0):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_dead(pid, start, 2.0)
