"""The guest-data drive: credentials and network files for hypervisors without fw_cfg.

Firecracker has neither fw_cfg nor SMBIOS, so what QEMU hands over there
travels on one small read-only raw virtio-blk drive, attached as the *last*
drive and named on the kernel command line (``mvm.guestdata=vdX``).  Its
content is one uncompressed newc cpio archive (the same writer as the
initramfs, :mod:`mvm.image.cpio`), zero-padded to a multiple of 512 bytes and
at least :data:`MIN_SIZE`:

* ``meta``: ``version=1`` (not secret);
* ``credentials/NAME``: one regular 0400 file per credential (no directory
  entries: the archive holds regular files only);
* ``network``: the guest network files archive (what QEMU puts on fw_cfg
  ``opt/mvm/network``), absent when the VM has no network configuration.

The guest (``guest/credentials-unpack.sh``: ``mvm_guestdata_unpack``) reads at
most :data:`MAX_SIZE` bytes of it into a private tmpfs directory, refuses
anything that is not a plain relative regular file, hands it to the same
consumers as fw_cfg, and wipes its copy.  Bytes are reproducible: fixed
mtimes, inode numbers in entry order, owner root, names sorted, so two writes
of the same input give the same file.  Any backend may use it (the QEMU
backend does when ``MachineSpec.guest_data == "drive"``, to test the guest
side under TCG); it knows nothing about a hypervisor.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from mvm.backends.spec import GuestCredential
from mvm.errors import CredentialError
from mvm.image import cpio

VERSION = 1
BLOCK = 512
MIN_SIZE = 4096
# what the guest reads at most: credentials are ≤ 1 MiB together (mvm.secrets), the
# network archive ≤ 64 KiB; headers and padding fit easily in the rest
MAX_SIZE = 4 << 20
CMDLINE_KEY = "mvm.guestdata"  # mvm.guestdata=vdX on the kernel command line
META = "meta"
CREDENTIALS = "credentials"
NETWORK = "network"


def _check_name(name: str) -> None:
    raw = name.encode()
    if not raw or len(raw) > 255 or name in (".", "..") or "/" in name or "\0" in name:
        # names are validated where credentials are read (mvm.secrets); this is the
        # last guard before a name becomes a path in the guest
        raise CredentialError(f"credential name {name!r} cannot travel on the guest-data drive")


def image(credentials: Sequence[GuestCredential], network: bytes | None) -> bytes:
    """The drive's bytes (pure, reproducible: same input, same bytes)."""
    names = [c.name for c in credentials]
    for n in names:
        _check_name(n)
    if len(set(names)) != len(names):
        raise CredentialError("duplicate credential name for the guest-data drive")
    entries = [cpio.file(META, f"version={VERSION}\n".encode(), 0o444)]
    # regular files only, no directory entries: the guest refuses anything else
    for c in sorted(credentials, key=lambda c: c.name.encode()):
        entries.append(cpio.file(f"{CREDENTIALS}/{c.name}", c.value, 0o400))
    if network:
        entries.append(cpio.file(NETWORK, network, 0o444))
    buf = io.BytesIO()
    cpio.write(buf, entries)
    data = buf.getvalue()
    size = max(MIN_SIZE, -(-len(data) // BLOCK) * BLOCK)
    if size > MAX_SIZE:
        raise CredentialError(
            f"guest data of {len(data)} bytes is over the guest-data drive's "
            f"{MAX_SIZE >> 20} MiB limit"
        )
    return data + b"\0" * (size - len(data))


def write(path: Path, credentials: Sequence[GuestCredential], network: bytes | None) -> None:
    """Write the drive to ``path`` (0600, atomically: temp file + rename)."""
    from mvm.state.atomic import atomic_file

    data = image(credentials, network)
    try:
        with atomic_file(path, 0o600) as f:
            f.write(data)
    except OSError as exc:
        raise CredentialError(f"writing the guest-data drive: {exc.strerror or exc}") from exc


def cmdline(index: int) -> str:
    """``mvm.guestdata=vdX`` for the drive at position ``index`` (0 = vda)."""
    if not 0 <= index < 26:
        raise CredentialError(f"the guest-data drive cannot be drive {index + 1}")
    return f"{CMDLINE_KEY}=vd{chr(ord('a') + index)}"
