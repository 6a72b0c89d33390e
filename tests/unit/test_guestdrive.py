"""The guest-data drive's bytes (mvm.backends.guestdrive): reproducible, padded,
and parsed back by a real cpio reader (busybox, as the guest does)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from mvm.backends import guestdrive
from mvm.backends.spec import GuestCredential
from mvm.errors import CredentialError

CREDS = (
    GuestCredential("token", b"s3cret\n"),
    GuestCredential("bin", bytes(range(256))),
    GuestCredential("n" * 200, b"long name"),
)
BUSYBOX = shutil.which("busybox")


def test_reproducible_and_order_independent() -> None:
    a = guestdrive.image(CREDS, b"net-archive")
    b = guestdrive.image(tuple(reversed(CREDS)), b"net-archive")
    assert a == b
    assert len(a) % guestdrive.BLOCK == 0 and len(a) >= guestdrive.MIN_SIZE
    assert guestdrive.image((), None) != guestdrive.image((), b"x")


def test_minimum_size_and_meta_only() -> None:
    data = guestdrive.image((), None)
    assert len(data) == guestdrive.MIN_SIZE
    assert b"version=1\n" in data and b"credentials/" not in data and b"network" not in data


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x\0y", "n" * 256])
def test_bad_names_refused(name: str) -> None:
    with pytest.raises(CredentialError):
        guestdrive.image((GuestCredential(name, b"v"),), None)


def test_duplicate_and_oversize_refused() -> None:
    with pytest.raises(CredentialError, match="duplicate"):
        guestdrive.image((GuestCredential("a", b"1"), GuestCredential("a", b"2")), None)
    with pytest.raises(CredentialError, match="limit"):
        guestdrive.image((GuestCredential("big", b"x" * guestdrive.MAX_SIZE),), None)


def test_cmdline() -> None:
    assert guestdrive.cmdline(0) == "mvm.guestdata=vda"
    assert guestdrive.cmdline(3) == "mvm.guestdata=vdd"
    with pytest.raises(CredentialError):
        guestdrive.cmdline(26)


def test_write_is_private_and_atomic(tmp_path: Path) -> None:
    dest = tmp_path / "run" / "guestdata.img"
    guestdrive.write(dest, CREDS, None)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert dest.read_bytes() == guestdrive.image(CREDS, None)
    assert [p.name for p in dest.parent.iterdir()] == ["guestdata.img"]  # no temp left
    with pytest.raises(CredentialError):
        guestdrive.write(dest, (GuestCredential("../x", b""),), None)
    assert dest.read_bytes() == guestdrive.image(CREDS, None)  # untouched


@pytest.mark.skipif(BUSYBOX is None, reason="busybox not installed")
def test_parses_back_with_busybox_cpio(tmp_path: Path) -> None:
    img = tmp_path / "drive"
    img.write_bytes(guestdrive.image(CREDS, b"NETWORK-BYTES"))
    out = tmp_path / "out"
    out.mkdir()
    listing = subprocess.run([str(BUSYBOX), "cpio", "-t", "-v", "-F", str(img)],
                             capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    lines = listing.stdout.splitlines()
    assert all(line.startswith("-") for line in lines), lines  # regular files only
    subprocess.run([str(BUSYBOX), "cpio", "-i", "-d", "-F", str(img)], cwd=out,
                   capture_output=True, timeout=30, check=True)  # fmt: skip
    for c in CREDS:
        p = out / "credentials" / c.name
        assert p.read_bytes() == c.value
        assert stat.S_IMODE(os.lstat(p).st_mode) == 0o400
    assert (out / "network").read_bytes() == b"NETWORK-BYTES"
    assert (out / "meta").read_text() == "version=1\n"
