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
import signal
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
from mvm.backends.kvm import KvmVerdict
from mvm.backends.kvm import verdict as kvm_verdict
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
METRICS = "metrics.json"  # the latest metrics record, kept by the relay
METRICS_FIFO = "metrics.fifo"  # where Firecracker writes them (a file would grow forever)
GUEST_DATA = "guestdata.img"
SNAP_STATE, SNAP_MEMORY = "snapshot.state", "snapshot.mem"  # in a jail
SOCKET_TIMEOUT = 5.0
STATE_MAP: dict[str, RunStatus] = {"Running": "running", "Paused": "paused"}
INSTALL_HINT = (
    "install a static Firecracker release (github.com/firecracker-microvm/firecracker/"
    "releases) on PATH or set MVM_FIRECRACKER=/path/to/firecracker; `make firecracker` "
    "fetches the pinned v1.12.1 used by the tests into the cache"
)


def firecracker_binary() -> str:
    """The binary, as an absolute path: Firecracker is started in the run directory, where
    a relative ``MVM_FIRECRACKER=./firecracker`` would name nothing."""
    path = os.environ.get("MVM_FIRECRACKER") or shutil.which(FIRECRACKER)
    if not path or not os.access(path, os.X_OK) or os.path.isdir(path):
        raise HypervisorMissing(f"{path or FIRECRACKER} not found (or not executable)",
                                hint=INSTALL_HINT)  # fmt: skip
    return os.path.abspath(path)


def jailer_binary() -> str | None:
    path = os.environ.get("MVM_JAILER")
    if not path:
        try:
            path = str(Path(firecracker_binary()).with_name(JAILER))
        except HypervisorMissing:
            path = None
        if not path or not os.access(path, os.X_OK):
            path = shutil.which(JAILER)
    return os.path.abspath(path) if path and os.access(path, os.X_OK) else None


LOG_LEVELS = ("Error", "Warning", "Info", "Debug")


def log_level() -> str:
    """Firecracker's log level: ``Warning`` by default (at ``Info`` it logs every API
    request with its body, two lines per ``ls``/``status`` of the VM, and the file grows
    for the VM's life); ``MVM_FIRECRACKER_LOG_LEVEL`` to debug."""
    raw = os.environ.get("MVM_FIRECRACKER_LOG_LEVEL", "Warning").strip().capitalize()
    if raw not in LOG_LEVELS:
        raise BackendError(f"MVM_FIRECRACKER_LOG_LEVEL={raw!r}: use one of {', '.join(LOG_LEVELS)}")
    return raw


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
        self.console_w: int | None = None  # the console input's write end, for the relay

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
        to it (``memory``): a clone maps that file copy-on-write (``restore``).  A
        jailed Firecracker writes inside its jail; the files are then moved out."""
        root = Jail.root(self.run_dir, self.run_dir.name)
        jailed = (self.run_dir / BASE).is_dir()
        paths = ((Path("/") / SNAP_STATE, Path("/") / SNAP_MEMORY) if jailed
                 else (state, memory_path(state)))  # fmt: skip
        for call in fcconfig.snapshot_plan(*paths):
            self.api.request(call.method, call.path, call.body, timeout=120.0)
        if jailed:
            try:
                for inside, dest in zip(paths, (state, memory_path(state)), strict=True):
                    shutil.move(root / inside.name, dest)
            except OSError as exc:
                raise BackendError(f"Firecracker: moving the snapshot out of the jail: "
                                   f"{exc.strerror or exc}") from exc  # fmt: skip

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
        """Firecracker has no "quit": Ctrl-Alt-Del, for guest kernels with the i8042 and
        AT keyboard drivers (the mvm kernel has neither, so it is a no-op there: the
        graceful path is the control channel's ``poweroff``, docs/firecracker.md); a
        guest that ignores it is killed."""
        self.api.action("SendCtrlAltDel", timeout=2.0)

    def kill(self) -> None:
        """SIGKILL Firecracker's whole process group (it leads one: its own session), so
        that a wrapper script named by MVM_FIRECRACKER does not leave its child running."""
        with contextlib.suppress(OSError):
            if self.alive() and os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, signal.SIGKILL)
        super().kill()

    def close(self) -> None:
        self.api.close()
        if self.console_w is not None:  # a launch that failed before the relay started
            os.close(self.console_w)
            self.console_w = None

    def launch_error(self, message: str) -> LaunchError:
        return LaunchError(f"Firecracker: {message}", command=self.command,
                           log_tail=_tail(self.run_dir / LOG))  # fmt: skip


def _in_jail(spec: MachineSpec) -> MachineSpec:
    """``spec`` with the file names every jail uses: ``/kernel``, ``/initrd``, ``/vdX.img``."""
    root = Path("/")
    disks = tuple(replace(d, path=root / f"{fcconfig.drive_letter(i)}.img")
                  for i, d in enumerate(spec.disks))  # fmt: skip
    return replace(spec, kernel=root / "kernel",
                   initramfs=root / "initrd" if spec.initramfs else None, disks=disks)  # fmt: skip


def _mkfifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path, 0o600)


def memory_path(state: Path) -> Path:
    return state.with_name("memory")


SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL


def _private_exec(run_dir: Path, binary: str) -> None:
    """The jailer copies the firecracker binary into the jail with its own mode (0755
    from a release): owner-only like everything under MVM_HOME (it has been exec'd)."""
    with contextlib.suppress(OSError):
        (Jail.root(run_dir, run_dir.name) / Path(binary).name).chmod(0o700)


def _check_socket_paths(run_dir: Path) -> None:
    """Refuse a run directory whose socket paths AF_UNIX cannot hold (Firecracker would
    exit at once with "path must be shorter than SUN_LEN").  The longest name is the API
    socket's; the host connects to the others by these paths too (jailed: symlinks)."""
    n = len(os.fsencode(run_dir / API_SOCK))
    if n > SUN_PATH_MAX:
        raise BackendError(
            f"Firecracker: the run directory's socket paths are too long for a Unix socket "
            f"({n} bytes, at most {SUN_PATH_MAX})",
            hint="use a shorter MVM_HOME or VM name",
        )


def _exit_reason(log: str | None) -> str | None:
    """Why Firecracker exited at start, from its log (which gets its stderr too): the
    last logged error line without its timestamp (the closing "exiting with error"
    line says nothing), else the ``Error: …`` it prints on stderr."""
    logged, printed = None, None
    for line in (log or "").splitlines():
        text = " ".join(line.split())
        if text[:1].isdigit() and "] " in text:  # "2026-…T…Z [id:thread] message"
            text = text.split("] ", 1)[1]
            if "error" in text.lower() and not text.startswith("Firecracker exiting"):
                logged = text
        elif text.startswith("Error: "):
            printed = text
    why = logged or printed
    return why[:300] if why else None


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
            return jailed.argv(fc, jail_mod.jail_id(rd), rd, args)
        return [
            fc, "--api-sock", str(rd / API_SOCK), "--id", spec.name,
            "--log-path", str(rd / LOG), "--level", log_level(),
            "--metrics-path", str(rd / METRICS_FIFO), *jail_mod.seccomp_args(),
        ]  # fmt: skip

    def options(self, spec: MachineSpec, guest_data: bool) -> fcconfig.FcOptions:
        from mvm import __version__

        rd = spec.run_dir
        return fcconfig.FcOptions(
            vsock_uds=rd / VSOCK, guest_data=rd / GUEST_DATA if guest_data else None,
            tap=tap_device(), metadata={"name": spec.name, "mvm_version": __version__},
        )  # fmt: skip

    def plan(self, spec: MachineSpec) -> list[fcconfig.ApiCall]:
        if jail_mod.settings(spec.jail) is not None:
            return self.jailed_plan(spec)
        return fcconfig.plan(spec, self.options(spec, True))

    def command(self, spec: MachineSpec) -> list[str]:
        """The process that would run (its configuration is :meth:`plan`)."""
        try:
            binary = firecracker_binary()
        except HypervisorMissing:
            binary = FIRECRACKER
        return self.argv(spec, binary, jail_mod.settings(spec.jail))

    def describe(self, spec: MachineSpec) -> str:
        """The process, then the API calls in order, one per line (``--show-command``)."""
        return "\n".join([proc.printable(self.command(spec)), *map(str, self.plan(spec))])

    def launch(self, spec: MachineSpec, restore: RestoreSource | None = None) -> FirecrackerMachine:
        binary = firecracker_binary()
        _check_socket_paths(spec.run_dir)
        jailed = jail_mod.settings(spec.jail)
        # decided before the launch (a first probe boots a QEMU guest under KVM: not while
        # a Firecracker guest runs), reported after InstanceStart (the contract is tested)
        verdict = kvm_verdict(spec.kernel) if restore is None else None
        rd = spec.run_dir
        for name in (LOG, "console.log"):  # private, before Firecracker opens them
            os.close(os.open(rd / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        if jailed is None:
            _mkfifo(rd / METRICS_FIFO)
        machine = self._spawn(spec, binary, jailed)
        try:
            self._wait_socket(machine)
            if jailed is not None:
                calls = self._stage_jail(machine, spec, jailed, restore)
                _private_exec(spec.run_dir, binary)
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
            if verdict is not None:
                self._check_kvm(verdict)
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

    def _stage_jail(self, machine: FirecrackerMachine, spec: MachineSpec, jailed: Jail,
                    restore: RestoreSource | None = None) -> list[fcconfig.ApiCall]:  # fmt: skip
        """Put what Firecracker opens into its jail (the jailer has built it by the
        time the API answers) and return the calls, with in-jail paths.

        Every jail has the same layout (``/vda.img``…, ``/guestdata.img``,
        ``/vsock.sock``), so a snapshot taken in one jail — which names those paths —
        loads in another: the way Firecracker clones get their own files."""
        root = Jail.root(spec.run_dir, jail_mod.jail_id(spec.run_dir))
        inside = _in_jail(spec)
        jailed.place(spec.kernel, root, inside.kernel.name)
        if spec.initramfs is not None and inside.initramfs is not None:
            jailed.place(spec.initramfs, root, inside.initramfs.name)
        for d, j in zip(spec.disks, inside.disks, strict=True):
            jailed.place(d.path, root, j.path.name, writable=not d.readonly)
            if d.path in spec.scrub:  # a secret drive's link in the jail goes with it
                machine._scrub.append(root / j.path.name)
        self._write_guest_data(machine, spec, root / GUEST_DATA)
        jailed.own(root / GUEST_DATA)
        for name in (LOG, METRICS_FIFO):
            f = root / name
            if name == METRICS_FIFO:
                _mkfifo(f)
            else:
                os.close(os.open(f, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            jailed.own(f)
            (spec.run_dir / name).unlink(missing_ok=True)
            (spec.run_dir / name).symlink_to(f)
        (spec.run_dir / VSOCK).symlink_to(root / VSOCK)
        if restore is not None:
            jailed.place(restore.state, root, SNAP_STATE)
            jailed.place(restore.ram or memory_path(restore.state), root, SNAP_MEMORY)
        return self.jailed_plan(spec, restore is not None)

    def jailed_plan(self, spec: MachineSpec, restore: bool = False) -> list[fcconfig.ApiCall]:
        """The calls for a jailed Firecracker: the logger and metrics, then the plan
        (or the snapshot load) with every path inside the jail (pure)."""
        setup = [
            fcconfig.ApiCall("PUT", "/logger", {"log_path": f"/{LOG}", "level": log_level()}),
            fcconfig.ApiCall("PUT", "/metrics", {"metrics_path": f"/{METRICS_FIFO}"}),
        ]
        if restore:
            return [*setup, *fcconfig.restore_plan(Path("/") / SNAP_STATE,
                                                    Path("/") / SNAP_MEMORY)]  # fmt: skip
        opts = replace(self.options(spec, True), vsock_uds=Path("/") / VSOCK,
                       guest_data=Path("/") / GUEST_DATA)  # fmt: skip
        return [*setup, *fcconfig.plan(_in_jail(spec), opts)]

    def _spawn(self, spec: MachineSpec, binary: str, jailed: Jail | None) -> FirecrackerMachine:
        rd = spec.run_dir
        argv = self.argv(spec, binary, jailed)
        for stale in (API_SOCK, VSOCK):
            (rd / stale).unlink(missing_ok=True)
        if jailed is not None:  # the run directory's names lead into the jail
            (rd / BASE).mkdir(mode=0o700, exist_ok=True)
            (rd / API_SOCK).symlink_to(Jail.root(rd, jail_mod.jail_id(rd)) / "run" / API_SOCK)
        out = os.open(rd / "console.log", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        err = os.open(rd / LOG, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        # the serial console's input: a pipe whose write end the relay holds (console.sock)
        console_in, console_w = os.pipe2(os.O_CLOEXEC)
        try:
            popen = proc.spawn(argv, stdin=console_in, stdout=out, stderr=err, cwd=rd,
                               error=BackendError, what="starting Firecracker")  # fmt: skip
        except BaseException:
            os.close(console_w)
            raise
        finally:
            os.close(out)
            os.close(err)
            os.close(console_in)
        pid_start = proc_start_time(popen.pid)
        tmp = rd / f".{PIDFILE}.tmp"
        tmp.write_text(f"{popen.pid}\n")
        tmp.rename(rd / PIDFILE)
        machine = FirecrackerMachine(self, rd, popen.pid, pid_start, popen=popen, command=argv)
        machine.console_w = console_w
        return machine

    def _wait_socket(self, machine: FirecrackerMachine) -> None:
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while time.monotonic() < deadline:
            if not machine.alive():
                tail = _tail(machine.run_dir / LOG)
                why = _exit_reason(tail)
                raise BackendError("Firecracker exited before its API socket was ready"
                                   + (f": {why}" if why else ""), log_tail=tail)  # fmt: skip
            if (machine.run_dir / API_SOCK).exists():
                try:
                    machine.api.instance(1.0)
                    return
                except BackendError:
                    pass
            time.sleep(0.002)
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
        console_w, machine.console_w = machine.console_w, None
        try:
            fds = tuple(s.fileno() for s in listeners)
            extra = () if console_w is None else (console_w,)
            popen = proc.spawn(
                [sys.executable, "-m", "mvm.backends.firecracker.relay", str(rd),
                 str(machine.pid), str(machine.pid_start) if machine.pid_start else "-",
                 *map(str, fds), str(console_w) if console_w is not None else "-"],
                cwd=Path("/"), pass_fds=fds + extra, error=BackendError,
                what="starting the relay",
            )  # fmt: skip
            return popen.pid
        finally:
            for s in listeners:
                s.close()
            if console_w is not None:  # the relay has its own copy now
                os.close(console_w)

    def _check_kvm(self, verdict: KvmVerdict) -> None:
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
    """Whether ``pid`` is the Firecracker of ``run_dir``: a process given ``--api-sock``
    whose cwd is the run directory (a jailed one's cwd is its jail root, seen as "/":
    then its ``--id`` and the jail directory decide)."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # any file name: a release's binary is "firecracker-v1.12.1-x86_64"; Firecracker is
    # the process that was given an API socket (every launch passes --api-sock)
    if b"--api-sock" not in cmd or not pid_alive(pid, None):
        return False
    if cwd == str(run_dir):
        return True
    named = any(a == b"--id" and b == run_dir.name.encode() for a, b in itertools.pairwise(cmd))
    return jailed and cwd == "/" and named and (run_dir / BASE).is_dir()
