"""How credentials travel into a QEMU guest: fw_cfg files, or SMBIOS type 11.

Each value is written to a 0600 file in the VM's 0700 run directory and
handed to QEMU by path, never by value (``/proc/PID/cmdline`` is
world-readable):

* machines with SMBIOS (q35/pc): ``-smbios type=11,path=FILE`` whose content
  is ``io.systemd.credential.binary:NAME=BASE64`` (binary-safe);
* ``-M microvm`` (no SMBIOS, what mvm runs by default): fw_cfg
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

:func:`plan` is pure (unit-tested as data); :func:`write` puts the files on
disk.  They are QEMU's business only: nothing outside ``backends/qemu``
knows about fw_cfg.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mvm import paths
from mvm.backends.spec import GuestCredential
from mvm.errors import CredentialError
from mvm.image import cpio

FWCFG_NAME_MAX = 55
FWCFG_PREFIX = "opt/io.systemd.credentials/"
BUNDLE_FWCFG = "opt/mvm/credentials/"  # + 00, 01…: pieces of one cpio archive
FWCFG_SLOTS = 22  # of the 23 QEMU leaves free on microvm: one spare for other features
CHUNK = 64 << 10  # fw_cfg file size that reads fast in the guest (cost ∝ size²)
CREDS_DIR = "creds"
# q35's own fw_cfg files (ACPI, SMBIOS, e820, boot order, option ROMs…) leave fewer slots:
# measured with qboot, a kernel, an initramfs, SMBIOS and virtio-pci devices, 16 extra
# files work and the 17th aborts QEMU; two spare (KVM adds option ROMs)
FWCFG_SLOTS_Q35 = 14
# QEMU 7.2 builds SMBIOS 2.1 tables on q35, at most 65535 bytes in all ("SMBIOS 2.1 table
# length … exceeds 65535"); its own structures take about 1 KiB.  Measured: single strings
# of 6.7 KB arrive intact.  OEM strings beyond this budget go over fw_cfg.
SMBIOS_BUDGET = 60 << 10


@dataclass(frozen=True)
class FwCfg:
    name: str  # e.g. opt/io.systemd.credentials/DB_PASS (≤ 55 bytes)
    file: Path


@dataclass(frozen=True)
class GuestData:
    """What QEMU gets for the credentials, and the files (with contents) to write first."""

    fw_cfg: tuple[FwCfg, ...] = ()
    smbios: tuple[Path, ...] = ()
    files: tuple[tuple[Path, bytes], ...] = field(default=(), repr=False)

    @property
    def directory(self) -> Path | None:
        return self.files[0][0].parent if self.files else None


def _bundle(creds: Sequence[GuestCredential]) -> bytes:
    buf = io.BytesIO()
    cpio.write(buf, [cpio.file(c.name, c.value, 0o400) for c in creds])
    return buf.getvalue()


def _fits_single(c: GuestCredential) -> bool:
    return len((FWCFG_PREFIX + c.name).encode()) <= FWCFG_NAME_MAX and 0 < len(c.value) <= CHUNK


def fwcfg_split(
    creds: Sequence[GuestCredential], slots: int = FWCFG_SLOTS
) -> tuple[list[GuestCredential], bytes]:
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
        if len(single) + -(-len(bundle) // CHUNK) <= slots:
            return single, bundle
        if not single:  # q35's fewer slots: ≤ 1 MiB needs up to 17 pieces
            raise CredentialError(
                f"credentials of {len(bundle)} bytes need {-(-len(bundle) // CHUNK)} fw_cfg "
                f'files; q35 leaves {slots} free (use machine = "microvm" or smaller values)'
            )
        single.pop()


def smbios_string(c: GuestCredential) -> bytes:
    return f"io.systemd.credential.binary:{c.name}=".encode() + base64.b64encode(c.value)


def plan(creds: Sequence[GuestCredential], run_dir: Path, *, smbios: bool) -> GuestData:
    """Where each credential goes (pure: nothing is written).

    With ``smbios`` (q35) credentials are SMBIOS type 11 strings, in order,
    while they fit :data:`SMBIOS_BUDGET`; the rest go over fw_cfg.  The same for
    both guest inits: a systemd guest's initramfs imports them all (bundle
    included) for systemd.
    """
    if not creds:
        return GuestData()
    dest = run_dir / CREDS_DIR
    strings: list[tuple[Path, bytes]] = []
    if smbios:
        rest = []
        used = 0
        for c in creds:
            s = smbios_string(c)
            if used + len(s) + 1 <= SMBIOS_BUDGET:  # + its NUL
                strings.append((dest / f"smbios-{len(strings)}", s))
                used += len(s) + 1
            else:
                rest.append(c)
        creds = rest
        if not creds:
            return GuestData(smbios=tuple(p for p, _ in strings), files=tuple(strings))
    single, bundle = fwcfg_split(creds, FWCFG_SLOTS_Q35 if smbios else FWCFG_SLOTS)
    out: list[tuple[Path, bytes]] = []
    entries: list[FwCfg] = []
    for i, c in enumerate(single):
        out.append((dest / f"cred-{i}", c.value))
        entries.append(FwCfg(FWCFG_PREFIX + c.name, out[-1][0]))
    for i in range(0, len(bundle), CHUNK):
        n = i // CHUNK
        out.append((dest / f"bundle-{n:02d}", bundle[i : i + CHUNK]))
        entries.append(FwCfg(f"{BUNDLE_FWCFG}{n:02d}", out[-1][0]))
    return GuestData(fw_cfg=tuple(entries), smbios=tuple(p for p, _ in strings),
                     files=(*strings, *out))  # fmt: skip


NETWORK_FWCFG = "opt/mvm/network"  # the guest's network files (guest/network.sh); not secret


def with_network(data: GuestData, config: bytes, run_dir: Path) -> GuestData:
    """Add the guest's network files (one cpio archive) in the spare fw_cfg slot."""
    if not config:
        return data
    if len(config) > CHUNK:
        raise CredentialError("the guest's network configuration is too large")
    path = run_dir / CREDS_DIR / "network.cpio"
    return GuestData(fw_cfg=(*data.fw_cfg, FwCfg(NETWORK_FWCFG, path)), smbios=data.smbios,
                     files=(*data.files, (path, config)))  # fmt: skip


def write(data: GuestData) -> None:
    """Write the credential files (0600, in a 0700 directory, never overwriting)."""
    if data.directory is None:
        return
    paths.ensure_private_dir(data.directory)
    written: list[Path] = []
    try:
        for path, content in data.files:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            written.append(path)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
    except OSError as exc:
        for p in written:
            p.unlink(missing_ok=True)
        raise CredentialError(f"writing credentials for QEMU: {exc.strerror or exc}") from exc
