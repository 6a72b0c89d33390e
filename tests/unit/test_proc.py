"""The one subprocess helper: minimal child environments, children that die with us."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mvm import proc


def test_children_get_a_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_TEMPLATE_REGISTRY_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live")
    monkeypatch.setenv("http_proxy", "http://proxy:3128")
    env = proc.run(["env"]).stdout.decode()
    assert "s3cret" not in env and "sk-live" not in env and "proxy:3128" not in env
    assert "PATH=" in env and "LC_ALL=C" in env
    assert "proxy:3128" in proc.run(["env"], network=True).stdout.decode()  # downloads only
    assert "EXTRA=1" in proc.run(["env"], env={"EXTRA": "1"}).stdout.decode()


def test_spawned_children_get_a_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_TEMPLATE_REGISTRY_SECRET_ACCESS_KEY", "s3cret")
    child = proc.spawn(["env"], stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=10)
    assert b"s3cret" not in out


def test_a_probe_child_dies_with_its_parent(tmp_path: Path) -> None:
    """The KVM probe's QEMU must not outlive a killed mvmctl (PR_SET_PDEATHSIG)."""
    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import time
        from mvm import proc
        c = proc.spawn(["sleep", "300"], die_with_parent=True)
        open({str(pidfile)!r}, "w").write(str(c.pid))
        time.sleep(300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 20
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pidfile.read_text())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or _zombie(child)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_probe_times_out_and_reaps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KVM that never reaches userspace: the probe gives up in time and kills its QEMU."""
    from mvm.backends.qemu import accel

    fake = tmp_path / "qemu"
    fake.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 300\n")
    fake.chmod(0o755)
    monkeypatch.setattr(accel, "PROBE_TIMEOUT", 1.0)
    started = time.monotonic()
    choice = accel.probe(tmp_path / "vmlinux", str(fake))
    assert choice.accel == "tcg" and "did not reach userspace" in choice.reason
    assert time.monotonic() - started < 5
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
