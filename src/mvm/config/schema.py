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
class NetworkTable:
    """mvm.toml ``[network]``: egress policy for running the image (docs/network.md)."""

    preset: str | None = None
    allow: tuple[str, ...] = ()
    allow_cidr: tuple[str, ...] = ()
    add_host: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecretSpec:
    """mvm.toml ``[secrets.KEY]``: a secret bound to hosts; the value is read at start
    from ``from_env`` (default: KEY) or ``file``."""

    key: str
    hosts: tuple[str, ...]
    header: str | None = None
    from_env: str | None = None
    file: Path | None = None

    def table(self) -> dict[str, object]:
        t: dict[str, object] = {"hosts": list(self.hosts)}
        if self.header:
            t["header"] = self.header
        if self.file is not None:
            t["file"] = str(self.file)
        elif self.from_env:
            t["from_env"] = self.from_env
        return t


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
    network_table: NetworkTable | None = None
    secrets: tuple[SecretSpec, ...] = ()

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
