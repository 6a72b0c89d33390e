"""/init's Firecracker mode in a real boot under QEMU: ``mvm.channels=vsock``
(``MVM_GUEST_CHANNELS=vsock``) with the guest-data drive (``MVM_GUEST_DATA=drive``).

QEMU here has no vsock device (no /dev/vhost-vsock), so the host hears nothing:
what this checks is the guest's half, with the same /init a Firecracker guest
runs: the agent and the control relay listen on vsock 1024/1025, status is to be
reported on 1026, no virtio-serial port is waited for, the entrypoint runs with
its credentials, and the VM still powers off on its own (the status connect
fails fast instead of hanging the shutdown).
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import mvmctl, write_project
from tests.integration.drives_support import SECRET, env_for, parse, sha

pytestmark = pytest.mark.integration

CHECK = r"""#!/bin/sh
n=0; while [ ! -s /run/mvm/ports ] && [ $n -lt 200 ]; do sleep 0.1; n=$((n + 1)); done
n=0; while ! ps -o args | grep -q '[m]vm-guest-agent' && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
echo BEGIN-CHECK
echo "ports $(cat /run/mvm/ports)"
ps -o nice,args | grep '[m]vm-vsock' | sed 's/^ */proc /'
for d in /proc/[0-9]*; do
    a=$(tr '\0' ' ' < $d/cmdline 2>/dev/null)
    case "$a" in /usr/local/bin/mvm-guest-agent\ *) echo "agent $a" ;; esac
done
sleep 0.5
echo "agentlog $(tr '\n' ' ' < /run/mvm/agent.log)"
[ -p /run/mvm/control.in ] && [ -p /run/mvm/control.out ] && echo "fifos yes"
echo "cred $(sha256sum < "$CREDENTIALS_DIRECTORY/TOKEN" | cut -d' ' -f1)"
echo END-CHECK
"""
PROJECT = f"""name = "vsockmode"
[entrypoint]
command = ["/usr/local/bin/check"]
[files."/usr/local/bin/check"]
content = '''{CHECK}'''
mode = "0755"
"""


def test_vsock_mode_guest_side(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("vsockmode")
    home = root / "home"
    project = write_project(root / "proj", PROJECT)
    env = env_for(home, MVM_GUEST_DATA="drive", MVM_GUEST_CHANNELS="vsock")
    assert mvmctl("build", str(project), env=env, timeout=600).returncode == 0
    t0 = time.monotonic()
    r = mvmctl("run", "--attached", str(project), "--credential", f"TOKEN={SECRET}",
               env=env, timeout=300)  # fmt: skip
    took = time.monotonic() - t0
    g = parse(r.stdout)
    assert g["ports"] == ["STATUS=vsock:1026"], r.stdout[-3000:]
    # the control relay runs at normal priority (the channels' setup runs at nice 19)
    assert g["proc"] == ["0 /etc/mvm/bin/mvm-vsock listen vsock:1025"], g["proc"]
    assert len(g["agent"]) == 1 and g["agent"][0].split()[-1] == "vsock:1024", g["agent"]
    assert g["fifos"] == ["yes"]
    # the agent bound its vsock listener (it logs "started" after that) and is still there
    assert "started as uid" in g["agentlog"][0] and "cannot" not in g["agentlog"][0], g["agentlog"]
    assert g["cred"] == [sha(SECRET)]
    # no host end for status under QEMU: the VM powered off by itself, unreported
    assert r.returncode != 0 and "without reporting an exit status" in r.stderr, r.stderr
    assert took < 120
    assert SECRET not in r.stdout + r.stderr


SD_CHECK = r"""#!/bin/sh
n=0; while [ $n -lt 300 ]; do
    ps -o args | grep -q '[m]vm-vsock listen' && ps -o args | grep -q '[m]vm-guest-agent' && break
    sleep 0.1; n=$((n + 1))
done
echo BEGIN-CHECK
echo "pid1 $(cat /proc/1/comm)"
for f in "$CREDENTIALS_DIRECTORY"/*; do echo "cred ${f##*/} $(sha256sum < "$f" | cut -d' ' -f1)"; done
ps -o args | grep '[m]vm-vsock listen' | sed 's/^/proc /'
for d in /proc/[0-9]*; do
    a=$(tr '\0' ' ' < $d/cmdline 2>/dev/null)
    case "$a" in /usr/local/bin/mvm-guest-agent\ *) echo "agent $a" ;; esac
done
echo "addr $(cat /run/mvm/status-addr)"
echo END-CHECK
exit 5
"""
SD_PROJECT = f"""name = "sdvsock"
init = "systemd"
[entrypoint]
command = ["/bin/sh", "/opt/check.sh"]
[files."/opt/check.sh"]
content = '''{SD_CHECK}'''
"""


def test_systemd_guest_in_vsock_mode(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A systemd guest: credentials from the guest-data drive (imported by the
    initramfs), the agent unit on vsock:1024, control.sh listening on 1025."""
    root = tmp_path_factory.mktemp("sdvsock")
    home = root / "home"
    project = write_project(root / "proj", SD_PROJECT)
    env = env_for(home, MVM_GUEST_DATA="drive", MVM_GUEST_CHANNELS="vsock")
    b = mvmctl("build", str(project), env=env, timeout=900)
    assert b.returncode == 0, b.stderr
    r = mvmctl("run", "--attached", str(project), "--credential", f"TOKEN={SECRET}",
               "--credential", f"{'L' * 80}=x", env=env, timeout=420)  # fmt: skip
    g = parse(r.stdout)
    assert g["pid1"] == ["systemd"], r.stdout[-3000:]
    creds = dict(line.split() for line in g["cred"])
    assert creds["TOKEN"] == sha(SECRET) and creds["L" * 80] == sha("x")
    assert g["proc"] == ["/etc/mvm/bin/mvm-vsock listen vsock:1025"]
    assert len(g["agent"]) == 1 and g["agent"][0].split()[-1] == "vsock:1024", g["agent"]
    assert g["addr"] == ["vsock:1026"]
    assert r.returncode != 0 and "without reporting an exit status" in r.stderr, r.stderr
    assert SECRET not in r.stdout + r.stderr
