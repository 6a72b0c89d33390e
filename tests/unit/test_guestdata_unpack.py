"""The guest side of the guest-data drive, run on the host: the real shell
functions (guest/credentials-unpack.sh, guest/network.sh) under the same static
busybox the images carry, against drives written by mvm.backends.guestdrive and
against crafted hostile archives (nothing may land outside the unpack
directory, and a refused drive leaves that directory empty)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from mvm.backends import guestdrive
from mvm.backends.spec import GuestCredential
from mvm.guest import read as guest_file
from mvm.image import cpio
from mvm.image.initramfs import BUSYBOX

pytestmark = [
    pytest.mark.skipif(not BUSYBOX.is_file(), reason="busybox-static not installed"),
    pytest.mark.skipif(
        Path("/sys/firmware/qemu_fw_cfg").exists()
        or any(Path("/sys/firmware/dmi/entries").glob("11-*")),
        reason="this host has fw_cfg/SMBIOS credentials of its own",
    ),
]
CREDS = (
    GuestCredential("token", b"s3cret\n"),
    GuestCredential("bin", bytes(range(256)) * 3),
    GuestCredential("n" * 200, b"long name"),
    GuestCredential("empty", b""),
    GuestCredential(".hidden", b"dot"),
    GuestCredential("..dots", b"two dots"),
    GuestCredential("-dash", b"dash"),
)


def sh(tmp: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    lib = tmp / "credentials-unpack.sh"
    lib.write_bytes(guest_file("credentials-unpack.sh"))
    return subprocess.run(
        [str(BUSYBOX), "sh", "-c", f'. "{lib}"\n{script}'],
        env={"PATH": "/nonexistent", "B": str(BUSYBOX), **env},  # busybox applets only
        capture_output=True, text=True, timeout=60, cwd=tmp,
    )  # fmt: skip


def archive(entries: list[cpio.Entry]) -> bytes:
    buf = io.BytesIO()
    cpio.write(buf, entries)
    return buf.getvalue() + b"\0" * 512


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_drive_to_credentials_dir(tmp_path: Path) -> None:
    (tmp_path / "drive").write_bytes(guestdrive.image(CREDS, b"NET"))
    (tmp_path / "gd").mkdir(mode=0o700)
    (tmp_path / "creds").mkdir()
    r = sh(tmp_path, 'mvm_guestdata_unpack drive gd && MVM_GUESTDATA=gd && mvm_have_credentials '
                     '&& mvm_unpack_credentials creds && echo ok')  # fmt: skip
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    assert tree(tmp_path / "gd") == {"meta", "network", "credentials", ".drive", ".drive.list",
                                     *(f"credentials/{c.name}" for c in CREDS)}  # fmt: skip
    assert {p.name for p in (tmp_path / "creds").iterdir()} == {c.name for c in CREDS}
    for c in CREDS:
        p = tmp_path / "creds" / c.name
        assert p.read_bytes() == c.value
        assert stat.S_IMODE(os.lstat(p).st_mode) == 0o400
    assert (tmp_path / "gd" / "network").read_bytes() == b"NET"


def test_only_a_dot_named_credential(tmp_path: Path) -> None:
    (tmp_path / "drive").write_bytes(guestdrive.image((GuestCredential(".only", b"v"),), None))
    (tmp_path / "gd").mkdir()
    (tmp_path / "creds").mkdir()
    r = sh(tmp_path, "mvm_guestdata_unpack drive gd && MVM_GUESTDATA=gd && mvm_have_credentials "
                     "&& mvm_unpack_credentials creds")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "creds" / ".only").read_bytes() == b"v"


def test_no_credentials_on_the_drive(tmp_path: Path) -> None:
    (tmp_path / "drive").write_bytes(guestdrive.image((), b"NET"))
    (tmp_path / "gd").mkdir()
    r = sh(tmp_path, "mvm_guestdata_unpack drive gd && MVM_GUESTDATA=gd && mvm_have_credentials")
    assert r.returncode == 1  # unpacked fine, but nothing to import


@pytest.mark.parametrize(
    ("cmdline", "dev"),
    [("console=ttyS0 mvm.guestdata=vdc quiet", "vdc"), ("mvm.guestdata=vdz", "vdz"),
     ("quiet", ""), ("mvm.guestdata=../sda", ""), ("mvm.guestdata=vd", ""),
     ("mvm.guestdata=vdab", ""), ("mvm.guestdata=sda", "")],
)  # fmt: skip
def test_device_from_cmdline(tmp_path: Path, cmdline: str, dev: str) -> None:
    r = sh(tmp_path, 'mvm_guestdata_dev "$CL"; echo "$?:$_mvm_gd"', CL=cmdline)
    assert r.stdout == (f"0:{dev}\n" if dev else "1:\n")


HOSTILE = {
    "dotdot": [cpio.file("meta", b"version=1\n"), cpio.file("../escaped", b"x")],
    "dotdot-inner": [cpio.file("credentials/../../escaped", b"x")],
    "dotdot-cred": [cpio.file("credentials/..", b"x")],
    "absolute": [cpio.file("/tmp/escaped", b"x")],
    "symlink": [cpio.symlink("credentials/link", "/etc/passwd")],
    "symlink-then-write": [cpio.symlink("credentials", ".."), cpio.file("credentials/x", b"x")],
    "directory": [cpio.directory("credentials")],
    "device": [cpio.Entry("credentials/dev", stat.S_IFCHR | 0o600)],
    "other-name": [cpio.file("etc/passwd", b"x")],
    "nested-cred": [cpio.file("credentials/a/b", b"x")],
    # a newline in a name: two entry-looking lines, unpacked as nested directories
    "newline-top": [cpio.file("meta\n-r--r--r-- 0/0 1 1970-01-01 00:00:00 network", b"x")],
    "newline-cred": [
        cpio.file("credentials/a\n-r-------- 0/0 1 1970-01-01 00:00:00 credentials/b", b"x")
    ],
    "mtime": [],  # built below: a regular file with a non-zero mtime
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_refused(tmp_path: Path, case: str) -> None:
    if case == "mtime":
        buf = io.BytesIO()
        cpio.write(buf, [cpio.file("credentials/a", b"x")], mtime=12345)
        data = buf.getvalue()
    else:
        data = archive(HOSTILE[case])
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "drive").write_bytes(data)
    (work / "gd").mkdir(mode=0o700)
    sh(work, "true")  # writes the library next to the drive
    before = tree(tmp_path)
    r = sh(work, "mvm_guestdata_unpack drive gd")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "refused" in r.stderr and r.stderr.count("\n") == 1
    assert tree(tmp_path) == before  # nothing written anywhere, gd left empty
    assert list((work / "gd").iterdir()) == []


def test_oversize_and_truncated_refused(tmp_path: Path) -> None:
    big = guestdrive.image((GuestCredential("big", b"v" * 6000),), None)
    (tmp_path / "drive").write_bytes(big)
    (tmp_path / "gd").mkdir()
    r = sh(tmp_path, "_mvm_gd_max=4096; mvm_guestdata_unpack drive gd")
    assert r.returncode == 1 and "refused" in r.stderr
    assert list((tmp_path / "gd").iterdir()) == []  # not even the partial credential
    (tmp_path / "drive").write_bytes(big[:3000])
    r = sh(tmp_path, "mvm_guestdata_unpack drive gd")
    assert r.returncode == 1 and list((tmp_path / "gd").iterdir()) == []
    (tmp_path / "drive").write_bytes(b"\0" * 4096)  # not an archive at all
    r = sh(tmp_path, "mvm_guestdata_unpack drive gd")
    assert r.returncode == 1 and list((tmp_path / "gd").iterdir()) == []


def test_unreadable_device_refused(tmp_path: Path) -> None:
    (tmp_path / "gd").mkdir()
    r = sh(tmp_path, "mvm_guestdata_unpack /nonexistent/vdz gd")
    assert r.returncode == 1 and "refused" in r.stderr


def test_network_archive_names_checked(tmp_path: Path) -> None:
    """network.sh unpacks the drive's network archive only when mvm_cpio_safe
    accepts its names (the same check, the network's own list)."""
    good = archive([cpio.file("resolv.conf", b"nameserver 10.0.2.3\n"),
                    cpio.file("hosts", b"127.0.0.1 localhost\n")])  # fmt: skip
    bad = archive([cpio.file("resolv.conf", b""), cpio.file("../../etc/shadow", b"x")])
    check = ('_n() { case "$1" in resolv.conf|hosts) return 0 ;; esac; return 1; }\n'
             'mvm_cpio_safe "$ARC" _n && echo safe || echo unsafe')  # fmt: skip
    for name, data, want in (("good", good, "safe"), ("bad", bad, "unsafe")):
        (tmp_path / name).write_bytes(data)
        r = sh(tmp_path, check, ARC=name)
        assert r.stdout == f"{want}\n", r.stderr
    assert b"_mvm_net_name" in guest_file("network.sh")  # network.sh uses this check
    assert b"mvm_cpio_safe" in guest_file("network.sh")


def test_newline_in_a_name_refused(tmp_path: Path) -> None:
    """A name with a newline lists as two lines, the second not an entry line: the
    whole drive is refused (nothing unpacked, nothing imported)."""
    work = tmp_path / "w"
    work.mkdir()
    data = archive([cpio.file("credentials/ok", b"fine"),
                    cpio.file("credentials/a\n-r-------- 0/0 1 1970-01-01 00:00:00 credentials/b",
                              b"x")])  # fmt: skip
    (work / "drive").write_bytes(data)
    (work / "gd").mkdir()
    (work / "creds").mkdir()
    sh(work, "true")
    before = tree(tmp_path)
    r = sh(work, "mvm_guestdata_unpack drive gd && echo unpacked; MVM_GUESTDATA=gd; "
                 "mvm_unpack_credentials creds")  # fmt: skip
    assert "unpacked" not in r.stdout and "refused" in r.stderr
    assert tree(tmp_path) == before


@pytest.mark.skipif(not Path("/bin/dash").exists(), reason="dash not installed")
def test_rootfs_shell_with_gnu_tools_on_path(tmp_path: Path) -> None:
    """In a rootfs $B is empty and an image's packages may put dash and GNU cpio on
    PATH: the check and the unpack still use busybox's cpio (its listing format)."""
    (tmp_path / "drive").write_bytes(guestdrive.image(CREDS, None))
    (tmp_path / "gd").mkdir()
    (tmp_path / "creds").mkdir()
    lib = tmp_path / "credentials-unpack.sh"
    lib.write_bytes(guest_file("credentials-unpack.sh"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "busybox").symlink_to(BUSYBOX)
    script = (f'. "{lib}"; umask 022; mvm_guestdata_unpack drive gd && MVM_GUESTDATA=gd && '
              "mvm_unpack_credentials creds && echo ok")  # fmt: skip
    r = subprocess.run(["/bin/dash", "-c", script], env={"PATH": f"{bindir}:/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert r.stdout == "ok\n", r.stderr
    for c in CREDS:
        assert (tmp_path / "creds" / c.name).read_bytes() == c.value


def test_guest_cap_is_the_hosts_limit() -> None:
    """The guest reads exactly as much as the host may write."""
    assert f"\n_mvm_gd_max={guestdrive.MAX_SIZE}\n".encode() in guest_file("credentials-unpack.sh")
