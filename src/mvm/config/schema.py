"""Typed, validated form of a project's ``mvm.toml`` (the counterpart of the
seeds' ``mkGuest`` arguments).  Everything downstream (build, runtime) takes a
``GuestSpec`` and never reads TOML itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mvm.config.imageref import ImageSource

EntrypointKind = Literal["shell", "command", "services"]
RestartPolicy = Literal["always", "on-failure", "never"]
RESTART_POLICIES: tuple[str, ...] = ("always", "on-failure", "never")
HYPERVISORS: tuple[str, ...] = ("qemu", "firecracker", "cloud-hypervisor")
GuestInit = Literal["busybox", "systemd"]
INITS: tuple[str, ...] = ("busybox", "systemd")
# machine types: microvm (default, fastest; credentials over fw_cfg) or q35 (PCI, SMBIOS:
# credentials as type 11 OEM strings, as in the seeds)
MACHINES: tuple[str, ...] = ("microvm", "q35")
KernelProvider = Literal["mvm", "debian", "host", "path"]

DEFAULT_AGENT_UID = 990
DEFAULT_APP_UID = 1000
APP_USER = "app"  # the entrypoint's user name when it is not root


def home_for(uid: int) -> str:
    """The entrypoint's home directory for ``uid``."""
    return "/root" if uid == 0 else f"/home/{APP_USER}"


READY_TIMEOUT_DEFAULT = 60.0
READY_TIMEOUT_MAX = 3600.0


@dataclass(frozen=True)
class Readiness:
    """When a service counts as ready (``ready = { tcp = 8080 }`` or ``{ command =
    [...] }``): the guest agent evaluates it; until ``timeout`` seconds after the
    service started a failing check is "starting", after that "unhealthy"."""

    tcp: int | None = None
    command: tuple[str, ...] = ()
    timeout: float = READY_TIMEOUT_DEFAULT


@dataclass(frozen=True)
class Service:
    name: str
    command: tuple[str, ...]
    restart: RestartPolicy = "on-failure"
    ready: Readiness | None = None
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
    provider: KernelProvider = "mvm"
    path: Path | None = None
    modules: Path | None = None


@dataclass(frozen=True)
class CredentialSpec:
    """A credential declared in mvm.toml: read from ``file`` at start time."""

    name: str
    file: Path


@dataclass(frozen=True)
class VarFileSpec:
    """One file a generator must produce in ``$out``."""

    name: str
    secret: bool = True
    mode: int = 0o400


@dataclass(frozen=True)
class GeneratorSpec:
    """``[vars.generators.NAME]``: a script that writes exactly ``files`` into ``$out``,
    run on the host by ``mvmctl vars generate`` with only ``runtime_inputs`` on PATH."""

    name: str
    files: tuple[VarFileSpec, ...]
    script: str
    runtime_inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class VarCredentialSpec:
    """``[credentials] NAME = { var = "GEN/FILE" }``: delivered from the VM's var store."""

    name: str
    generator: str
    file: str

    @property
    def var(self) -> str:
        return f"{self.generator}/{self.file}"


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
    var_credentials: tuple[VarCredentialSpec, ...] = ()
    generators: tuple[GeneratorSpec, ...] = ()
    ports: tuple[str, ...] = ()
    network: bool = False
    # OCI images (docs/oci.md): where the rootfs comes from, and what the image's
    # config says (filled in by mvm.image.oci at build time; mvm.toml wins)
    image: ImageSource | None = None
    explicit: frozenset[str] = frozenset()  # mvm.toml keys set explicitly: entrypoint, uid, dev
    env: tuple[tuple[str, str], ...] = ()  # the entrypoint's environment
    workdir: str | None = None  # the entrypoint's working directory
    home_dir: str | None = None  # the entrypoint's home when the image's passwd says so
    home_tmpfs: bool = True  # a sealed image's home is a private tmpfs
    exposed_ports: tuple[str, ...] = ()  # the image's ExposedPorts ("80/tcp"), never published
    init: GuestInit = "busybox"
    machine: str | None = None  # a runtime default (None: the backend's, microvm)
    # [firecracker] jailer = true: run Firecracker through its jailer (a runtime default;
    # QEMU ignores it)
    firecracker_jailer: bool | None = None
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
        return self.home_dir or home_for(self.uids.entrypoint)

    @property
    def sealed_home(self) -> str | None:
        """The home hidden by a tmpfs at boot (a project may not write there), or None."""
        return self.home if self.sealed and self.home_tmpfs else None

    @property
    def mvm_root(self) -> str:
        """Where mvm's own tools live: ``/`` for Debian images, ``/.mvm`` for OCI
        images (whose ``/init``, ``/bin/sh`` or ``/bin/busybox`` are the image's)."""
        return "/.mvm" if self.image is not None else "/"

    @property
    def init_path(self) -> str:
        return "/.mvm/init" if self.image is not None else "/init"


@dataclass(frozen=True)
class Project:
    """A directory holding an ``mvm.toml``."""

    root: Path
    manifest: Path
    spec: GuestSpec
    profile: str | None = None
