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

DiskRole = Literal["rootfs", "config", "secrets", "data", "placeholder", "guestdata"]
GuestDataTransport = Literal["fw_cfg", "drive"]
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
class GuestForward:
    """A TCP port on ``NetworkSpec.guest_ip`` that the guest can connect to; each
    connection is handed to a new ``command`` on the host (stdin/stdout = the
    connection).  This is how the egress proxy is reached: nothing else leaves."""

    port: int
    command: tuple[str, ...]


@dataclass(frozen=True)
class NetworkSpec:
    """The guest's network: unrestricted egress on or off, forwards from the host,
    and the proxy's guest-visible endpoints with the files the guest's network
    setup reads (resolv.conf, hosts, proxy environment, CA; not secret)."""

    egress: bool = False
    forwards: tuple[PortForward, ...] = ()
    device: bool = (
        False  # a NIC even without egress or forwards (a snapshot's restores may forward)
    )
    guest_ip: str = ""
    guest_forwards: tuple[GuestForward, ...] = ()
    guest_config: bytes = field(default=b"", repr=False)

    @property
    def enabled(self) -> bool:
        return self.device or self.egress or bool(self.forwards) or bool(self.guest_forwards)


@dataclass(frozen=True)
class MachineSpec:
    """Everything a backend needs to start one VM."""

    name: str
    run_dir: Path
    kernel: Path
    initramfs: Path | None  # None: the kernel mounts disks[0] itself and runs ``init``
    disks: tuple[Disk, ...]  # disks[0] is the rootfs
    vcpus: int = 1
    memory_mib: int = 256
    network: NetworkSpec = field(default_factory=NetworkSpec)
    credentials: tuple[GuestCredential, ...] = ()
    cmdline: tuple[str, ...] = ()  # mvm's guest protocol (mvm.drives=…, mvm.trace=1); neutral
    channels: tuple[str, ...] = CHANNELS
    # host files holding secrets (drive images) to remove once the hypervisor has opened them
    scrub: tuple[Path, ...] = ()
    # the kernel has RANDOMIZE_BASE (takes `nokaslr`); a kernel without it would hand
    # an unknown `nokaslr` to init as an argument
    kaslr: bool = True
    init: str = "/init"  # PID 1 in the rootfs (direct boot: the kernel runs it)
    # guest RAM in this (existing, sparse) file, shared: the VM can be snapshotted with its
    # memory left in the file for clones to map (docs/snapshots.md)
    ram_file: Path | None = None
    machine: str = "microvm"  # "microvm" | "q35" (a backend may refuse what it lacks)
    # how credentials and network files reach a backend that has a choice: its own
    # transport (QEMU: fw_cfg/SMBIOS) or the guest-data drive (backends/guestdrive.py,
    # what Firecracker always uses; QEMU uses it to test that guest path under TCG)
    guest_data: GuestDataTransport = "fw_cfg"

    @property
    def rootfs(self) -> Disk:
        return self.disks[0]


@dataclass(frozen=True)
class HostChannels:
    """Where the host ends of the guest channels are (see :mod:`mvm.channels`)."""

    status: Path  # a file the guest appends ``exit N`` to
    control: Path  # a stream the host writes requests to (``poweroff``, root operations)
    agent: Path  # a Unix socket the host connects to
    console: Path  # a Unix socket: the serial console
    console_log: Path
    control_reply: Path | None = None  # where the guest answers control requests (a FIFO)
    # "virtio-serial": agent is a socket and control a FIFO (QEMU); "vsock": agent and
    # control are Firecracker's hybrid vsock Unix socket, reached with ``CONNECT <port>``
    transport: Literal["virtio-serial", "vsock"] = "virtio-serial"


@dataclass(frozen=True)
class RestoreSource:
    """A saved VM state to start from instead of booting: ``state`` is the backend's
    state stream; ``ram`` the guest RAM file that clones map copy-on-write (None when
    the RAM is inside the stream)."""

    state: Path
    ram: Path | None = None
    ram_object: bool = False  # the saved VM's RAM was a memory object (stream holds it)
