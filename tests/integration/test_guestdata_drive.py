"""The guest-data drive (Firecracker's transport for credentials and network
files) in a real guest, booted under QEMU with ``MVM_GUEST_DATA=drive``: the
same /init code a Firecracker guest runs, with fw_cfg left out.

One image (built once for the module) and one attached run with config and
secrets drives, three credentials (text, binary, a name too long for fw_cfg)
and the egress proxy's network files; the guest prints modes, owners and
sha256 sums, never a value.  ``--show-command`` shows the drive on QEMU's
command line instead of fw_cfg entries.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import mvmctl, write_project
from tests.integration.drives_support import (
    BINARY,
    LONG_NAME,
    SECRET,
    creds_of,
    env_for,
    parse,
    sha,
)

pytestmark = pytest.mark.integration

CHECK = r"""#!/bin/sh
echo BEGIN-CHECK
echo "id $(id -u)"
for c in "$CREDENTIALS_DIRECTORY"/* "$CREDENTIALS_DIRECTORY"/.[!.]*; do
    [ -f "$c" ] || continue
    echo "cred $(stat -c '%a %u %s' "$c") $(sha256sum < "$c" | cut -d' ' -f1) ${c##*/}"
done
echo "creddir $CREDENTIALS_DIRECTORY"
find /mnt/config /mnt/secrets -type f | sort | while read -r f; do echo "sum $(sha256sum "$f")"; done
[ -e /run/mvm/guestdata ] && echo "unpacked present" || echo "unpacked absent"
[ -e /sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials ] && echo "fwcfg yes" || echo "fwcfg no"
for kv in $(cat /proc/cmdline); do case "$kv" in mvm.guestdata=*) echo "cmdline $kv" ;; esac; done
dev=$(for kv in $(cat /proc/cmdline); do case "$kv" in mvm.guestdata=*) echo "${kv#*=}" ;; esac; done)
head -c 1 "/dev/$dev" >/dev/null 2>&1 && echo "drive readable" || echo "drive unreadable"
grep -q use-vc /etc/resolv.conf && echo "net resolv" || echo "net none"
echo "net proxy=${HTTP_PROXY:+set}"
echo END-CHECK
"""
PROJECT = f"""name = "gdd"
[entrypoint]
command = ["/usr/local/bin/check"]
[files."/usr/local/bin/check"]
content = '''{CHECK}'''
mode = "0755"
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("guestdata")
    home = root / "home"
    project = write_project(root / "proj", PROJECT)
    for d in ("config", "secrets"):
        (root / d).mkdir()
    (root / "config" / "app.json").write_text('{"a": 1}\n')
    (root / "secrets" / "key").write_bytes(BINARY)
    (root / "bin.cred").write_bytes(BINARY)
    res = mvmctl("build", str(project), env=env_for(home), timeout=600)
    assert res.returncode == 0, res.stderr
    return root, project, home


def args(root: Path, project: Path) -> list[str]:
    return [
        str(project), "-v", f"{root / 'config'}:/mnt/config", "-v", f"{root / 'secrets'}:/mnt/secrets",
        "--credential", f"TOKEN={SECRET}", "--credential", f"BIN@{root / 'bin.cred'}",
        "--credential", f"{LONG_NAME}={SECRET}-long", "--credential", f".hidden={SECRET}-dot", "--network-allow", "example.test",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(setup: tuple[Path, Path, Path]) -> subprocess.CompletedProcess[str]:
    root, project, home = setup
    env = env_for(home, MVM_GUEST_DATA="drive")
    return mvmctl("run", "--attached", *args(root, project), env=env, timeout=600)


def test_credentials_from_the_drive(run: subprocess.CompletedProcess[str]) -> None:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    g = parse(run.stdout)
    uid = g["id"][0]
    creds = creds_of(g)
    expected = {"TOKEN": SECRET.encode(), "BIN": BINARY, LONG_NAME: (SECRET + "-long").encode(),
                ".hidden": (SECRET + "-dot").encode()}  # fmt: skip
    assert set(creds) == set(expected)
    for name, value in expected.items():
        assert creds[name] == ("400", uid, len(value), sha(value)), name
    assert g["creddir"] == ["/run/credentials/@system"]
    assert SECRET not in run.stdout + run.stderr


def test_drives_network_and_nothing_left(run: subprocess.CompletedProcess[str],
                                         setup: tuple[Path, Path, Path]) -> None:  # fmt: skip
    g = parse(run.stdout)
    sums = {line.split()[1]: line.split()[0] for line in g["sum"]}
    assert sums == {"/mnt/config/app.json": sha('{"a": 1}\n'), "/mnt/secrets/key": sha(BINARY)}
    assert g["unpacked"] == ["absent"]  # the private copy is wiped after import
    assert g["fwcfg"] == ["no"]  # nothing came over fw_cfg
    assert g["cmdline"] == ["mvm.guestdata=vdd"]  # last drive: rootfs, config, secrets, it
    assert g["drive"] == ["unreadable"]  # the entrypoint's uid cannot read the raw drive
    assert g["net"] == ["resolv", "proxy=set"]  # the proxy's files came off the drive


def test_show_command_has_the_drive_not_fw_cfg(setup: tuple[Path, Path, Path]) -> None:
    root, project, home = setup
    res = mvmctl("run", "--show-command", *args(root, project),
                 env=env_for(home, MVM_GUEST_DATA="drive"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "-fw_cfg" not in res.stdout and "-smbios" not in res.stdout
    assert "guestdata.img" in res.stdout and "mvm.guestdata=vdd" in res.stdout
    assert SECRET not in res.stdout
    plain = mvmctl("run", "--show-command", *args(root, project), env=env_for(home))
    assert "-fw_cfg" in plain.stdout and "guestdata.img" not in plain.stdout
    assert "mvm.guestdata=" not in plain.stdout
