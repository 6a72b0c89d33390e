"""The backend seam: a :class:`Backend` turns a :class:`MachineSpec` into a
running :class:`Machine`; everything else in mvm talks to these two ABCs.

A backend supplies only what differs between hypervisors (its command line
or API calls, how guest data and host channels travel, how it is asked to
pause or quit); the lifecycle every backend shares — spawn, wait until it
answers, scrub the secret files it has read, stop gracefully then hard,
kill idempotently, wait — is written once here, in :class:`Machine`.

A Machine is a context manager: leaving the block with an exception kills
the hypervisor and removes what the launch created, so a failed start never
leaves a process or a secret file behind.  A machine started by one mvmctl
is found again by another (``Backend.attach``) through its run directory.
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from mvm import channels
from mvm.backends.spec import HostChannels, MachineSpec, PortForward, RestoreSource
from mvm.errors import BackendError
from mvm.state.procs import pid_alive, proc_start_time

RunStatus = Literal["running", "paused", "io-error", "shutdown", "gone", "unknown"]


@dataclass(frozen=True)
class Capabilities:
    smbios: bool  # credentials as SMBIOS type 11 OEM strings
    fw_cfg: bool
    snapshots: bool  # the runtime may snapshot, restore and fork its VMs
    agent_transport: str  # "virtio-serial" | "vsock"


class LaunchError(BackendError):
    """The hypervisor did not start or did not answer.

    Carries the exact command line (secret-free by construction: values
    travel in files) and the console/hypervisor log tail, which the CLI shows.
    """

    def __init__(self, message: str, *, command: list[str], log_tail: str | None = None):
        super().__init__(message, log_tail=log_tail)
        self.command = command


class Machine(abc.ABC):
    """One running hypervisor process, its run directory and its control session."""

    backend: Backend

    def __init__(self, backend: Backend, run_dir: Path, pid: int, pid_start: int | None):
        self.backend = backend
        self.run_dir = run_dir
        self.pid = pid
        self.pid_start = pid_start
        self._scrub: list[Path] = []

    # -- what every backend provides ---------------------------------------------------------

    @abc.abstractmethod
    def status(self, timeout: float = 1.0) -> RunStatus:
        """The hypervisor's view of the guest; ``gone`` once the process exited."""

    @abc.abstractmethod
    def pause(self) -> None: ...

    @abc.abstractmethod
    def resume(self) -> None: ...

    @abc.abstractmethod
    def _answering(self) -> bool:
        """Whether the control session is up (the hypervisor has read its inputs)."""

    @abc.abstractmethod
    def _quit(self) -> None:
        """Ask the hypervisor itself to exit now (no guest cooperation)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the control session (the process keeps running)."""

    def launch_error(self, message: str) -> LaunchError:
        return LaunchError(message, command=[])

    def snapshot(self, state: Path, *, memory_mib: int, shared_ram: bool) -> None:
        """Pause the guest and save its full state into the new file ``state``
        (the guest stays paused: resume it or stop it).  ``shared_ram``: the RAM is
        left in its file (the VM was launched with ``MachineSpec.ram_file``)."""
        raise BackendError(f"{self.backend.name} cannot save snapshots")

    def wait_restored(self, memory_mib: int) -> None:
        """After a launch with ``restore``: wait until the state is loaded (guest paused)."""
        raise BackendError(f"{self.backend.name} cannot restore snapshots")

    def add_forward(self, forward: PortForward) -> None:
        """Forward a host port to the running guest (``mvmctl forward``)."""
        raise BackendError(f"the {self.backend.name} backend cannot add port forwards")

    def remove_forward(self, forward: PortForward) -> None:
        raise BackendError(f"the {self.backend.name} backend cannot remove port forwards")

    # -- shared lifecycle ----------------------------------------------------------------------

    def alive(self) -> bool:
        return pid_alive(self.pid, self.pid_start)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until the hypervisor answers; then remove the secret files it has read."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise self.launch_error("the hypervisor exited during start")
            if self._answering():
                self.scrub()
                return
            time.sleep(0.02)
        raise self.launch_error(f"the hypervisor did not answer within {timeout:.0f}s")

    def scrub(self) -> None:
        """Remove credential files and drive images the hypervisor holds open by now."""
        from mvm.drives.images import rmtree_force

        for p in self._scrub:
            with contextlib.suppress(OSError):
                if p.is_dir():
                    rmtree_force(p)
                else:
                    p.unlink(missing_ok=True)

    def stop(self, grace: float = 8.0) -> None:
        """Stop gracefully (the guest stops its services and syncs), then hard.

        The guest gives its processes 5 s after SIGTERM, so ``grace`` is longer.
        A paused guest cannot power itself off: it is quit at once.
        """
        if not self.alive():
            return
        status = self.status()
        asked = status in ("running", "unknown") and channels.request_poweroff(
            self.backend.channels(self.run_dir)
        )
        if asked and (self.wait(grace) is not None or not self.alive()):
            return
        with contextlib.suppress(BackendError):
            self._quit()
        if self.wait(2.0) is not None or not self.alive():
            return
        self.kill()

    def kill(self) -> None:
        """SIGKILL the hypervisor and make sure it is gone (idempotent)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.alive():
                os.kill(self.pid, signal.SIGKILL)
        self.wait(2.0)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the process to end; its exit status if we are its parent, else 0."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.alive():
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
        return 0

    def __enter__(self) -> Machine:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if et is not None:
                self.kill()
                self.scrub()
        finally:
            self.close()


class Backend(abc.ABC):
    """A hypervisor: pure command construction plus launching and finding machines."""

    name: str
    capabilities: Capabilities

    @abc.abstractmethod
    def version(self) -> str:
        """Hypervisor version; raises ``HypervisorMissing`` if it is not installed."""

    @abc.abstractmethod
    def command(self, spec: MachineSpec) -> list[str]:
        """What would be run for ``spec`` (pure; ``--show-command`` prints it)."""

    def describe(self, spec: MachineSpec) -> str:
        """:meth:`command` as text for a person (``--show-command``)."""
        from mvm.proc import printable

        return printable(self.command(spec))

    @abc.abstractmethod
    def launch(self, spec: MachineSpec, restore: RestoreSource | None = None) -> Machine:
        """Write the hypervisor's inputs into ``spec.run_dir`` and start it (not waiting).

        With ``restore`` the guest is not booted: its saved state is loaded (``spec``
        must describe the same devices it was saved with) and stays paused until
        :meth:`Machine.resume` (after :meth:`Machine.wait_restored`)."""

    @abc.abstractmethod
    def channels(self, run_dir: Path) -> HostChannels: ...

    @abc.abstractmethod
    def ephemeral(self, run_dir: Path) -> tuple[Path, ...]:
        """Secret-holding files this backend writes for a launch (swept if left behind)."""

    @abc.abstractmethod
    def owned_pid(self, run_dir: Path) -> int | None:
        """The hypervisor process running for ``run_dir``, found without a VM record."""

    @abc.abstractmethod
    def attach(self, run_dir: Path, pid: int, pid_start: int | None) -> Machine:
        """A Machine for a hypervisor another mvmctl started."""

    def doctor(self, kernel: Path | None) -> dict[str, str]:
        """What ``mvmctl doctor`` reports about this hypervisor on this host."""
        from mvm.errors import MvmError

        try:
            return {"version": self.version()}
        except MvmError as exc:
            return {"version": f"missing: {exc.message}"}

    def find(self, run_dir: Path) -> Machine | None:
        pid = self.owned_pid(run_dir)
        return None if pid is None else self.attach(run_dir, pid, proc_start_time(pid))


BACKENDS: tuple[str, ...] = ("qemu", "firecracker", "cloud-hypervisor")


def _qemu() -> Backend:
    from mvm.backends.qemu.machine import QemuBackend

    return QemuBackend()


def _firecracker() -> Backend:
    from mvm.backends.firecracker.machine import FirecrackerBackend

    return FirecrackerBackend()


# name -> factory; tests register a fake backend here (the one seam for runtime unit tests)
FACTORIES: dict[str, Callable[[], Backend]] = {"qemu": _qemu, "firecracker": _firecracker}


def get_backend(name: str) -> Backend:
    """Factory: the backend called ``name``; one that is not available here is refused."""
    factory = FACTORIES.get(name)
    if factory is None:
        raise BackendError(f'hypervisor {name!r} is not available on this host yet; use "qemu"')
    return factory()
