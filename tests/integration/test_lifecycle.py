"""Lifecycle hardening with real VMs: graceful `down` keeps data, a VM whose
`up` was killed or whose record broke is still found and stopped, a full
host disk shows as such and never blocks `down`, secret staging is swept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MVMCTL, mvmctl, ok, write_project

pytestmark = pytest.mark.integration

WRITER = """name = "writer"
[entrypoint]
command = ["/bin/sh", "-c", "echo prev=$(tail -n 1 /data/log 2>/dev/null || echo none); i=0; while :; do i=$((i+1)); echo $i >> /data/log; usleep 200000; done"]
"""
IDLE = """name = "idle"
[entrypoint]
command = ["/bin/sh", "-c", "echo idle-ready; exec sleep 100000"]
"""
FILLER = """name = "filler"
[entrypoint]
command = ["/bin/sh", "-c", "echo filler-start; dd if=/dev/zero of=/data/big bs=1M count=400 2>/dev/null; echo filler-done; exec sleep 100000"]
"""


@pytest.fixture(scope="module")
def lc_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lc-home")


@pytest.fixture(scope="module")
def lc_projects(tmp_path_factory: pytest.TempPathFactory, lc_home: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lc-projects")
    out = {}
    for name, toml in (("writer", WRITER), ("idle", IDLE), ("filler", FILLER)):
        out[name] = write_project(root / name, toml)
        ok("build", str(out[name]), env={"MVM_HOME": str(lc_home)}, timeout=600)
    return out


@pytest.fixture
def home(lc_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("MVM_HOME", str(lc_home))
    yield lc_home
    vms = lc_home / "vms"
    for d in vms.glob("*") if vms.exists() else []:
        if d.is_dir():
            mvmctl("down", d.name)


def wait_for(pred: object, timeout: float = 60.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def console(home: Path, name: str) -> str:
    p = home / "vms" / name / "console.log"
    return p.read_text(errors="replace") if p.exists() else ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def qemu_pid(home: Path, name: str) -> int:
    return int((home / "vms" / name / "qemu.pid").read_text().split()[0])


def test_down_is_graceful_and_keeps_volume_data(
    home: Path, lc_projects: dict[str, Path], tmp_path: Path
) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    vol = f"{seed}:/data:16M"
    ok("up", "--flake", str(lc_projects["writer"]), "--name", "w1", "-v", vol)
    wait_for(lambda: "prev=none" in console(home, "w1"), what="first boot")
    time.sleep(2.0)  # ≈10 lines written
    started = time.monotonic()
    ok("down", "w1")
    took = time.monotonic() - started
    # graceful: the guest powered itself off (no 5 s grace wait, no QMP quit)
    assert took < 3.0, f"down took {took:.2f}s"
    ok("up", "--flake", str(lc_projects["writer"]), "--name", "w1", "-v", vol)
    wait_for(lambda: "prev=" in console(home, "w1"), what="second boot")
    line = next(ln for ln in console(home, "w1").splitlines() if "prev=" in ln)
    prev = line.split("prev=", 1)[1].strip()
    assert prev.isdigit() and int(prev) >= 3, line  # the data written before `down` survived


def test_killed_up_and_broken_record_still_stop_their_qemu(
    home: Path, lc_projects: dict[str, Path]
) -> None:
    ok("up", "--flake", str(lc_projects["idle"]), "--name", "k1")
    pid = qemu_pid(home, "k1")
    record = home / "vms" / "k1" / "vm.json"
    # an `up` killed right after spawning QEMU: no pid and no owner in the record
    data = json.loads(record.read_text())
    data.update(pid=None, pid_start=None, owner_pid=None, owner_start=None)
    record.write_text(json.dumps(data))
    ls = {v["name"]: v for v in json.loads(ok("ls", "--json"))}
    assert ls["k1"]["state"] == "running" and ls["k1"]["pid"] == pid
    # a corrupted record: listed as broken, the name is not reused, down still stops QEMU
    record.write_text("{ not json")
    ls = {v["name"]: v for v in json.loads(ok("ls", "--json"))}
    assert ls["k1"]["state"] == "broken" and ls["k1"]["pid"] == pid
    assert "broken" in ok("ls")
    res = mvmctl("up", "--flake", str(lc_projects["idle"]), "--name", "k1")
    assert res.returncode != 0 and "already in use" in res.stderr, res.stderr
    assert alive(pid)
    assert "was broken" in ok("down", "k1")
    assert not alive(pid)
    assert not (home / "vms" / "k1").exists()


def test_secret_staging_swept_after_a_killed_up(
    home: Path, lc_projects: dict[str, Path], tmp_path: Path
) -> None:
    secrets = tmp_path / "s"
    secrets.mkdir()
    (secrets / "app.env").write_text("TOKEN=abc\n")
    proc = subprocess.Popen(
        [MVMCTL, "up", "--flake", str(lc_projects["idle"]), "--name", "s1",
         "-v", f"{secrets}:/mnt/secrets", "--credential", "K=v"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    run = home / "vms" / "s1"
    wait_for(lambda: (run / "qemu.pid").exists(), what="QEMU spawned")
    proc.send_signal(signal.SIGKILL)  # the up dies around the time QEMU reads its inputs
    proc.wait()
    wait_for(lambda: "idle-ready" in console(home, "s1"), what="boot")
    # whether or not the kill came before the up's own scrub, recreate exactly what a
    # killed up leaves behind (its owner is dead), so the sweep is what is tested
    (run / "creds").mkdir(mode=0o700, exist_ok=True)
    (run / "creds" / "cred-0").write_bytes(b"v")
    (run / "drives").mkdir(mode=0o700, exist_ok=True)
    (run / "drives" / "secrets.ext4").write_bytes(b"x")
    ok("ls")  # any command that touches the VM sweeps what QEMU has already read
    assert not (run / "creds").exists() and not (run / "drives").exists()
    assert "running" in ok("status", "s1")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_at_run_time(lc_projects: dict[str, Path], tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120m", "tmpfs", str(small)], check=True)
    env = {"MVM_HOME": str(small / "home")}
    try:
        ok("build", str(lc_projects["filler"]), env=env, timeout=600)
        seed = tmp_path / "seed"
        seed.mkdir()
        ok("up", "--flake", str(lc_projects["filler"]), "--name", "f1", "-v",
           f"{seed}:/data:1G", env=env)  # fmt: skip

        def state() -> str:
            ls = json.loads(ok("ls", "--json", env=env))
            return str(next(v["state"] for v in ls if v["name"] == "f1"))

        wait_for(lambda: state() == "paused (disk full)", timeout=120, what="io-error pause")
        # a failed up rolls back every directory it created, even with no space left
        res = mvmctl("up", "--flake", str(lc_projects["filler"]), "--name", "f2", env=env)
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
        assert not (small / "home" / "vms" / "f2").exists()
        assert not (small / "home" / "volumes" / "f2").exists()
        pid = qemu_pid(small / "home", "f1")
        ok("down", "f1", env=env)  # no free space: down must still work
        assert not alive(pid)
        assert not (small / "home" / "vms" / "f1").exists()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
