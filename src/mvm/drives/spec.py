"""What a drive is, as users give it: ``-v HOST_DIR:/guest/path[:SIZE]`` and
:class:`DriveFile` from Python; the guest-path contract and size rules."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mvm.errors import DriveError

CONFIG_PATH = "/mnt/config"
SECRETS_PATH = "/mnt/secrets"
MiB = 1 << 20
CONFIG_MAX = 256 * MiB  # default capacity of the config drive (give a SIZE for more)
SECRETS_MAX = 16 * MiB  # default capacity of the secrets drive
DATA_MIN = 8 * MiB  # a journal needs room
DRIVE_MIN = 1 * MiB
SIZE_MAX = 1 << 40
MAX_DATA_VOLUMES = 8  # vdd..vdk; keeps mvm.drives= well inside the kernel command line
GUEST_PATH_MAX = 128
FILE_MODES = {"config": 0o444, "secrets": 0o400}
DIR_MODES = {"config": 0o555, "secrets": 0o500}

VolumeKind = Literal["config", "secrets", "data"]
_SIZE_RE = re.compile(r"(\d+)([KMGT]?)(?:i?B)?", re.IGNORECASE)  # fullmatch only
_GUEST_RE = re.compile(r"(/[A-Za-z0-9._@+-]+)+")  # fullmatch only: "$" lets a newline through
# nothing may be mounted over these: the guest's own system would disappear under it
_RESERVED = ("/proc", "/sys", "/dev", "/run", "/etc", "/bin", "/sbin", "/usr", "/lib",
             "/lib64", "/init", "/lost+found")  # fmt: skip


@dataclass(frozen=True)
class DriveFile:
    """One file to put on the config or secrets drive, from Python.

    Content-agnostic (JSON, TOML, env files, certificates…).  ``name`` is a
    path relative to the drive (``"app.json"``, ``"tls/key.pem"``); ``mode``
    defaults to 0444 on the config drive and 0400 on the secrets drive.  The
    content is left out of ``repr`` so logging a run config never prints it.
    """

    name: str
    content: str | bytes = field(repr=False)
    mode: int | None = None

    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content


@dataclass(frozen=True)
class VolumeSpec:
    """A parsed ``-v HOST_DIR:/guest/path[:SIZE]``; ``host`` is None for an empty
    data volume (a template's ``--data-disk``)."""

    host: Path | None
    guest: str
    size: int | None = None  # bytes

    @property
    def kind(self) -> VolumeKind:
        if self.guest == CONFIG_PATH:
            return "config"
        if self.guest == SECRETS_PATH:
            return "secrets"
        return "data"

    def __str__(self) -> str:
        host = "<empty>" if self.host is None else str(self.host)
        return f"{host}:{self.guest}" + (f":{_human(self.size)}" if self.size else "")


def parse_size(text: str) -> int:
    """``512K``, ``64M``, ``1G``, ``2GiB``… (binary units; bare digits are bytes)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise DriveError(f"malformed size {text!r}: use a number with K, M, G or T, e.g. 256M")
    n = int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]
    if n <= 0 or n > SIZE_MAX:
        raise DriveError(f"size {text!r} out of range (1 byte to 1T)")
    return n


def _human(n: int) -> str:
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n / MiB:.1f}M" if n >= MiB else f"{n}B"


def check_guest_path(guest: str, what: str = "guest path") -> str:
    """Validate a mount point: absolute, plain characters, not a system directory."""
    if not _GUEST_RE.fullmatch(guest) or len(guest) > GUEST_PATH_MAX:
        raise DriveError(
            f"invalid {what} {guest!r}: use an absolute path of A-Z a-z 0-9 . _ @ + - "
            f"(at most {GUEST_PATH_MAX} characters)"
        )
    parts = guest.split("/")
    if "." in parts or ".." in parts:
        raise DriveError(f"invalid {what} {guest!r}: no '.' or '..' components")
    if any(guest == r or guest.startswith(r + "/") for r in _RESERVED):
        raise DriveError(f"{what} {guest!r} would hide a system directory; choose another")
    return guest


def parse_volume(spec: str) -> VolumeSpec:
    """Parse and check ``HOST_DIR:/guest/path[:SIZE]`` (the host directory must exist).

    ``/mnt/config`` and ``/mnt/secrets`` take an optional SIZE (their capacity);
    any other guest path is a data volume and needs one.
    """
    parts = spec.split(":")
    size_text = None
    if len(parts) >= 3 and not parts[-1].startswith("/"):
        size_text, guest, host = parts[-1], parts[-2], ":".join(parts[:-2])
    elif len(parts) >= 2:
        guest, host = parts[-1], ":".join(parts[:-1])
    else:
        raise DriveError(f"invalid --volume {spec!r}: use HOST_DIR:/guest/path[:SIZE]")
    if not host or not guest.startswith("/"):
        raise DriveError(f"invalid --volume {spec!r}: use HOST_DIR:/guest/path[:SIZE]")
    guest = check_guest_path(guest.rstrip("/") or "/")
    size = parse_size(size_text) if size_text is not None else None
    vol = VolumeSpec(Path(host).expanduser().absolute(), guest, size)
    if vol.kind == "data":
        if size is None:
            raise DriveError(
                f"--volume {spec!r}: {guest} is not {CONFIG_PATH} or {SECRETS_PATH}; "
                "a data volume needs a size, e.g. HOST_DIR:/data:1G"
            )
        if size < DATA_MIN:
            raise DriveError(f"--volume {spec!r}: a data volume needs at least {_human(DATA_MIN)}")
    elif size is not None and size < DRIVE_MIN:
        raise DriveError(f"--volume {spec!r}: the {vol.kind} drive needs at least 1M")
    assert vol.host is not None
    _check_host_dir(vol.host)
    return vol


def _check_host_dir(host: Path) -> None:
    if not host.exists():
        raise DriveError(f"volume source {host}: no such directory")
    if not host.is_dir():
        raise DriveError(f"volume source {host}: is a file, not a directory")
    if not os.access(host, os.R_OK | os.X_OK):
        raise DriveError(f"volume source {host}: permission denied")


def _guest(kind: str) -> str:
    return CONFIG_PATH if kind == "config" else SECRETS_PATH
