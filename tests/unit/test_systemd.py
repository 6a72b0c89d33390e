"""systemd guests and q35 as data: mvm.toml keys, rendered units, the QEMU
command line and where credentials go (the real boots are in
tests/integration/test_systemd.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvm.backends.qemu import guestdata as gd
from mvm.backends.qemu.argv import QemuOptions, build_argv, kernel_cmdline
from mvm.backends.spec import Disk, GuestCredential, MachineSpec
from mvm.config.guestpaths import reserved
from mvm.config.loader import parse_spec
from mvm.errors import ConfigError, CredentialError
from mvm.image.builder import packages
from mvm.image.render import systemd_units

TOML = Path("/p/mvm.toml")


def spec_of(**extra: object) -> object:
    raw: dict[str, object] = {"name": "s", "init": "systemd",
                              "entrypoint": {"command": ["/bin/app"]}}  # fmt: skip
    raw.update(extra)
    return parse_spec(raw, TOML)


def test_init_machine_and_load_credentials_parse() -> None:
    spec = parse_spec({"name": "s", "init": "systemd", "machine": "q35",
                       "entrypoint": {"command": ["/bin/app"]},
                       "services": {"api": {"command": ["/bin/api"], "restart": "always",
                                            "load_credentials": ["api-key:API_KEY", "DB"]}}},
                      TOML)  # fmt: skip
    assert spec.init == "systemd" and spec.machine == "q35"
    assert spec.services[0].load_credentials == (("api-key", "API_KEY"), ("DB", "DB"))
    assert "systemd" in packages(spec)
    default = parse_spec({"name": "b", "entrypoint": {"command": ["/bin/app"]}}, TOML)
    assert default.init == "busybox" and default.machine is None
    assert "systemd" not in packages(default)


@pytest.mark.parametrize(("extra", "needle"), [
    ({"init": "runit"}, "init: 'runit' is not supported"),
    ({"machine": "pc"}, "machine: 'pc' is not supported"),
    ({"services": {"a": {"command": ["/x"], "load_credentials": ["a b"]}}}, "load_credentials"),
    ({"services": {"a": {"command": ["/x"], "load_credentials": ["x:A", "x:B"]}}}, "twice"),
    ({"init": "busybox", "services": {"a": {"command": ["/x"], "load_credentials": ["A"]}}},
     'needs init = "systemd"'),
])  # fmt: skip
def test_bad_keys_are_one_line_errors(extra: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        spec_of(**extra)


def test_units_same_uid_no_new_privs_restart_and_credentials() -> None:
    spec = spec_of(services={
        "api": {"command": ["/bin/api"], "restart": "never", "load_credentials": ["k:API_KEY"]},
        "log": {"command": ["/bin/log"], "restart": "always"},
    })  # fmt: skip
    files, links = systemd_units(spec)  # type: ignore[arg-type]
    by_path = {f.path: f.content.decode() for f in files}
    ep = by_path["/etc/systemd/system/mvm-entrypoint.service"]
    assert "User=1000\n" in ep and "NoNewPrivileges=yes" in ep
    assert "ExecStopPost=+/etc/mvm/systemd/finish.sh entrypoint" in ep and "Restart=no" in ep
    api = by_path["/etc/systemd/system/mvm-svc-api.service"]
    assert "LoadCredential=k:API_KEY" in api and "Restart=no" in api
    assert "Restart=always" in by_path["/etc/systemd/system/mvm-svc-log.service"]
    # the generator gives every system credential to the entrypoint and services without
    # their own load_credentials
    assert by_path["/etc/mvm/systemd/all-credentials"].split() == [
        "mvm-entrypoint.service", "mvm-svc-log.service"]  # fmt: skip
    links_d = dict(links)
    assert links_d["/etc/systemd/system/getty.target"] == "/dev/null"
    assert "/etc/systemd/system/multi-user.target.wants/mvm-entrypoint.service" in links_d
    for path in (*by_path, *links_d):  # a project cannot overwrite any of them
        assert reserved(path), path
    assert reserved("/etc/systemd/system/app.service") is None  # but may add its own units


def spec_for(machine: str, creds: tuple[GuestCredential, ...] = ()) -> MachineSpec:
    return MachineSpec(name="vm", run_dir=Path("/run/vm"), kernel=Path("/k"), initramfs=None,
                       disks=(Disk(Path("/r.ext4"), "rootfs"),), machine=machine,
                       credentials=creds)  # fmt: skip


def test_q35_uses_pci_devices_and_keeps_pci_on() -> None:
    argv = build_argv(spec_for("q35"), QemuOptions())
    assert argv[argv.index("-M") + 1] == "q35" and argv[argv.index("-bios") + 1] == "qboot.rom"
    assert "virtio-blk-pci,drive=vd0" in argv and "virtio-serial-pci,max_ports=4" in argv
    line = kernel_cmdline(spec_for("q35"), QemuOptions())
    assert " pci=off" not in line and "mvm.pci=1" in line
    micro = kernel_cmdline(spec_for("microvm"), QemuOptions())
    assert " pci=off" in micro and "mvm.pci=1" not in micro


def test_smbios_strings_from_files_with_fwcfg_for_oversize() -> None:
    big = GuestCredential("BIG", b"x" * 50_000)  # with A, over the SMBIOS budget
    mid = GuestCredential("MID", b"m" * 5000)  # one 6.7 KB string: fine in SMBIOS
    data = gd.plan([GuestCredential("A", b"s3cret"), mid, big], Path("/run/vm"), smbios=True)
    contents = dict(data.files)
    assert len(data.smbios) == 2
    assert contents[data.smbios[0]] == b"io.systemd.credential.binary:A=czNjcmV0"
    assert [f.name for f in data.fw_cfg] == ["opt/io.systemd.credentials/BIG"]
    argv = build_argv(spec_for("q35"), QemuOptions(), data)
    assert "s3cret" not in " ".join(argv) and "czNjcmV0" not in " ".join(argv)


def test_q35_busybox_bundle_beyond_its_fwcfg_slots_is_a_clear_error() -> None:
    # 16 x 60 KB: none fits the SMBIOS budget (80 KB in base64), 16 fw_cfg files needed
    big = [GuestCredential(f"B{i}", b"b" * 60_000) for i in range(16)]
    with pytest.raises(CredentialError, match="q35 leaves 14 free"):
        gd.plan(big, Path("/r"), smbios=True)
    assert len(gd.plan(big, Path("/r"), smbios=False).fw_cfg) == 16  # microvm: room enough
