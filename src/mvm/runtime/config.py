"""Run-time settings for one VM (the library counterpart of the CLI flags).

Resolution order for each setting is CLI/API > mvm.toml > default; the
record keeps the resolved values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mvm.backends.qemu.argv import PortForward
from mvm.config.loader import PORT_RE
from mvm.errors import ConfigError

if TYPE_CHECKING:
    from mvm.drives import DriveFile, VolumeSpec
    from mvm.secrets.credentials import Credential


@dataclass
class RunConfig:
    """Everything about one start that is not baked into the image.

    Drives and credentials are usable from Python without the CLI::

        RunConfig(config_files=[DriveFile("app.json", json.dumps(cfg))],
                  secret_files=[DriveFile("app.env", f"API_KEY={key}\\n")],
                  credentials=[Credential("DB_PASS", b"...")])

    ``volumes`` takes ``-v`` strings (``HOST_DIR:/guest/path[:SIZE]``) or
    :class:`~mvm.drives.VolumeSpec`.  ``credentials`` win over
    ``project_credentials`` (mvm.toml's ``[credentials]``), which win over
    the files in ``$CREDENTIALS_DIRECTORY`` when ``forward_host_credentials``.
    Values never appear in ``repr``, the VM record or errors.
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
    project_credentials: list[Credential] = field(default_factory=list)
    forward_host_credentials: bool = True


def parse_port(spec: str) -> PortForward:
    """``HOST:GUEST[/proto]`` or ``PORT`` → PortForward (host bound to 127.0.0.1)."""
    m = PORT_RE.match(spec)
    if not m:
        raise ConfigError(f"invalid port {spec!r}: use HOST:GUEST, e.g. 8080:80")
    guest = int(m.group(2))
    host = int(m.group(1)) if m.group(1) else guest
    for p in (host, guest):
        if not 1 <= p <= 65535:
            raise ConfigError(f"invalid port {spec!r}: ports are 1-65535")
    return PortForward(host, guest, m.group(3) or "tcp")
