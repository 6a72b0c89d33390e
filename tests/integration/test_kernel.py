"""The mvm kernel's cache and commands against the real machine-wide cache (the
session fixture has built it), and an interrupted build leaving nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import MVMCTL, SHARED_CACHE, fails, ok, write_project

pytestmark = pytest.mark.integration


def test_list_info_and_doctor_show_the_cached_kernels(tmp_path: Path) -> None:
    rows = json.loads(ok("kernel", "list", "--json"))
    mvm = [r for r in rows if r["provider"] == "mvm"]
    assert mvm and all(r["name"].startswith("mvm-6.1.") for r in mvm)
    assert all(Path(r["image"]).is_file() and r["size"] > 1_000_000 for r in mvm)
    built = ok("kernel", "build")  # cached: answers at once, same key
    assert any(r["name"] in built for r in mvm)
    proj = write_project(tmp_path / "p", 'name = "p"\n[entrypoint]\ncommand = ["true"]\n')
    info = json.loads(ok("kernel", "info", str(proj), "--json"))
    assert info["kernel"].startswith("mvm") and info["version"] == mvm[0]["version"] + "-mvm"
    r = subprocess.run([MVMCTL, "doctor"], cwd=proj, capture_output=True, text=True, timeout=120,
                       env=os.environ.copy())  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "kernels:" in r.stdout and mvm[0]["name"] in r.stdout
    assert "project_uses: mvm" in r.stdout


def test_rm_refuses_what_is_not_a_cached_kernel() -> None:
    for bad in ("../../etc", "mvm-../../x-0123456789abcdef", "nope"):
        assert "kernel" in fails("kernel", "rm", bad)


def test_interrupted_build_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM while unpacking: make/tar's process group is killed, the temporary
    tree removed, no build appears under the key; the command fails in one line."""
    cache = tmp_path / "cache"
    env = dict(os.environ, MVM_CACHE=str(cache))
    p = subprocess.Popen([MVMCTL, "kernel", "build"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    kernels = cache / "kernels"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(kernels.glob(".kbuild-*/src/*")):
        time.sleep(0.2)
    assert list(kernels.glob(".kbuild-*/src/*")), "the build never started unpacking"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "Traceback" not in err
    assert not list(kernels.glob(".kbuild-*"))
    assert not [d for d in kernels.iterdir() if d.name.startswith("mvm-")]
    leftover = subprocess.run(["pgrep", "-f", str(cache)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", leftover.stdout
    assert SHARED_CACHE not in str(cache)
