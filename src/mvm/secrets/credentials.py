"""Credentials: systemd's convention (``io.systemd.credential:NAME=VALUE``)
without systemd in the guest.

Where they come from, highest precedence first (a name given twice in one
source is an error; across sources the higher one wins, as for every
setting): ``--credential NAME=VALUE`` / ``--credential NAME@FILE`` (or
:class:`Credential` objects from Python), ``[credentials]`` in mvm.toml, and
every file in ``$CREDENTIALS_DIRECTORY`` when mvmctl itself runs under
systemd ``LoadCredential=``.

How they travel: each value is written to a 0600 file in the VM's 0700 run
directory and handed to QEMU by path, never by value:

* machines with SMBIOS (q35/pc): ``-smbios type=11,path=FILE`` whose content
  is ``io.systemd.credential.binary:NAME=BASE64`` (binary-safe);
* ``-M microvm`` (no SMBIOS, what mvm runs): fw_cfg
  ``opt/io.systemd.credentials/NAME`` (what a systemd guest reads natively).

fw_cfg has three limits that shape the rest (all measured, QEMU 7.2 and
Linux 6.1): names are at most 55 bytes (28 left for NAME); QEMU has 32 file
slots, 9 its own on microvm (23 extra files work, the 24th aborts QEMU); and
the guest driver re-reads a file from its start for every 4 KiB page it
returns, so reading costs grow with the square of a file's size (1 MiB in
one file: 5 s under TCG; 64 KiB: ≈20 ms).  Hence: credentials whose name fits
and whose value is at most :data:`CHUNK` bytes get one entry each; all others
travel in one newc cpio archive split into :data:`CHUNK`-sized pieces
``opt/mvm/credentials/00``, ``/01``… that the guest concatenates into busybox
``cpio -i`` (any name length, exact bytes), all within :data:`FWCFG_SLOTS`.

The guest's ``/init`` writes every credential to
``/run/credentials/@system/NAME`` (tmpfs, read-only, files 0400 owned by the
entrypoint's uid) and exports ``CREDENTIALS_DIRECTORY``.

Limits are systemd's: names of 1-255 bytes, each value ≤ 1 MiB, all values
together ≤ 1 MiB.  Error messages name credentials and files, never values.
"""

from __future__ import annotations

import base64
import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mvm import paths
from mvm.backends.qemu.argv import FwCfg
from mvm.config.loader import CRED_RE
from mvm.errors import CredentialError
from mvm.image import cpio
from mvm.log import get_logger

log = get_logger(__name__)

MAX_VALUE = 1 << 20
MAX_TOTAL = 1 << 20
FWCFG_NAME_MAX = 55
FWCFG_PREFIX = "opt/io.systemd.credentials/"
BUNDLE_FWCFG = "opt/mvm/credentials/"  # + 00, 01…: pieces of one cpio archive
FWCFG_SLOTS = 22  # of the 23 QEMU leaves free on microvm: one spare for other features
CHUNK = 64 << 10  # fw_cfg file size that reads fast in the guest (cost ∝ size²)
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


def valid_name(name: str) -> bool:
    return bool(CRED_RE.match(name)) and name not in (".", "..")


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


@dataclass(frozen=True)
class Delivery:
    """What to hand QEMU, and the host files holding values (remove after start)."""

    fw_cfg: tuple[FwCfg, ...] = ()
    smbios: tuple[Path, ...] = ()
    files: tuple[Path, ...] = ()


def _private_file(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _bundle(creds: Sequence[Credential]) -> bytes:
    buf = io.BytesIO()
    cpio.write(buf, [cpio.file(c.name, c.value, 0o400) for c in creds])
    return buf.getvalue()


def _fits_single(c: Credential) -> bool:
    return len((FWCFG_PREFIX + c.name).encode()) <= FWCFG_NAME_MAX and 0 < len(c.value) <= CHUNK


def fwcfg_split(creds: Sequence[Credential]) -> tuple[list[Credential], bytes]:
    """Split into (one fw_cfg entry each, the cpio bundle for the rest) so that
    entries plus bundle pieces fit in :data:`FWCFG_SLOTS`.

    Single entries need a name that fits and a non-empty value of at most
    :data:`CHUNK` bytes; when slots run short the last singles move into the
    bundle (the bundle needs fewer slots per byte: only full pieces).
    """
    single = [c for c in creds if _fits_single(c)]
    while True:
        chosen = {id(c) for c in single}
        rest = [c for c in creds if id(c) not in chosen]
        bundle = _bundle(rest) if rest else b""
        if len(single) + -(-len(bundle) // CHUNK) <= FWCFG_SLOTS:
            return single, bundle
        single.pop()  # ≤ 1 MiB in all: at most 17 pieces, so this ends with singles left


def write(creds: Sequence[Credential], dest: Path, *, smbios: bool = False) -> Delivery:
    """Write ``creds`` as 0600 files in ``dest`` (made 0700) for QEMU to read."""
    if not creds:
        return Delivery()
    paths.ensure_private_dir(dest)
    files: list[Path] = []
    try:
        if smbios:
            for i, c in enumerate(creds):
                line = f"io.systemd.credential.binary:{c.name}="
                data = line.encode() + base64.b64encode(c.value)
                files.append(_private_file(dest / f"smbios-{i}", data))
            return Delivery(smbios=tuple(files), files=tuple(files))
        single, bundle = fwcfg_split(creds)
        entries = []
        for i, c in enumerate(single):
            files.append(_private_file(dest / f"cred-{i}", c.value))
            entries.append(FwCfg(FWCFG_PREFIX + c.name, files[-1]))
        for i in range(0, len(bundle), CHUNK):
            n = i // CHUNK
            files.append(_private_file(dest / f"bundle-{n:02d}", bundle[i : i + CHUNK]))
            entries.append(FwCfg(f"{BUNDLE_FWCFG}{n:02d}", files[-1]))
        return Delivery(fw_cfg=tuple(entries), files=tuple(files))
    except OSError as exc:
        for f in files:
            f.unlink(missing_ok=True)
        raise CredentialError(f"writing credentials for QEMU: {exc.strerror or exc}") from exc
