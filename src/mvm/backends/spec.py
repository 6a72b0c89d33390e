"""The machine description every backend receives: what to boot, not how.

``MachineSpec`` is hypervisor-neutral.  It says which kernel, which disks in
which order, how much CPU and memory, which ports to forward and which
credentials the guest must find; a backend turns it into its own transport
(QEMU: ``-drive``/virtio-mmio order, fw_cfg entries within its slot budget,
SMBIOS on q35; Firecracker would use its API, MMDS and vsock).  Nothing
here knows about QEMU, and nothing in :mod:`mvm.drives`, :mod:`mvm.secrets`
or :mod:`mvm.runtime` needs more than this module to describe a VM.

Credential *values* travel in the spec (in memory only, never in ``repr``);
the backend writes whatever files its hypervisor needs into the private run
directory and removes them once the hypervisor has read them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mvm.errors import ConfigError

DiskRole = Literal["rootfs", "config", "secrets", "data", "placeholder"]
Proto = Literal["tcp", "udp"]
# the guest's ends of the host channels; each backend maps them to its transport
CHANNELS: tuple[str, ...] = ("status", "control", "agent")


@dataclass(frozen=True)
class Disk:
    """One block device; the guest sees them as vda, vdb… in ``MachineSpec.disks`` order."""

    path: Path
    role: DiskRole
    readonly: bool = True
    ephemeral: bool = False  # writes go to a throw-away overlay; the file stays pristine


@dataclass(frozen=True)
class PortForward:
    """``[ADDR:]HOST:GUEST[/udp]``: a host address and port forwarded to a guest port."""

    host: int
    guest: int
    proto: Proto = "tcp"
    address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        for p in (self.host, self.guest):
            if not 1 <= p <= 65535:
                raise ConfigError(f"invalid port {p}: ports are 1-65535")
        try:
            ipaddress.IPv4Address(self.address)
        except ValueError:
            raise ConfigError(
                f"invalid host address {self.address!r}: use an IPv4 address"
            ) from None

    def __str__(self) -> str:
        suffix = "" if self.proto == "tcp" else f"/{self.proto}"
        addr = "" if self.address == "127.0.0.1" else f"{self.address}:"
        return f"{addr}{self.host}:{self.guest}{suffix}"


@dataclass(frozen=True)
class GuestCredential:
    """A credential the guest finds in ``/run/credentials/@system/NAME``."""

    name: str
    value: bytes = field(repr=False)


@dataclass(frozen=True)
class NetworkSpec:
    """The guest's network: egress on or off, and forwards from the host."""

    egress: bool = False
    forwards: tuple[PortForward, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.egress or bool(self.forwards)


@dataclass(frozen=True)
class MachineSpec:
    """Everything a backend needs to start one VM."""

    name: str
    run_dir: Path
    kernel: Path
    initramfs: Path | None
    disks: tuple[Disk, ...]  # disks[0] is the rootfs
    vcpus: int = 1
    memory_mib: int = 256
    network: NetworkSpec = field(default_factory=NetworkSpec)
    credentials: tuple[GuestCredential, ...] = ()
    cmdline: tuple[str, ...] = ()  # mvm's guest protocol (mvm.drives=…, mvm.trace=1); neutral
    channels: tuple[str, ...] = CHANNELS
    # host files holding secrets (drive images) to remove once the hypervisor has opened them
    scrub: tuple[Path, ...] = ()
    machine: str = "microvm"  # "microvm" | "q35" (a backend may refuse what it lacks)

    @property
    def rootfs(self) -> Disk:
        return self.disks[0]


@dataclass(frozen=True)
class HostChannels:
    """Where the host ends of the guest channels are (see :mod:`mvm.channels`)."""

    status: Path  # a file the guest appends ``exit N`` to
    control: Path  # a stream the host writes requests to (``poweroff``)
    agent: Path  # a Unix socket the host connects to
    console: Path  # a Unix socket: the serial console
    console_log: Path
