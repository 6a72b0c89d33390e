"""systemd as the guest's PID 1 (``init = "systemd"``), credentials to systemd,
and q35 with SMBIOS type 11, in real VMs.

One systemd image and one busybox image are built per module; each boot
checks several things.  systemd boots are slow under TCG (≈15-20 s), so
timeouts are generous and the boot count is kept low: an attached run on
microvm, one on q35, one detached VM stopped with ``down``, and one busybox
boot on q35.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from mvm.runtime.lifecycle import STOP_GRACE
from tests.conftest import mvmctl, write_project

pytestmark = pytest.mark.integration

API_KEY = "sk-systemd-Zq8#x$y\\z"
# travel in mvm's fw_cfg bundle (a name over fw_cfg's 55 bytes; a value over 64 KiB):
# a systemd guest's initramfs imports them for systemd
LONG_NAME = "A_CREDENTIAL_NAME_LONGER_THAN_FWCFG_ALLOWS"
BIG = bytes(range(256)) * 400  # 100 KiB, binary
BOOT_TIMEOUT = 420

CHECK = r"""
echo "chk pid1=$(cat /proc/1/comm) uid=$(id -u) nnp=$(grep NoNewPrivs /proc/self/status | tr -d ' \t' | cut -d: -f2)"
echo "chk creddir=$CREDENTIALS_DIRECTORY"
for f in "$CREDENTIALS_DIRECTORY"/*; do
    echo "chk cred ${f##*/} $(wc -c < "$f") $(sha256sum < "$f" | cut -d' ' -f1)"
done
i=0
while [ ! -s /tmp/keeper ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
echo "chk keeper $(cat /tmp/keeper)"
if [ -e "$CREDENTIALS_DIRECTORY/STAY" ]; then echo chk staying; exec sleep 100000; fi
echo chk done
exit 7
"""

KEEPER = r"""
f="$CREDENTIALS_DIRECTORY/api-key"
echo "$(wc -c < "$f") $(sha256sum < "$f" | cut -d' ' -f1) uid=$(id -u)" > /tmp/keeper
stop() {
    if grep -q ' /data ' /proc/mounts; then echo keeper-stopped > /data/stopped; sync; fi
    exit 0
}
trap stop TERM
while :; do sleep 1 & wait $!; done
"""

SYSTEMD_TOML = f'''
name = "sdguest"
init = "systemd"

[entrypoint]
command = ["/bin/sh", "/opt/check.sh"]

[services.keeper]
command = ["/bin/sh", "/opt/keeper.sh"]
restart = "always"
load_credentials = ["api-key:API_KEY"]

[files."/opt/check.sh"]
content = """{CHECK}"""

[files."/opt/keeper.sh"]
content = """{KEEPER}"""

# a project may add to mvm's units: root lists what systemd itself imported
[files."/etc/systemd/system/mvm-entrypoint.service.d/test.conf"]
content = "[Service]\\nExecStartPre=+/bin/systemd-creds --system list --no-pager --json=short\\n"
'''

BUSYBOX_TOML = r"""
name = "bbguest"

[entrypoint]
command = ["/bin/sh", "-c", "for f in $CREDENTIALS_DIRECTORY/*; do echo \"chk cred ${f##*/} $(wc -c < $f) $(sha256sum < $f | cut -d' ' -f1)\"; done; ls /sys/firmware/dmi/entries | grep -c '^11-' | sed 's/^/chk smbios-entries /'; exit 3"]
"""


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("systemd")
    home = root / "home"
    env = {"MVM_HOME": str(home)}
    projects = {
        "systemd": write_project(root / "sdguest", SYSTEMD_TOML),
        "busybox": write_project(root / "bbguest", BUSYBOX_TOML),
    }
    for p in projects.values():
        r = mvmctl("build", str(p), env=env, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
    key = root / "api-key"
    key.write_text(API_KEY)
    key.chmod(0o600)
    return {"home": home, "key": key, "root": root, **projects}


def run_attached(sd: dict[str, Path], project: str, *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    r = mvmctl("run", "--attached", str(sd[project]), *args, env={"MVM_HOME": str(sd["home"])},
               timeout=BOOT_TIMEOUT)  # fmt: skip
    return r.returncode, r.stdout + r.stderr, time.monotonic() - started


def checks(out: str) -> list[str]:
    return [ln.split("chk ", 1)[1].strip() for ln in out.splitlines() if "chk " in ln]


def assert_systemd_guest(out: str, rc: int, extra: tuple[str, ...] = ()) -> None:
    got = checks(out)
    assert rc == 7, out[-3000:]  # the entrypoint's exit code, through ExecStopPost
    assert "pid1=systemd uid=1000 nnp=1" in got, out[-3000:]
    assert "creddir=/run/credentials/mvm-entrypoint.service" in got
    creds = {ln.split()[1]: ln.split()[2:] for ln in got if ln.startswith("cred ")}
    assert creds["API_KEY"] == [str(len(API_KEY)), sha(API_KEY.encode())]
    assert creds["OTHER"] == ["5", sha(b"other")]
    if extra:
        assert creds[LONG_NAME] == [str(len(API_KEY)), sha(API_KEY.encode())]
        assert creds["BIG"] == [str(len(BIG)), sha(BIG)]
    # the unit with LoadCredential=api-key:API_KEY read it from its $CREDENTIALS_DIRECTORY
    assert f"keeper {len(API_KEY)} {sha(API_KEY.encode())} uid=1000" in got
    # systemd-creds --system list (as root, ExecStartPre=+): imported by systemd, secure
    table = next(ln[ln.index('[{"name"') :] for ln in out.splitlines() if '[{"name"' in ln)
    listed = {c["name"]: c for c in json.loads(table)}
    assert sorted(listed) == sorted(("API_KEY", "OTHER", *extra)), table
    assert all(c["secure"] == "secure" for c in listed.values()), table
    assert "done" in got
    assert API_KEY not in out


def test_systemd_guest_on_microvm(sd: dict[str, Path]) -> None:
    big = sd["root"] / "big"
    big.write_bytes(BIG)
    env = {"MVM_HOME": str(sd["home"])}
    args = ("--credential", f"API_KEY@{sd['key']}", "--credential", "OTHER=other",
            "--credential", f"{LONG_NAME}@{sd['key']}", "--credential", f"BIG@{big}")  # fmt: skip
    shown = mvmctl("run", "--show-command", str(sd["systemd"]), *args, env=env)
    assert "name=opt/mvm/credentials/00," in shown.stdout  # the bundle, read by the initramfs
    rc, out, took = run_attached(sd, "systemd", *args)
    assert_systemd_guest(out, rc, extra=(LONG_NAME, "BIG"))
    print(f"\nsystemd guest, microvm: {took:.1f}s from run to exit")


def test_systemd_guest_on_q35_with_smbios(sd: dict[str, Path]) -> None:
    env = {"MVM_HOME": str(sd["home"])}
    r = mvmctl("run", "--show-command", "--machine", "q35", str(sd["systemd"]), "--credential",
               f"API_KEY@{sd['key']}", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "-M q35" in r.stdout and "-smbios type=11,path=" in r.stdout
    assert "-fw_cfg" not in r.stdout and API_KEY not in r.stdout
    rc, out, took = run_attached(sd, "systemd", "--machine", "q35", "--credential",
                                 f"API_KEY@{sd['key']}", "--credential", "OTHER=other")  # fmt: skip
    assert_systemd_guest(out, rc)
    print(f"\nsystemd guest, q35: {took:.1f}s from run to exit")


def test_busybox_guest_on_q35_with_smbios(sd: dict[str, Path]) -> None:
    rc, out, took = run_attached(sd, "busybox", "--machine", "q35", "--credential",
                                 f"API_KEY@{sd['key']}")  # fmt: skip
    assert rc == 3, out[-3000:]
    got = checks(out)
    assert f"cred API_KEY {len(API_KEY)} {sha(API_KEY.encode())}" in got, out[-3000:]
    assert "smbios-entries 1" in got  # it came as an OEM string, not over fw_cfg
    print(f"\nbusybox guest, q35: {took:.1f}s from run to exit")


def test_down_is_graceful(sd: dict[str, Path]) -> None:
    env = {"MVM_HOME": str(sd["home"])}
    seed = sd["root"] / "seed"
    seed.mkdir(exist_ok=True)
    r = mvmctl("up", "--flake", str(sd["systemd"]), "--name", "sd-down", "--credential",
               f"API_KEY@{sd['key']}", "--credential", "STAY=1", "-v", f"{seed}:/data:16M",
               env=env, timeout=BOOT_TIMEOUT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    log = sd["home"] / "vms" / "sd-down" / "console.log"
    end = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < end and "chk staying" not in log.read_text(errors="replace"):
        time.sleep(0.5)
    assert "chk staying" in log.read_text(errors="replace")
    started = time.monotonic()
    r = mvmctl("down", "sd-down", env=env, timeout=120)
    took = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    # graceful: systemd stopped the units and powered off itself, before `down`'s grace
    # for systemd guests ran out (then it would have quit QEMU over QMP)
    assert took < STOP_GRACE["systemd"], f"down took {took:.1f}s"
    print(f"\nsystemd guest: down took {took:.1f}s")
    vols = list((sd["home"] / "volumes" / "sd-down").glob("*.ext4"))
    assert len(vols) == 1, vols
    cat = subprocess.run(["debugfs", "-R", "cat /stopped", str(vols[0])], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ))  # fmt: skip
    assert "keeper-stopped" in cat.stdout, cat.stdout + cat.stderr  # SIGTERM, then synced
