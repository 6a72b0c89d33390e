"""Run-time settings for one VM as the caller gives them (the library
counterpart of the CLI flags).  ``None`` means "not given": the resolver
(:mod:`mvm.runtime.resolve`) then takes mvm.toml's or the template's value,
or the default, and remembers which it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from mvm.backends.spec import PortForward, Proto
from mvm.errors import ConfigError

if TYPE_CHECKING:
    from mvm.drives import DriveFile, VolumeSpec
    from mvm.secrets.credentials import Credential

PORT_RE = re.compile(r"(?:(\d{1,3}(?:\.\d{1,3}){3}):)?(?:(\d{1,5}):)?(\d{1,5})(?:/(tcp|udp))?")


@dataclass
class RunConfig:
    """Everything about one start that is not baked into the image.

    Drives and credentials are usable from Python without the CLI::

        RunConfig(config_files=[DriveFile("app.json", json.dumps(cfg))],
                  secret_files=[DriveFile("app.env", f"API_KEY={key}\\n")],
                  credentials=[Credential("DB_PASS", b"...")])

    ``volumes`` takes ``-v`` strings (``HOST_DIR:/guest/path[:SIZE]``) or
    :class:`~mvm.drives.VolumeSpec`.  ``credentials`` win over mvm.toml's
    ``[credentials]`` (or ``project_credentials``, already read), which win
    over the files in ``$CREDENTIALS_DIRECTORY`` when
    ``forward_host_credentials``.  ``ports`` add to mvm.toml's.  Values never
    appear in ``repr``, the VM record or errors.
    """

    name: str | None = None
    cpus: int | None = None
    memory_mib: int | None = None
    attached: bool = False
    ports: list[str] = field(default_factory=list)
    network: bool | None = None
    volumes: list[str | VolumeSpec] = field(default_factory=list)
    config_files: list[DriveFile] = field(default_factory=list)
    secret_files: list[DriveFile] = field(default_factory=list)
    credentials: list[Credential] = field(default_factory=list)
    project_credentials: list[Credential] | None = None
    forward_host_credentials: bool = True
    hypervisor: str | None = None
    # egress (docs/network.md): preset none|dev|agent|open (`network=True` is open),
    # HOST[:PORT] rules, CIDRs, NAME:IP mappings, --secret bindings, extra upstream trust
    network_preset: str | None = None
    network_allow: list[str] = field(default_factory=list)
    network_allow_cidr: list[str] = field(default_factory=list)
    add_hosts: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list, repr=False)
    secret_mode: str | None = None
    add_ca: str | None = None
    machine: str | None = None  # "microvm" (default) | "q35"
    jailer: bool | None = None  # Firecracker's jailer (None: mvm.toml's [firecracker] jailer)


def parse_port(spec: str) -> PortForward:
    """``[ADDR:]HOST:GUEST[/udp]`` or ``PORT`` → PortForward (host side on 127.0.0.1
    unless an address is given)."""
    m = PORT_RE.fullmatch(spec) if isinstance(spec, str) else None
    if not m:
        raise ConfigError(f"invalid port {spec!r}: use [ADDR:]HOST:GUEST[/udp], e.g. 8080:80")
    addr, host_s, guest_s, proto = m.groups()
    guest = int(guest_s)
    host = int(host_s) if host_s else guest
    for p in (host, guest):
        if not 1 <= p <= 65535:
            raise ConfigError(f"invalid port {spec!r}: ports are 1-65535")
    return PortForward(host, guest, cast(Proto, proto or "tcp"), addr or "127.0.0.1")
