"""The Firecracker backend: the real ``firecracker`` binary driven over its API socket.

Launch = spawn ``firecracker --api-sock … --id …`` (its own session, a
minimal environment, umask 077, the run directory as cwd, serial console =
its stdout → ``console.log``, its log and metrics in private files), wait
for the socket, send :func:`mvm.backends.firecracker.config.plan` in order
(the last call is ``InstanceStart``), start the relay that holds the
listening host ends (:mod:`.relay`).  Any refusal kills the process and
removes what the launch wrote, and surfaces Firecracker's ``fault_message``
as the error.

Firecracker cannot fall back to emulation: when KVM cannot run a guest on
this host (:mod:`mvm.backends.kvm`), the launch fails right after
``InstanceStart`` was accepted (the vCPUs would spin without ever running
the guest), unless ``MVM_FIRECRACKER_KVM=unchecked``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from mvm import proc
from mvm.backends.base import Backend, Capabilities, LaunchError, Machine, RunStatus
from mvm.backends.firecracker import config as fcconfig
from mvm.backends.firecracker import jail as jail_mod
from mvm.backends.firecracker.api import ApiClient
from mvm.backends.firecracker.jail import BASE, Jail
from mvm.backends.spec import HostChannels, MachineSpec, RestoreSource
from mvm.errors import BackendError, HypervisorMissing
from mvm.log import get_logger
from mvm.state.procs import pid_alive, proc_start_time

log = get_logger(__name__)
FIRECRACKER = "firecracker"
JAILER = "jailer"
API_SOCK = "firecracker.sock"
VSOCK = "vsock.sock"
PIDFILE = "firecracker.pid"
LOG = "firecracker.log"
METRICS = "metrics.json"
GUEST_DATA = "guestdata.img"
SOCKET_TIMEOUT = 5.0
STATE_MAP: dict[str, RunStatus] = {"Running": "running", "Paused": "paused"}
INSTALL_HINT = (
    "install a static Firecracker release (github.com/firecracker-microvm/firecracker/"
    "releases) on PATH or set MVM_FIRECRACKER=/path/to/firecracker; `make firecracker` "
    "fetches the pinned v1.12.1 used by the tests into the cache"
)


def firecracker_binary() -> str:
    path = os.environ.get("MVM_FIRECRACKER") or shutil.which(FIRECRACKER)
    if not path or not os.access(path, os.X_OK) or os.path.isdir(path):
        raise HypervisorMissing(f"{path or FIRECRACKER} not found (or not executable)",
                                hint=INSTALL_HINT)  # fmt: skip
    return path


def jailer_binary() -> str | None:
    path = os.environ.get("MVM_JAILER")
    if not path:
        try:
            path = str(Path(firecracker_binary()).with_name(JAILER))
        except HypervisorMissing:
            path = None
        if not path or not os.access(path, os.X_OK):
            path = shutil.which(JAILER)
    return path if path and os.access(path, os.X_OK) else None


def tap_device() -> str | None:
    """A host tap the user lets mvm use (``MVM_FIRECRACKER_TAP``), if it exists."""
    name = os.environ.get("MVM_FIRECRACKER_TAP", "").strip()
    if not name:
        return None
    if not name.isprintable() or "/" in name or len(name) > 15:
        raise BackendError(f"MVM_FIRECRACKER_TAP={name!r} is not a network interface name")
    if not Path("/sys/class/net", name).exists():
        raise BackendError(f"MVM_FIRECRACKER_TAP: no network interface {name!r} on this host")
    return name


class FirecrackerMachine(Machine):
    """A running Firecracker: its process, run directory and API socket."""

    def __init__(self, backend: FirecrackerBackend, run_dir: Path, pid: int,
                 pid_start: int | None, *, popen: subprocess.Popen[bytes] | None = None,
                 command: list[str] | None = None) -> None:  # fmt: skip
        super().__init__(backend, run_dir, pid, pid_start)
        self.popen = popen
        self.command = command or []
        self.api = ApiClient(run_dir / API_SOCK)

    def status(self, timeout: float = 1.0) -> RunStatus:
        if not self.alive():
            return "gone"
        try:
            info = self.api.instance(timeout)
        except BackendError:
            return "unknown"
        return STATE_MAP.get(info.state, "unknown")

    def pause(self) -> None:
        self.api.patch("/vm", {"state": "Paused"})

    def resume(self) -> None:
        self.api.patch("/vm", {"state": "Resumed"})

    def snapshot(self, state: Path, *, memory_mib: int, shared_ram: bool) -> None:
        """Pause, then write the device state to ``state`` and the guest memory next
        to it (``memory``): a clone maps that file copy-on-write (``restore``)."""
        for call in fcconfig.snapshot_plan(state, memory_path(state)):
            self.api.request(call.method, call.path, call.body, timeout=120.0)

    def wait_restored(self, memory_mib: int) -> None:
        info = self.api.instance(5.0)
        if info.state != "Paused":
            raise BackendError(f"Firecracker: the restored VM is {info.state!r}, not paused")

    def _answering(self) -> bool:
        try:
            return self.api.instance(2.0).state != "Not started"
        except BackendError:
            return False

    def _quit(self) -> None:
        """Firecracker has no "quit": Ctrl-Alt-Del (the guest's i8042 driver resets
        and ``reboot=k`` makes Firecracker exit); a guest that ignores it is killed."""
        self.api.action("SendCtrlAltDel", timeout=2.0)

    def close(self) -> None:
        self.api.close()

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
        return LaunchError(f"Firecracker: {message}", command=self.command,
                           log_tail=_tail(self.run_dir / LOG))  # fmt: skip


def memory_path(state: Path) -> Path:
    return state.with_name("memory")


def _tail(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace").strip()[-2000:] or None
    return None


class FirecrackerBackend(Backend):
    name = "firecracker"
    machine_type = "firecracker-microvm"
    # snapshots=False: Machine.snapshot and launch(restore=…) work (contract-tested), but a
    # Firecracker 1.12 snapshot reopens its drives and vsock socket at their old absolute
    # paths, so the runtime's fork and template restore (a new run directory) are refused
    capabilities = Capabilities(smbios=False, fw_cfg=False, snapshots=False,
                                agent_transport="vsock")  # fmt: skip

    def version(self) -> str:
        out = proc.run([firecracker_binary(), "--version"], timeout=10, error=BackendError)
        first = out.stdout.decode(errors="replace").strip().splitlines()
        word = first[0].split()[-1] if first and first[0].split() else "unknown"
        return word.removeprefix("v")

    def argv(self, spec: MachineSpec, binary: str | None = None,
             jailed: Jail | None = None) -> list[str]:  # fmt: skip
        """Firecracker's own argv; under the jailer, the jailer's (paths inside the
        jail; the logger and metrics are then configured over the API, once their
        files exist in the jail)."""
        rd = spec.run_dir
        fc = binary or FIRECRACKER
        if jailed is not None:
            args = ["--api-sock", f"/run/{API_SOCK}", *jail_mod.seccomp_args()]
            return jailed.argv(fc, spec.name, rd, args)
        return [
            fc, "--api-sock", str(rd / API_SOCK), "--id", spec.name,
            "--log-path", str(rd / LOG), "--level", "Info",
            "--metrics-path", str(rd / METRICS), *jail_mod.seccomp_args(),
        ]  # fmt: skip

    def options(self, spec: MachineSpec, guest_data: bool) -> fcconfig.FcOptions:
        from mvm import __version__

        rd = spec.run_dir
        return fcconfig.FcOptions(
            vsock_uds=rd / VSOCK, guest_data=rd / GUEST_DATA if guest_data else None,
            tap=tap_device(), metadata={"name": spec.name, "mvm_version": __version__},
        )  # fmt: skip

    def plan(self, spec: MachineSpec) -> list[fcconfig.ApiCall]:
        return fcconfig.plan(spec, self.options(spec, True))

    def command(self, spec: MachineSpec) -> list[str]:
        """The process that would run (its configuration is :meth:`plan`)."""
        try:
            binary = firecracker_binary()
        except HypervisorMissing:
            binary = FIRECRACKER
        return self.argv(spec, binary, jail_mod.settings())

    def describe(self, spec: MachineSpec) -> str:
        """The process, then the API calls in order, one per line (``--show-command``)."""
        return "\n".join([proc.printable(self.command(spec)), *map(str, self.plan(spec))])

    def launch(self, spec: MachineSpec, restore: RestoreSource | None = None) -> FirecrackerMachine:
        binary = firecracker_binary()
        jailed = jail_mod.settings()
        if jailed is not None and restore is not None:
            raise BackendError("Firecracker: restoring a snapshot under the jailer is not "
                               "supported (unset MVM_FIRECRACKER_JAILER)")  # fmt: skip
        rd = spec.run_dir
        for name in (LOG, METRICS, "console.log"):  # private, before Firecracker opens them
            os.close(os.open(rd / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        machine = self._spawn(spec, binary, jailed)
        try:
            self._wait_socket(machine)
            if jailed is not None:
                calls = self._stage_jail(machine, spec, jailed)
            elif restore is not None:
                memory = restore.ram or memory_path(restore.state)
                calls = fcconfig.restore_plan(restore.state, memory)
            else:
                opts = self.options(spec, True)
                calls = fcconfig.plan(spec, opts)
                self._write_guest_data(machine, spec, rd / GUEST_DATA)
            machine._scrub += list(spec.scrub)
            relay = self._start_relay(machine, jailed)
            for call in calls:
                machine.api.request(call.method, call.path, call.body, timeout=30.0)
            if restore is None:
                self._check_kvm(spec)
            log.debug("firecracker %s configured (relay %s)", spec.name, relay)
        except BaseException as exc:
            machine.kill()
            machine.scrub()
            machine.close()
            if isinstance(exc, BackendError) and not isinstance(exc, LaunchError):
                err = LaunchError(exc.message, command=machine.command, log_tail=exc.log_tail)
                err.hint = exc.hint
                raise err from exc
            raise
        return machine

    def _write_guest_data(self, machine: FirecrackerMachine, spec: MachineSpec,
                          path: Path) -> None:  # fmt: skip
        """The guest-data drive (credentials, network files; 0600), scrubbed once
        Firecracker has opened it (``Machine.wait_ready``)."""
        from mvm.backends import guestdrive

        machine._scrub.append(path)
        guestdrive.write(path, spec.credentials, spec.network.guest_config or None)

    def _stage_jail(self, machine: FirecrackerMachine, spec: MachineSpec,
                    jailed: Jail) -> list[fcconfig.ApiCall]:  # fmt: skip
        """Put what Firecracker opens into its jail (the jailer has built it by the
        time the API answers) and return the calls, with in-jail paths."""
        root = Jail.root(spec.run_dir, spec.name)
        kernel = jailed.place(spec.kernel, root, "kernel")
        initrd = jailed.place(spec.initramfs, root, "initrd") if spec.initramfs else None
        disks = []
        for i, d in enumerate(spec.disks):
            name = f"{fcconfig.drive_letter(i)}.img"
            disks.append(replace(d, path=jailed.place(d.path, root, name,
                                                       writable=not d.readonly)))  # fmt: skip
            if d.path in spec.scrub:  # a secret drive's link in the jail goes with it
                machine._scrub.append(root / name)
        self._write_guest_data(machine, spec, root / GUEST_DATA)
        jailed.own(root / GUEST_DATA)
        for name in (LOG, METRICS):
            f = root / name
            os.close(os.open(f, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            jailed.own(f)
            (spec.run_dir / name).unlink(missing_ok=True)
            (spec.run_dir / name).symlink_to(f)
        (spec.run_dir / VSOCK).symlink_to(root / VSOCK)
        inside = replace(spec, kernel=kernel, initramfs=initrd, disks=tuple(disks))
        opts = replace(self.options(spec, True), vsock_uds=Path("/") / VSOCK,
                       guest_data=Path("/") / GUEST_DATA)  # fmt: skip
        return [
            fcconfig.ApiCall("PUT", "/logger", {"log_path": f"/{LOG}", "level": "Info"}),
            fcconfig.ApiCall("PUT", "/metrics", {"metrics_path": f"/{METRICS}"}),
            *fcconfig.plan(inside, opts),
        ]

    def _spawn(self, spec: MachineSpec, binary: str, jailed: Jail | None) -> FirecrackerMachine:
        rd = spec.run_dir
        argv = self.argv(spec, binary, jailed)
        for stale in (API_SOCK, VSOCK):
            (rd / stale).unlink(missing_ok=True)
        if jailed is not None:  # the run directory's names lead into the jail
            (rd / BASE).mkdir(mode=0o700, exist_ok=True)
            (rd / API_SOCK).symlink_to(Jail.root(rd, spec.name) / "run" / API_SOCK)
        out = os.open(rd / "console.log", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        err = os.open(rd / LOG, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            popen = proc.spawn(argv, stdout=out, stderr=err, cwd=rd, error=BackendError,
                               what="starting Firecracker")  # fmt: skip
        finally:
            os.close(out)
            os.close(err)
        pid_start = proc_start_time(popen.pid)
        tmp = rd / f".{PIDFILE}.tmp"
        tmp.write_text(f"{popen.pid}\n")
        tmp.rename(rd / PIDFILE)
        return FirecrackerMachine(self, rd, popen.pid, pid_start, popen=popen, command=argv)

    def _wait_socket(self, machine: FirecrackerMachine) -> None:
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while time.monotonic() < deadline:
            if not machine.alive():
                raise BackendError("Firecracker exited before its API socket was ready",
                                   log_tail=_tail(machine.run_dir / LOG))  # fmt: skip
            if (machine.run_dir / API_SOCK).exists():
                try:
                    machine.api.instance(1.0)
                    return
                except BackendError:
                    pass
            time.sleep(0.01)
        raise BackendError(f"Firecracker's API socket did not answer within {SOCKET_TIMEOUT:.0f}s")

    def _start_relay(self, machine: FirecrackerMachine, jailed: Jail | None = None) -> int:
        """Bind the listening host ends here (so they listen before the guest runs),
        then hand them to the relay that serves them for the VM's life.  Firecracker
        connects to ``<vsock uds>_1026``: inside the jail when jailed."""
        from mvm import channels

        rd = machine.run_dir
        status = rd / f"{VSOCK}_{channels.STATUS_PORT}"
        if jailed is not None:
            status = Jail.root(rd, rd.name) / status.name
        listeners = []
        try:
            for path in (status, rd / "console.sock"):
                path.unlink(missing_ok=True)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listeners.append(s)
                # bound under a short name in the run directory, then moved (a socket
                # keeps working under its new name): a jail path can exceed AF_UNIX's 108
                short = rd / f".{path.name}.bind"
                short.unlink(missing_ok=True)
                old = os.umask(0o077)
                try:
                    s.bind(str(short))
                finally:
                    os.umask(old)
                short.rename(path)
                s.listen(8)
                s.set_inheritable(True)
            if jailed is not None:
                jailed.own(status)
        except OSError as exc:
            for s in listeners:
                s.close()
            raise BackendError(f"Firecracker: cannot listen for the guest: "
                               f"{exc.strerror or exc}") from exc  # fmt: skip
        try:
            fds = tuple(s.fileno() for s in listeners)
            popen = proc.spawn(
                [sys.executable, "-m", "mvm.backends.firecracker.relay", str(rd),
                 str(machine.pid), str(machine.pid_start) if machine.pid_start else "-",
                 *map(str, fds)],
                cwd=Path("/"), pass_fds=fds, error=BackendError, what="starting the relay",
            )  # fmt: skip
            return popen.pid
        finally:
            for s in listeners:
                s.close()

    def _check_kvm(self, spec: MachineSpec) -> None:
        from mvm.backends import kvm

        verdict = kvm.verdict(spec.kernel)
        if not verdict.usable:
            raise BackendError(
                "Firecracker accepted the configuration and InstanceStart, but KVM cannot "
                f"run a guest on this host ({verdict.reason}); Firecracker has no emulation "
                "fallback",
                hint="use --hypervisor qemu (it falls back to TCG)",
            )

    def doctor(self, kernel: Path | None) -> dict[str, str]:
        from mvm.backends import kvm

        try:
            binary = firecracker_binary()
            info = {"version": f"{self.version()} ({binary})"}
        except BackendError as exc:
            return {"version": f"missing: {exc.message}", "install": INSTALL_HINT}
        v = kvm.verdict(kernel)
        info["kvm"] = ("usable: " if v.usable else "cannot run guests: ") + v.reason
        info["jailer"] = jail_mod.doctor()
        try:
            tap = tap_device()
        except BackendError as exc:
            tap, info["network"] = None, exc.message
        if tap:
            info["network"] = f"tap {tap} (MVM_FIRECRACKER_TAP): NIC and MMDS configured"
        else:
            info.setdefault("network", "no tap (set MVM_FIRECRACKER_TAP): VMs get no NIC; "
                                       "-p and egress need --hypervisor qemu")  # fmt: skip
        return info

    def channels(self, run_dir: Path) -> HostChannels:
        return HostChannels(
            status=run_dir / "status", control=run_dir / VSOCK, agent=run_dir / VSOCK,
            console=run_dir / "console.sock", console_log=run_dir / "console.log",
            control_reply=None, transport="vsock",
        )  # fmt: skip

    def ephemeral(self, run_dir: Path) -> tuple[Path, ...]:
        return (run_dir / GUEST_DATA, Jail.root(run_dir, run_dir.name) / GUEST_DATA)

    def owned_pid(self, run_dir: Path) -> int | None:
        """The pidfile mvm writes right after spawning, checked against the process's
        cwd (the run directory) and name; else a scan of every process."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((run_dir / PIDFILE).read_text().split()[0])
            if _runs_in(pid, run_dir, jailed=True):
                return pid
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _runs_in(int(entry.name), run_dir):
                return int(entry.name)
        return None

    def attach(self, run_dir: Path, pid: int, pid_start: int | None) -> FirecrackerMachine:
        return FirecrackerMachine(self, run_dir, pid, pid_start)


def _runs_in(pid: int, run_dir: Path, jailed: bool = False) -> bool:
    """Whether ``pid`` is the Firecracker of ``run_dir``: its cwd (a jailed one's cwd
    is its jail root, seen as "/": then its ``--id`` and the jail directory decide)."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if os.path.basename(cmd[0]) != b"firecracker" or not pid_alive(pid, None):
        return False
    if cwd == str(run_dir):
        return True
    named = any(a == b"--id" and b == run_dir.name.encode() for a, b in itertools.pairwise(cmd))
    return jailed and cwd == "/" and named and (run_dir / BASE).is_dir()
