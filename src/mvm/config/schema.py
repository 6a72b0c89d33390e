"""Typed, validated form of a project's ``mvm.toml`` (the counterpart of the
seeds' ``mkGuest`` arguments).  Everything downstream (build, runtime) takes a
``GuestSpec`` and never reads TOML itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

EntrypointKind = Literal["shell", "command", "services"]
RestartPolicy = Literal["always", "on-failure", "never"]
RESTART_POLICIES: tuple[str, ...] = ("always", "on-failure", "never")
HYPERVISORS: tuple[str, ...] = ("qemu", "firecracker", "cloud-hypervisor")
GuestInit = Literal["busybox", "systemd"]
INITS: tuple[str, ...] = ("busybox", "systemd")
# machine types: microvm (default, fastest; credentials over fw_cfg) or q35 (PCI, SMBIOS:
# credentials as type 11 OEM strings, as in the seeds)
MACHINES: tuple[str, ...] = ("microvm", "q35")
KernelProvider = Literal["debian", "host", "path"]

DEFAULT_AGENT_UID = 990
DEFAULT_APP_UID = 1000
APP_USER = "app"  # the entrypoint's user name when it is not root


def home_for(uid: int) -> str:
    """The entrypoint's home directory for ``uid``."""
    return "/root" if uid == 0 else f"/home/{APP_USER}"


@dataclass(frozen=True)
class Service:
    name: str
    command: tuple[str, ...]
    restart: RestartPolicy = "on-failure"
    # systemd guests: LoadCredential= pairs (ID in $CREDENTIALS_DIRECTORY, system credential)
    load_credentials: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Entrypoint:
    kind: EntrypointKind
    shell: str | None = None
    command: tuple[str, ...] = ()
    services: tuple[Service, ...] = ()


@dataclass(frozen=True)
class Uids:
    agent: int
    entrypoint: int

    @property
    def rootless(self) -> bool:
        return self.entrypoint != 0


@dataclass(frozen=True)
class FileSpec:
    """A file baked into the rootfs at build time."""

    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class CopySpec:
    """Project files copied into the image (``src`` is absolute on the host)."""

    src: Path
    dest: str


@dataclass(frozen=True)
class KernelSpec:
    provider: KernelProvider = "debian"
    path: Path | None = None
    modules: Path | None = None


@dataclass(frozen=True)
class CredentialSpec:
    """A credential declared in mvm.toml: read from ``file`` at start time."""

    name: str
    file: Path


@dataclass(frozen=True)
class GuestSpec:
    name: str
    entrypoint: Entrypoint
    vcpus: int = 1
    memory_mib: int = 256
    hypervisor: str = "qemu"
    dev: bool = False
    services: tuple[Service, ...] = ()
    uids: Uids = field(default_factory=lambda: Uids(DEFAULT_AGENT_UID, DEFAULT_APP_UID))
    files: tuple[FileSpec, ...] = ()
    packages: tuple[str, ...] = ()
    copy: tuple[CopySpec, ...] = ()
    kernel: KernelSpec = field(default_factory=KernelSpec)
    credentials: tuple[CredentialSpec, ...] = ()
    ports: tuple[str, ...] = ()
    network: bool = False
    init: GuestInit = "busybox"
    machine: str | None = None  # a runtime default (None: the backend's, microvm)

    @property
    def accessible(self) -> bool:
        return self.dev

    @property
    def sealed(self) -> bool:
        return not self.dev

    @property
    def home(self) -> str:
        """The entrypoint's home (a private tmpfs at boot when sealed)."""
        return home_for(self.uids.entrypoint)


@dataclass(frozen=True)
class Project:
    """A directory holding an ``mvm.toml``."""

    root: Path
    manifest: Path
    spec: GuestSpec
    profile: str | None = None
