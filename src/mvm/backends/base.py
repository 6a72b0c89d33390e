"""The backend interface every hypervisor implements, plus its capabilities.

Only QEMU exists today; Firecracker and Cloud Hypervisor will implement the
same ABC (their transport for the agent channel is hybrid vsock instead of
virtio-serial, which is why the channel is named, not assumed).
"""

from __future__ import annotations

import abc
import subprocess
from dataclasses import dataclass

from mvm.backends.qemu.argv import MachineConfig
from mvm.errors import BackendError


@dataclass(frozen=True)
class Capabilities:
    smbios: bool  # SMBIOS type 11 OEM strings
    fw_cfg: bool
    snapshots: bool
    agent_transport: str  # "virtio-serial" | "vsock"


class VmBackend(abc.ABC):
    name: str
    capabilities: Capabilities

    @abc.abstractmethod
    def argv(self, cfg: MachineConfig) -> list[str]:
        """The hypervisor command line for ``cfg`` (pure)."""

    @abc.abstractmethod
    def version(self) -> str:
        """Hypervisor version string; raises HypervisorMissing if absent."""

    @abc.abstractmethod
    def spawn(self, cfg: MachineConfig, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        """Start the hypervisor for ``cfg`` in its own session; do not wait for it."""


def get_backend(name: str) -> VmBackend:
    """Factory: the backend called ``name``."""
    if name == "qemu":
        from mvm.backends.qemu.machine import QemuBackend

        return QemuBackend()
    raise BackendError(f'hypervisor {name!r} is not available on this host yet; use "qemu"')
