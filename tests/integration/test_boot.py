"""Real boots under QEMU (TCG here): every entrypoint form, uids, packages,
the detached lifecycle and truthful state after a SIGKILL.

Images are built once per session in a shared MVM_HOME; each test uses its
own VM names and removes them.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MVMCTL, REPO, mvmctl, write_project

pytestmark = pytest.mark.integration

PROJECTS = {
    "cmd": """name = "cmd"
[entrypoint]
command = ["/bin/sh", "-c", "echo cmd-out uid=$(id -u) home=$HOME; echo conf=$(cat /etc/app.conf) $(stat -c '%u:%a' /etc/app.conf); touch /x 2>/dev/null || echo rootfs-ro; exit 7"]
[files."/etc/app.conf"]
content = "conf-line"
mode = "0640"
""",
    "devcmd": """name = "devcmd"
dev = true
[entrypoint]
command = ["/bin/sh", "-c", "echo devcmd uid=$(id -u)"]
""",
    "shell": """name = "shell"
[entrypoint]
shell = "/bin/sh"
""",
    "svc": """name = "svc"
[entrypoint.services.once]
command = ["/bin/sh", "-c", "echo svc-once uid=$(id -u)"]
restart = "never"
[entrypoint.services.flaky]
command = ["/bin/sh", "-c", "n=$(cat /tmp/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /tmp/n; echo flaky-run-$n; [ $n -ge 3 ]"]
restart = "on-failure"
[services.aux]
command = ["/bin/sh", "-c", "echo aux-up; exec sleep 1000"]
restart = "always"
""",
    "py": """name = "py"
packages = ["python3-minimal"]
[entrypoint]
command = ["python3", "-c", "import os, sys; print('py-ok', sys.version_info[0], os.getuid())"]
""",
    "srv": """name = "srv"
[entrypoint]
command = ["/bin/sh", "-c", "echo srv-ready; mkdir -p /tmp/w; echo hi-from-guest > /tmp/w/index.html; exec httpd -f -p 8080 -h /tmp/w"]
""",
    "probe": """name = "probe"
[entrypoint]
command = ["/bin/sh", "-c", "cat /proc/mounts; echo cmdline=$(cat /proc/cmdline); echo init-args=[$(tr '\\\\0' ' ' < /proc/1/cmdline | cut -d' ' -f3-)]; uname -r"]
""",
    # the Debian cloud kernel stays covered: modular virtio through mvm's initramfs
    "debian": """name = "debian"
kernel = "debian"
[entrypoint]
command = ["/bin/sh", "-c", "echo deb-out uid=$(id -u) kernel=$(uname -r) args=$#; touch /x 2>/dev/null || echo rootfs-ro; exit 3"]
""",
    "short": """name = "short"
[entrypoint]
command = ["/bin/sh", "-c", "sleep 1; echo short-done; exit 5"]
""",
}


@pytest.fixture(scope="session")
def boot_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("boot-home")


@pytest.fixture(scope="session")
def projects(tmp_path_factory: pytest.TempPathFactory, boot_home: Path) -> dict[str, Path]:
    """Write and build every test project once per session."""
    root = tmp_path_factory.mktemp("projects")
    out = {}
    env = {"MVM_HOME": str(boot_home)}
    for name, toml in PROJECTS.items():
        out[name] = write_project(root / name, toml)
        res = mvmctl("build", str(out[name]), env=env, timeout=600)
        assert res.returncode == 0, res.stderr
    return out


@pytest.fixture
def home(boot_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("MVM_HOME", str(boot_home))
    before = (
        {p.name for p in (boot_home / "vms").glob("*")} if (boot_home / "vms").exists() else set()
    )
    yield boot_home
    vms = boot_home / "vms"
    for d in vms.glob("*") if vms.exists() else []:
        if d.is_dir() and d.name not in before:
            mvmctl("down", d.name)


def run_attached(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return mvmctl("run", "--attached", str(path), *extra, timeout=120)


def test_command_entrypoint_sealed(home: Path, projects: dict[str, Path]) -> None:
    res = run_attached(projects["cmd"], "--name", "cmd1")
    assert res.returncode == 7, res.stderr  # the entrypoint's exit code
    assert "cmd-out uid=1000 home=/home/app" in res.stdout
    assert "conf=conf-line 1000:640" in res.stdout  # [files] belong to the entrypoint uid
    assert "rootfs-ro" in res.stdout  # sealed: the rootfs is mounted read-only
    log = (home / "vms" / "cmd1" / "console.log").read_text()
    assert "cmd-out uid=1000" in log
    ls = json.loads(mvmctl("ls", "--json").stdout)
    assert [(v["name"], v["state"], v["exit_code"]) for v in ls if v["name"] == "cmd1"] == [
        ("cmd1", "exited", 7)
    ]


def test_dev_command_runs_as_root(home: Path, projects: dict[str, Path]) -> None:
    res = run_attached(projects["devcmd"], "--name", "dev1")
    assert res.returncode == 0, res.stderr
    assert "devcmd uid=0" in res.stdout


def test_revision_metadata(home: Path, projects: dict[str, Path]) -> None:
    rev = json.loads(mvmctl("build", str(projects["cmd"]), "--json").stdout)
    assert rev["sealed"] is True and rev["accessible"] is False
    assert rev["entrypointKind"] == "command"
    assert rev["uids"] == {"agent": 990, "entrypoint": 1000} and rev["rootlessEntrypoint"]
    assert (
        rev["agentBinary"] == "real"
        and "agent" in rev["guestFeatures"]
        and rev["expectedBootMs"] > 0
    )
    assert set(rev["checksums"]) == {"kernel", "initramfs.cpio", "rootfs.ext4"}
    # the default kernel is mvm's own: booted straight from the rootfs, no KASLR
    assert rev["kernel"]["version"].endswith("-mvm")
    assert rev["kernel"]["boot"] == "direct" and rev["kernel"]["kaslr"] is False
    assert rev["sizes"]["initramfs.cpio"] == 0
    shell = json.loads(mvmctl("build", str(projects["shell"]), "--json").stdout)
    assert shell["accessible"] is True and shell["uids"]["entrypoint"] == 0
    deb = json.loads(mvmctl("build", str(projects["debian"]), "--json").stdout)
    assert "boot" not in deb["kernel"] and deb["sizes"]["initramfs.cpio"] > 1_000_000


def test_debian_kernel_still_boots(home: Path, projects: dict[str, Path]) -> None:
    res = run_attached(projects["debian"], "--name", "deb1")
    assert res.returncode == 3, res.stderr
    assert "deb-out uid=1000 kernel=6.1.0-" in res.stdout and "-cloud-amd64" in res.stdout
    assert "rootfs-ro" in res.stdout


def test_mvm_kernel_direct_boot(home: Path, projects: dict[str, Path]) -> None:
    """No initramfs: the kernel mounted the rootfs read-only and devtmpfs, /init
    mounted proc and sys; no stray kernel argument reached init (`nokaslr`)."""
    res = run_attached(projects["probe"], "--name", "probe1")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "-mvm" not in out  # uname -r is the plain release
    assert "/dev/root / ext4 ro" in out and "devtmpfs /dev devtmpfs" in out
    assert " /proc proc " in out and " /sys sysfs " in out
    assert "init-args=[]" in out  # nothing but the script itself
    assert "root=/dev/vda" in out and "nokaslr" not in out


def test_shell_entrypoint_through_a_pty(home: Path, projects: dict[str, Path]) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # child: the CLI on a terminal, as a user would run it
        os.execv(MVMCTL, [MVMCTL, "run", "--attached", "--name", "sh1", str(projects["shell"])])
    buf = b""

    def read_until(marker: bytes, timeout: float = 60) -> bool:
        nonlocal buf
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    buf += os.read(fd, 4096)
                except OSError:
                    return marker in buf
                if marker in buf:
                    return True
        return False

    try:
        assert read_until(b"# "), buf
        os.write(fd, b"echo marker-$((6*7)) uid=$(id -u)\r")
        assert read_until(b"marker-42 uid=0"), buf
        os.write(fd, b"exit 3\r")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3
    finally:
        os.close(fd)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_services_with_restart_policies(home: Path, projects: dict[str, Path]) -> None:
    res = run_attached(projects["svc"], "--name", "svc1")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "svc-once uid=1000" in out
    assert "flaky-run-1" in out and "flaky-run-3" in out and "flaky-run-4" not in out
    assert "service flaky exited with status 1, restarting" in out
    assert "aux-up" in out


def test_packages_python(home: Path, projects: dict[str, Path]) -> None:
    res = run_attached(projects["py"], "--name", "py1")
    assert res.returncode == 0, res.stderr
    assert "py-ok 3 1000" in res.stdout


def test_detached_lifecycle_and_port_forward(home: Path, projects: dict[str, Path]) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = mvmctl("up", "--flake", str(projects["srv"]), "--name", "srv1", "-p", f"{port}:8080")
    assert res.returncode == 0, res.stderr
    # the command returned, the VM lives on
    status = json.loads(mvmctl("status", "srv1", "--json").stdout)
    assert status["state"] == "running" and status["mode"] == "detached"
    assert status["accel"] in ("kvm", "tcg") and status["accel_reason"]
    assert status["revision"] and status["pid"]
    # a second `up` with the same name or port fails cleanly
    dup = mvmctl("up", "--flake", str(projects["srv"]), "--name", "srv1")
    assert dup.returncode != 0 and "already in use" in dup.stderr and "Traceback" not in dup.stderr
    busy = mvmctl("up", "--flake", str(projects["srv"]), "--name", "srv2", "-p", f"{port}:8080")
    assert busy.returncode != 0 and f"port {port} is already in use" in busy.stderr
    assert not (home / "vms" / "srv2").exists()
    body = b""
    for _ in range(200):
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2).read()
            break
        except OSError:
            time.sleep(0.2)
    assert body == b"hi-from-guest\n"
    run_dir = home / "vms" / "srv1"
    assert run_dir.stat().st_mode & 0o777 == 0o700
    exposed = [f.name for f in run_dir.iterdir() if f.stat().st_mode & 0o077]
    assert exposed == [], exposed  # console.log, status, sockets: private to the owner
    logs = mvmctl("logs", "srv1")
    assert "srv-ready" in logs.stdout
    assert mvmctl("logs", "srv1", "-n", "1").stdout.count("\n") <= 1
    down = mvmctl("down", "srv1")
    assert down.returncode == 0 and "was running" in down.stdout
    assert not (home / "vms" / "srv1").exists()
    assert (
        os.path.exists(f"/proc/{status['pid']}") is False
        or b"mvm-srv1" not in Path(f"/proc/{status['pid']}/cmdline").read_bytes()
    )


def test_two_ups_with_one_name_one_wins(home: Path, projects: dict[str, Path]) -> None:
    argv = [MVMCTL, "up", "--flake", str(projects["srv"]), "--name", "race1"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for code, err in results if code != 0)
    assert "already in use" in loser and "Traceback" not in loser
    assert json.loads(mvmctl("status", "race1", "--json").stdout)["state"] == "running"
    assert mvmctl("down", "race1").returncode == 0


def test_killed_qemu_is_reported_crashed(home: Path, projects: dict[str, Path]) -> None:
    assert mvmctl("up", "--flake", str(projects["srv"]), "--name", "kill1").returncode == 0
    pid = json.loads(mvmctl("status", "kill1", "--json").stdout)["pid"]
    os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        state = json.loads(mvmctl("status", "kill1", "--json").stdout)["state"]
        if state != "running":
            break
        time.sleep(0.1)
    assert state == "crashed"
    listed = {v["name"]: v["state"] for v in json.loads(mvmctl("ls", "--json").stdout)}
    assert listed["kill1"] == "crashed"
    assert mvmctl("down", "kill1").returncode == 0
    assert "kill1" not in mvmctl("ls").stdout


def test_wait_returns_exit_code(home: Path, projects: dict[str, Path]) -> None:
    assert mvmctl("up", "--flake", str(projects["short"]), "--name", "wait1").returncode == 0
    res = mvmctl("wait", "wait1", timeout=60)
    assert res.returncode == 5
    assert json.loads(mvmctl("status", "wait1", "--json").stdout)["state"] == "exited"


def test_detach_lets_an_attached_vm_outlive_its_command(
    home: Path, projects: dict[str, Path]
) -> None:
    attached = subprocess.Popen(
        [MVMCTL, "run", "--attached", "--name", "att1", str(projects["srv"])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(300):
            if (home / "vms" / "att1" / "console.log").exists() and "srv-ready" in (
                home / "vms" / "att1" / "console.log"
            ).read_text():
                break
            time.sleep(0.1)
        assert json.loads(mvmctl("status", "att1", "--json").stdout)["mode"] == "attached"
        assert mvmctl("detach", "att1").returncode == 0
        assert attached.wait(timeout=30) == 0
        status = json.loads(mvmctl("status", "att1", "--json").stdout)
        assert status["state"] == "running" and status["mode"] == "detached"
    finally:
        attached.kill()
        attached.wait()


def test_ctrl_c_stops_an_attached_vm(home: Path, projects: dict[str, Path]) -> None:
    attached = subprocess.Popen(
        [MVMCTL, "run", "--attached", "--name", "int1", str(projects["srv"])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    log = home / "vms" / "int1" / "console.log"
    for _ in range(300):
        if log.exists() and "srv-ready" in log.read_text():
            break
        time.sleep(0.1)
    attached.send_signal(signal.SIGINT)
    assert attached.wait(timeout=30) == 130
    assert "Traceback" not in attached.stderr.read().decode()  # type: ignore[union-attr]
    assert json.loads(mvmctl("status", "int1", "--json").stdout)["state"] == "stopped"


def test_demo_project_prints_guest_output(home: Path) -> None:
    res = run_attached(REPO / "examples" / "hello", "--name", "demo1")
    assert res.returncode == 0, res.stderr
    assert "hello from 6." in res.stdout and "as uid 1000" in res.stdout
