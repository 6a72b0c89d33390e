"""Credentials: systemd's convention (``io.systemd.credential:NAME=VALUE``)
without systemd in the guest.  This module parses, reads and merges them;
how they travel is the backend's business (QEMU: fw_cfg or SMBIOS files,
see :mod:`mvm.backends.qemu.guestdata`).

Where they come from, highest precedence first (a name given twice in one
source is an error; across sources the higher one wins, as for every
setting): ``--credential NAME=VALUE`` / ``--credential NAME@FILE`` (or
:class:`Credential` objects from Python), ``[credentials]`` in mvm.toml, and
every file in ``$CREDENTIALS_DIRECTORY`` when mvmctl itself runs under
systemd ``LoadCredential=``.

The guest's ``/init`` writes every credential to
``/run/credentials/@system/NAME`` (tmpfs, read-only, files 0400 owned by the
entrypoint's uid) and exports ``CREDENTIALS_DIRECTORY``.

Limits are systemd's: names of 1-255 bytes, each value ≤ 1 MiB, all values
together ≤ 1 MiB.  Error messages name credentials and files, never values.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mvm.backends.spec import GuestCredential
from mvm.config.loader import CRED_RE
from mvm.errors import CredentialError
from mvm.log import get_logger

log = get_logger(__name__)

MAX_VALUE = 1 << 20
MAX_TOTAL = 1 << 20
NAME_HELP = "use 1-255 characters A-Z a-z 0-9 _ . - @ (not '.' or '..')"


@dataclass(frozen=True)
class Credential:
    """One credential: a name and its exact bytes (left out of ``repr``)."""

    name: str
    value: bytes = field(repr=False)
    source: str = "api"  # where it came from, for messages: never the value

    def __post_init__(self) -> None:
        check_name(self.name, self.source)
        if not isinstance(self.value, bytes):
            raise CredentialError(f"credential {self.name}: value must be bytes")
        if len(self.value) > MAX_VALUE:
            raise CredentialError(
                f"credential {self.name} ({self.source}): {len(self.value)} bytes is over the "
                f"1 MiB limit per credential"
            )

    def for_guest(self) -> GuestCredential:
        return GuestCredential(self.name, self.value)


def valid_name(name: str) -> bool:
    return bool(CRED_RE.fullmatch(name)) and name not in (".", "..")


def check_name(name: str, where: str) -> str:
    if not valid_name(name):
        raise CredentialError(f"invalid credential name {name!r} ({where}): {NAME_HELP}")
    return name


def read_file(name: str, path: Path, source: str) -> Credential:
    """Read ``path`` as the value of credential ``name`` (at most 1 MiB read)."""
    check_name(name, source)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CredentialError(
            f"credential {name}: cannot read {path}: {exc.strerror or exc}"
        ) from exc
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise CredentialError(f"credential {name}: cannot read {path}: is a directory")
    with os.fdopen(fd, "rb") as f:
        if stat.S_ISREG(st.st_mode) and st.st_size > MAX_VALUE:
            raise CredentialError(
                f"credential {name}: {path} is {st.st_size} bytes, over the 1 MiB limit"
            )
        try:
            data = f.read(MAX_VALUE + 1)
        except OSError as exc:
            raise CredentialError(
                f"credential {name}: cannot read {path}: {exc.strerror or exc}"
            ) from exc
    if len(data) > MAX_VALUE:
        raise CredentialError(f"credential {name}: {path} is over the 1 MiB limit")
    return Credential(name, data, source)


def parse_credential(spec: str, index: int = 1) -> Credential:
    """Parse one ``--credential``: ``NAME=VALUE`` or ``NAME@FILE``.

    ``NAME=VALUE`` wins when the part before the first ``=`` is a valid name
    (names may contain ``@``); otherwise ``NAME@FILE`` splits at the first
    ``@``.  The argument is never echoed in errors: it may hold the value.
    Prefer ``NAME@FILE``: a value on mvmctl's own command line is visible in
    ``ps`` while mvmctl runs.
    """
    where = f"--credential #{index}"
    eq = spec.find("=")
    if eq > 0 and valid_name(spec[:eq]):
        return Credential(spec[:eq], os.fsencode(spec[eq + 1 :]), where)
    at = spec.find("@")
    if at > 0 and valid_name(spec[:at]) and spec[at + 1 :]:
        name = spec[:at]
        return read_file(name, Path(spec[at + 1 :]).expanduser(), f"{where} ({name})")
    if eq < 0 and at < 0:
        raise CredentialError(f"{where}: expected NAME=VALUE or NAME@FILE (argument not shown)")
    raise CredentialError(f"{where}: invalid credential name: {NAME_HELP} (argument not shown)")


def from_directory(directory: Path, source: str = "$CREDENTIALS_DIRECTORY") -> list[Credential]:
    """Every regular file in ``directory`` as a credential of the same name."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise CredentialError(f"{source} {directory}: {exc.strerror or exc}") from exc
    out = []
    for e in entries:
        if e.is_dir():
            continue
        if not valid_name(e.name):
            raise CredentialError(f"{source}: file {e.name!r} is not a valid credential name: "
                                  f"{NAME_HELP}")  # fmt: skip
        out.append(read_file(e.name, Path(e.path), source))
    return out


def host_credentials() -> list[Credential]:
    """Credentials systemd gave mvmctl itself (``LoadCredential=``), to forward."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return []
    return from_directory(Path(directory))


def resolve(*groups: Sequence[Credential]) -> list[Credential]:
    """Merge sources given highest-precedence first; check duplicates and limits."""
    chosen: dict[str, Credential] = {}
    for group in groups:
        seen: set[str] = set()
        for c in group:
            if c.name in seen:
                raise CredentialError(f"credential {c.name} is given twice ({c.source})")
            seen.add(c.name)
            if c.name in chosen:
                log.info("credential %s from %s overrides %s", c.name, chosen[c.name].source,
                         c.source)  # fmt: skip
                continue
            chosen[c.name] = c
    creds = list(chosen.values())
    check_limits(creds)
    return creds


def check_limits(creds: Sequence[Credential]) -> None:
    total = sum(len(c.value) for c in creds)
    if total > MAX_TOTAL:
        raise CredentialError(
            f"credentials total {total} bytes, over the 1 MiB limit for all credentials together"
        )
