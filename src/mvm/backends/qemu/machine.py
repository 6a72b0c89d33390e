"""The QEMU backend: launching QEMU for a :class:`MachineSpec` and the
:class:`QemuMachine` that owns the running process.

A VM's QEMU runs in its own session (so a terminal's Ctrl-C reaches only
mvmctl, which then stops the VM deliberately), with a minimal environment
(mvmctl's may hold registry or API secrets), umask 077 (console.log,
status and sockets are private), its run directory as cwd (how a QEMU is
recognised as this VM's without a record) and its output in ``qemu.log``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from mvm import proc
from mvm.backends import guestdrive
from mvm.backends.base import Backend, Capabilities, LaunchError, Machine, RunStatus
from mvm.backends.qemu import accel as accel_mod
from mvm.backends.qemu import guestdata
from mvm.backends.qemu.argv import MACHINE, NETDEV, QEMU, QemuOptions, build_argv
from mvm.backends.qemu.qmp import QmpSession
from mvm.backends.spec import Disk, HostChannels, MachineSpec, PortForward, RestoreSource
from mvm.errors import BackendError, HypervisorMissing
from mvm.log import get_logger
from mvm.state.procs import pid_alive, proc_start_time

log = get_logger(__name__)
CLONE_TB_MIB = 8  # translation buffer of a restored clone (bench/snapshot.py: PSS)
STATUS_MAP: dict[str, RunStatus] = {
    "running": "running", "paused": "paused", "suspended": "paused", "io-error": "io-error",
    "shutdown": "shutdown", "inmigrate": "paused", "postmigrate": "paused",
    "finish-migrate": "paused", "prelaunch": "paused", "restore-vm": "paused",
    "save-vm": "paused", "internal-error": "io-error", "guest-panicked": "shutdown",
}  # fmt: skip


def qemu_binary() -> str:
    path = os.environ.get("MVM_QEMU") or shutil.which(QEMU)
    if not path or not os.access(path, os.X_OK):
        raise HypervisorMissing(
            f"{path or QEMU} not found (or not executable)",
            hint="install qemu-system-x86 (make setup does)",
        )
    return path


class QemuMachine(Machine):
    """A running QEMU: its process, run directory and one persistent QMP session."""

    def __init__(
        self,
        backend: QemuBackend,
        run_dir: Path,
        pid: int,
        pid_start: int | None,
        *,
        popen: subprocess.Popen[bytes] | None = None,
        command: list[str] | None = None,
        monitor: str = "qmp.sock",
        accel: accel_mod.AccelChoice | None = None,
    ):
        super().__init__(backend, run_dir, pid, pid_start)
        self.popen = popen
        self.command = command or []
        self.accel = accel
        self.session = QmpSession(run_dir / monitor)
        self.incoming: tuple[int, bool] | None = None  # (inherited state fd, shared RAM)

    def qmp(self, cmd: str, timeout: float = 5.0, **args: object) -> object:
        return self.session.command(cmd, timeout, **args)

    def status(self, timeout: float = 1.0) -> RunStatus:
        if not self.alive():
            return "gone"
        try:
            reply = self.session.command("query-status", timeout)
        except BackendError:
            return "unknown"
        raw = reply.get("status") if isinstance(reply, dict) else None
        return STATUS_MAP.get(str(raw), "unknown")

    def disk_full(self) -> bool:
        """Whether a block device stopped the guest with ENOSPC (``io-status: nospace``)."""
        try:
            devices = self.session.command("query-block", 1.0)
        except BackendError:
            return False
        return isinstance(devices, list) and any(
            isinstance(d, dict) and d.get("io-status") == "nospace" for d in devices
        )

    def pause(self) -> None:
        self.session.command("stop")

    def resume(self) -> None:
        self.session.command("cont")

    def snapshot(self, state: Path, *, memory_mib: int, shared_ram: bool) -> None:
        from mvm.backends.qemu import snapshot

        snapshot.save(self, state, memory_mib=memory_mib, shared_ram=shared_ram)

    def wait_restored(self, memory_mib: int) -> None:
        from mvm.backends.qemu import snapshot

        if self.incoming is not None:
            fd, shared = self.incoming
            snapshot.start_incoming(self, fd, shared_ram=shared)
            self.incoming = None
        snapshot.wait_loaded(self, memory_mib)

    def _hostfwd(self, command: str, success: str = "") -> None:
        """QEMU 7.2 has no QMP command for user-network forwards: HMP through QMP
        (its reply is text: empty when a rule was added, "… removed" when removed)."""
        reply = self.session.command("human-monitor-command", 5.0, **{"command-line": command})
        text = str(reply or "").strip()
        if text and not (success and text.endswith(success)):
            raise BackendError(f"QEMU refused the forward: {text.splitlines()[0]}")

    def add_forward(self, forward: PortForward) -> None:
        self._hostfwd(f"hostfwd_add {NETDEV} {forward.proto}:{forward.address}:{forward.host}"
                      f"-:{forward.guest}")  # fmt: skip

    def remove_forward(self, forward: PortForward) -> None:
        self._hostfwd(
            f"hostfwd_remove {NETDEV} {forward.proto}:{forward.address}:{forward.host}", "removed"
        )

    def _answering(self) -> bool:
        if not self.session.sock.exists():  # not listening yet: no noisy failed connect
            return False
        try:
            self.session.command("query-status", 2.0)
            return True
        except BackendError:
            return False

    def _quit(self) -> None:
        self.session.command("quit", 2.0)

    def close(self) -> None:
        self.session.close()

    def wait(self, timeout: float | None = None) -> int | None:
        if self.popen is not None:
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        return super().wait(timeout)

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return pid_alive(self.pid, self.pid_start)

    def launch_error(self, message: str) -> LaunchError:
        tail = ""
        with contextlib.suppress(OSError):
            tail = (self.run_dir / "qemu.log").read_text(errors="replace").strip()
        last = tail.splitlines()[-1] if tail else ""
        last = re.sub(r"^qemu-system-x86_64: ", "", last)
        if not last:
            with contextlib.suppress(OSError):
                console = (self.run_dir / "console.log").read_text(errors="replace").strip()
                tail = console[-2000:]
        text = f"QEMU failed to start: {last}" if last else f"QEMU: {message}"
        return LaunchError(text, command=self.command, log_tail=tail[-2000:] or None)


GUEST_DRIVE = "guestdata.img"


def with_guest_drive(spec: MachineSpec) -> tuple[MachineSpec, guestdata.GuestData]:
    """``spec`` with the guest-data drive as its last disk and ``mvm.guestdata=vdX`` on
    its command line, and the drive file to write (0600, in the credentials directory
    that is scrubbed once QEMU has opened it): no fw_cfg, no SMBIOS."""
    path = spec.run_dir / guestdata.CREDS_DIR / GUEST_DRIVE
    content = guestdrive.image(spec.credentials, spec.network.guest_config or None)
    spec = replace(spec, disks=(*spec.disks, Disk(path, "guestdata", readonly=True)),
                   cmdline=(*spec.cmdline, guestdrive.cmdline(len(spec.disks))))  # fmt: skip
    return spec, guestdata.GuestData(files=((path, content),))


class QemuBackend(Backend):
    name = "qemu"
    machine_type = MACHINE  # recorded with snapshots (a restore needs the same machine)
    capabilities = Capabilities(
        smbios=True, fw_cfg=True, snapshots=True, agent_transport="virtio-serial"
    )

    def version(self) -> str:
        """QEMU's version, remembered per binary (path, size, mtime): every restore
        compares it with the snapshot's, and running QEMU costs tens of ms."""
        qemu = qemu_binary()
        try:
            st = os.stat(qemu)
            stamp = f"{qemu}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        except OSError:
            stamp = ""
        from mvm import paths
        from mvm.state.atomic import read_json, write_json

        cache = paths.cache_dir() / "qemu-versions.json"
        with contextlib.suppress(Exception):
            known = read_json(cache)
            if stamp and isinstance(known, dict) and isinstance(known.get(stamp), str):
                return str(known[stamp])
        out = proc.run([qemu, "--version"], timeout=10, error=BackendError)
        m = re.search(rb"version (\S+)", out.stdout)
        version = m.group(1).decode() if m else "unknown"
        if stamp and version != "unknown":
            with contextlib.suppress(Exception):  # only costs the next call a QEMU run
                write_json(cache, {stamp: version})
        return version

    def doctor(self, kernel: Path | None) -> dict[str, str]:
        """QEMU's version and path, and which accelerator it would use and why."""
        try:
            qemu = qemu_binary()
            info = {"version": f"{self.version()} ({qemu})"}
        except BackendError as exc:
            return {"version": f"missing: {exc.message}", "accelerator": "unknown"}
        if kernel is None:
            info["accelerator"] = "unknown (needs a kernel to probe)"
        else:
            choice = accel_mod.choose(kernel, qemu)
            info["accelerator"], info["accel_reason"] = choice.accel, choice.reason
        return info

    def accel(self, spec: MachineSpec) -> accel_mod.AccelChoice:
        return accel_mod.choose(spec.kernel, qemu_binary())

    def options(self, spec: MachineSpec, choice: accel_mod.AccelChoice) -> QemuOptions:
        return QemuOptions(accel=choice.accel, tsc_khz=accel_mod.host_tsc_khz(), qemu=qemu_binary())

    def _plan(
        self,
        spec: MachineSpec,
        restore: RestoreSource | None = None,
        incoming_fd: int | None = None,
    ) -> tuple[list[str], guestdata.GuestData, accel_mod.AccelChoice]:
        choice = self.accel(spec)
        if spec.guest_data == "drive":
            spec, data = with_guest_drive(spec)
        else:
            data = guestdata.plan(spec.credentials, spec.run_dir, smbios=spec.machine == "q35")
            data = guestdata.with_network(data, spec.network.guest_config, spec.run_dir)
        opts = self.options(spec, choice)
        if spec.ram_file is not None:
            opts = replace(opts, mem_path=spec.ram_file, mem_share=True)
        if restore is not None:
            # a clone maps the snapshot's RAM privately: shared pages, never written back
            # clones share the snapshot's pages; under TCG each has its own translation
            # buffer (QEMU's default grows to tens of MiB): keep it small per clone
            opts = replace(opts, incoming_fd=incoming_fd, mem_path=restore.ram, mem_share=False,
                           mem_object=restore.ram_object,
                           tb_size_mib=opts.tb_size_mib or CLONE_TB_MIB)  # fmt: skip
        return build_argv(spec, opts, data), data, choice

    def command(self, spec: MachineSpec) -> list[str]:
        return self._plan(spec)[0]

    def launch(self, spec: MachineSpec, restore: RestoreSource | None = None) -> QemuMachine:
        state_fd = None
        if restore is not None:
            try:
                state_fd = os.open(restore.state, os.O_RDONLY)  # inherited by QEMU only
            except OSError as exc:
                raise BackendError(f"snapshot state {restore.state}: {exc.strerror}") from exc
        try:
            return self._launch(spec, restore, state_fd)
        finally:
            if state_fd is not None:
                os.close(state_fd)

    def _launch(
        self, spec: MachineSpec, restore: RestoreSource | None, state_fd: int | None
    ) -> QemuMachine:
        argv, data, choice = self._plan(spec, restore, state_fd)
        rd = spec.run_dir
        guestdata.write(data)
        for end in ("in", "out"):  # the control port's pipe chardev (see argv.py)
            fifo = rd / f"control.{end}"
            if not fifo.exists():
                os.mkfifo(fifo, 0o600)
        fd = os.open(rd / "qemu.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "ab") as logf:
                popen = proc.spawn(argv, stdout=logf, stderr=logf, cwd=rd, error=BackendError,
                                   what="starting QEMU",
                                   pass_fds=() if state_fd is None else (state_fd,))  # fmt: skip
        except BaseException:
            if data.directory is not None:
                shutil.rmtree(data.directory, ignore_errors=True)
            raise
        machine = QemuMachine(self, rd, popen.pid, proc_start_time(popen.pid), popen=popen,
                              command=argv, accel=choice)  # fmt: skip
        machine._scrub = [p for p in (data.directory, *spec.scrub) if p is not None]
        if restore is not None and state_fd is not None:
            machine.incoming = (state_fd, restore.ram is not None)
        return machine

    def channels(self, run_dir: Path) -> HostChannels:
        return HostChannels(
            status=run_dir / "status", control=run_dir / "control.in",
            agent=run_dir / "agent.sock", console=run_dir / "console.sock",
            console_log=run_dir / "console.log", control_reply=run_dir / "control.out",
        )  # fmt: skip

    def ephemeral(self, run_dir: Path) -> tuple[Path, ...]:
        return (run_dir / guestdata.CREDS_DIR,)

    def owned_pid(self, run_dir: Path) -> int | None:
        """QEMU writes ``qemu.pid`` early and runs with ``run_dir`` as its cwd, so a VM
        whose record is missing, corrupt or was never saved (mvmctl killed right after
        spawning) can still be found; the cwd check keeps a recycled pid from being
        mistaken for ours.  Last resort: check every process (killed before the pidfile)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((run_dir / "qemu.pid").read_text().split()[0])
            if _runs_in(pid, run_dir):
                return pid
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _runs_in(int(entry.name), run_dir):
                return int(entry.name)
        return None

    def attach(self, run_dir: Path, pid: int, pid_start: int | None) -> QemuMachine:
        # the second monitor: the launching mvmctl may hold the first for its whole life
        return QemuMachine(self, run_dir, pid, pid_start, monitor="qmp-ctl.sock")


def _runs_in(pid: int, run_dir: Path) -> bool:
    try:
        if os.readlink(f"/proc/{pid}/cwd") != str(run_dir):
            return False
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return pid_alive(pid, None) and b"qemu" in cmd[0]
