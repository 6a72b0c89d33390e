"""Credential parsing, limits, precedence and the files handed to QEMU."""

from __future__ import annotations

import base64
import io
import stat
from pathlib import Path

import pytest

from mvm.backends.qemu import guestdata as gd
from mvm.backends.qemu.argv import QemuOptions, build_argv
from mvm.backends.spec import Disk, MachineSpec
from mvm.errors import CredentialError
from mvm.runtime.config import RunConfig
from mvm.secrets import credentials as cr
from mvm.secrets.credentials import Credential, parse_credential

SECRET = "s3cr3t-value"


def test_value_and_file_forms(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"\0bin\n")
    assert parse_credential(f"DB_PASS={SECRET}").value == SECRET.encode()
    assert parse_credential("EMPTY=").value == b""
    assert parse_credential("A=b=c").value == b"b=c"
    assert parse_credential(f"a@b={SECRET}").name == "a@b"  # names may contain @
    c = parse_credential(f"KEY@{tmp_path / 'f'}")
    assert (c.name, c.value) == ("KEY", b"\0bin\n")
    (tmp_path / "x=y").write_text("v")
    assert parse_credential(f"K@{tmp_path / 'x=y'}").value == b"v"  # '=' in a path


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SECRET, "expected NAME=VALUE or NAME@FILE"),
        (f"BAD NAME={SECRET}", "invalid credential name"),
        (f"a/b={SECRET}", "invalid credential name"),
        (f".={SECRET}", "invalid credential name"),
        ("x" * 256 + f"={SECRET}", "invalid credential name"),
        (f"={SECRET}", "invalid credential name"),
    ],
)
def test_errors_never_echo_the_argument(spec: str, message: str) -> None:
    with pytest.raises(CredentialError, match=message) as exc:
        parse_credential(spec, 3)
    assert SECRET not in str(exc.value) and "#3" in str(exc.value)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=r"cannot read .*missing"):
        parse_credential(f"K@{tmp_path / 'missing'}")
    with pytest.raises(CredentialError, match="is a directory"):
        parse_credential(f"K@{tmp_path}")
    (tmp_path / "big").write_bytes(b"x" * (cr.MAX_VALUE + 1))
    with pytest.raises(CredentialError, match="1 MiB"):
        parse_credential(f"K@{tmp_path / 'big'}")


def test_limits_and_repr() -> None:
    assert SECRET not in repr(Credential("A", SECRET.encode()))
    assert SECRET not in repr(RunConfig(credentials=[Credential("A", SECRET.encode())]))
    with pytest.raises(CredentialError, match="1 MiB limit per credential"):
        Credential("A", b"x" * (cr.MAX_VALUE + 1))
    half = b"x" * (cr.MAX_TOTAL // 2 + 1)
    with pytest.raises(CredentialError, match="all credentials together"):
        cr.resolve([Credential("A", half), Credential("B", half)])


def test_precedence_and_duplicates() -> None:
    cli = [Credential("A", b"cli", "cli")]
    toml = [Credential("A", b"toml", "toml"), Credential("B", b"toml", "toml")]
    host = [Credential("B", b"host", "host"), Credential("C", b"host", "host")]
    got = {c.name: c.value for c in cr.resolve(cli, toml, host)}
    assert got == {"A": b"cli", "B": b"toml", "C": b"host"}
    with pytest.raises(CredentialError, match="A is given twice"):
        cr.resolve([Credential("A", b"1"), Credential("A", b"2")])


def test_host_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "TOKEN").write_bytes(b"t")
    (tmp_path / "sub").mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert [(c.name, c.value) for c in cr.host_credentials()] == [("TOKEN", b"t")]
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert cr.host_credentials() == []


def write(creds: list[Credential], dest: Path, smbios: bool = False) -> gd.GuestData:
    """Plan and write the files QEMU reads (``dest`` is the run dir's creds/)."""
    assert dest.name in ("creds", "c")
    data = gd.plan([c.for_guest() for c in creds], dest.parent, smbios=smbios)
    gd.write(data)
    return data


def spec(run_dir: Path, rootfs: str = "/r") -> MachineSpec:
    return MachineSpec(name="v", run_dir=run_dir, kernel=Path("/k"), initramfs=Path("/i"),
                       disks=(Disk(Path(rootfs), role="rootfs"),))  # fmt: skip


def _unpack_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    buf = io.BytesIO(data)
    while True:
        head = buf.read(110)
        fields = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = buf.read(namesize)[:-1].decode()
        buf.read(-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, buf.read(size))
        buf.read(-size % 4)


def test_fw_cfg_files_private_and_bundled(tmp_path: Path) -> None:
    long = "n" * 40
    creds = [
        Credential("SHORT", SECRET.encode()),
        Credential(long, b"\0long"),  # name too long for fw_cfg
        Credential("BIG", b"b" * (100 << 10)),  # too big to read fast as one file
        Credential("EMPTY", b""),
    ]
    d = write(creds, tmp_path / "creds")
    assert stat.S_IMODE((tmp_path / "creds").stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f, _ in d.files)
    names = [e.name for e in d.fw_cfg]
    assert names[0] == "opt/io.systemd.credentials/SHORT"
    assert names[1:] == ["opt/mvm/credentials/00", "opt/mvm/credentials/01"]
    assert all(len(n) <= gd.FWCFG_NAME_MAX for n in names)
    assert d.fw_cfg[0].file.read_bytes() == SECRET.encode()
    bundle = _unpack_newc(b"".join(e.file.read_bytes() for e in d.fw_cfg[1:]))
    assert {k: v for k, (_m, v) in bundle.items()} == {
        long: b"\0long",
        "BIG": b"b" * (100 << 10),
        "EMPTY": b"",
    }
    argv = build_argv(spec(tmp_path), QemuOptions(), d)
    assert SECRET not in " ".join(argv) and "mvm.fwcfg=1" in " ".join(argv)


def test_fw_cfg_slot_budget(tmp_path: Path) -> None:
    many = [Credential(f"C{i}", b"v" * 1000) for i in range(40)]
    many.append(Credential("HUGE", b"h" * (900 << 10)))
    d = write(many, tmp_path / "creds")
    assert len(d.fw_cfg) <= gd.FWCFG_SLOTS
    singles = [e for e in d.fw_cfg if e.name.startswith(gd.FWCFG_PREFIX)]
    pieces = [e for e in d.fw_cfg if e.name.startswith(gd.BUNDLE_FWCFG)]
    bundle = _unpack_newc(b"".join(e.file.read_bytes() for e in pieces))
    assert len(singles) + len(bundle) == 41  # every credential goes somewhere, once


def test_smbios_path_for_machines_that_have_it(tmp_path: Path) -> None:
    d = write([Credential("A", b"\0\n")], tmp_path / "creds", smbios=True)
    assert d.fw_cfg == () and len(d.smbios) == 1
    text = d.smbios[0].read_bytes()
    assert text == b"io.systemd.credential.binary:A=" + base64.b64encode(b"\0\n")
    argv = build_argv(spec(tmp_path), QemuOptions(), d)
    assert argv[argv.index("-smbios") + 1] == f"type=11,path={d.smbios[0]}"


def test_qemu_option_paths_escape_commas(tmp_path: Path) -> None:
    argv = build_argv(spec(tmp_path, "/a,b/r"), QemuOptions())
    assert argv[argv.index("-drive") + 1].startswith("id=vd0,file=/a,,b/r,")
