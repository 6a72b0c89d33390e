"""Session fixtures for the drives and credentials tests: one project built
once, and one instrumented boot whose results both test files check.
Load with ``pytest_plugins = ["tests.integration.conftest_drives"]``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import mvmctl, write_project
from tests.integration.drives_support import (
    BINARY,
    K100,
    LONG_NAME,
    PROJECT,
    SECRET,
    Boot,
    Inputs,
    env_for,
)


@pytest.fixture(scope="session")
def drives_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("drives-home")


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory, drives_home: Path) -> Inputs:
    """Host directories and files, and the project built once."""
    root = tmp_path_factory.mktemp("drives-inputs")
    project = write_project(root / "proj", PROJECT)
    (project / "toml-cred.txt").write_text(SECRET + "-toml")
    config, sec, data, host = (root / n for n in ("config", "secrets", "data", "hostcreds"))
    for d in (config, sec, data, host):
        d.mkdir()
    (config / "sub" / "deeper").mkdir(parents=True)
    (config / "app.json").write_text('{"gateway": {"port": 8080}}\n')
    (config / "sub" / "deeper" / "n.toml").write_text("k = 1\n")
    (config / "env.sh").write_text("GREETING='hello from config'\n")
    (config / "hold").write_text("")
    (sec / "app.env").write_text(f'# comment\nAPI_KEY={SECRET}\nexport QUOTED="{SECRET}$x"\n')
    (sec / "tls").mkdir()
    (sec / "tls" / "key.pem").write_bytes(BINARY)
    (data / "seed.txt").write_text("seeded")
    (host / "HOSTFWD").write_text(SECRET + "-host")
    (root / "bin.cred").write_bytes(BINARY)
    (root / "k100.cred").write_bytes(K100)
    res = mvmctl("build", str(project), env=env_for(drives_home), timeout=600)
    assert res.returncode == 0, res.stderr
    return Inputs(root, project, config, sec, data, host)


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                try:
                    if needle in p.read_bytes():
                        hits.append(str(p))
                except OSError:
                    pass
    return hits


@pytest.fixture(scope="session")
def boot(inputs: Inputs, drives_home: Path) -> Boot:
    """`up` with every kind of drive and credential, inspected while it runs,
    then `down`, then `run --attached` with the same name and data volume."""
    env = env_for(drives_home, CREDENTIALS_DIRECTORY=str(inputs.host_creds))
    b = Boot(name="drv-full")
    args = [
        "up", "--flake", str(inputs.project), "--name", b.name,
        "-v", f"{inputs.config}:/mnt/config", "-v", f"{inputs.secrets}:/mnt/secrets",
        "-v", f"{inputs.data}:/data:64M",
        "--credential", f"TOKEN={SECRET}", "--credential", f"BIN@{inputs.root / 'bin.cred'}",
        "--credential", f"K100@{inputs.root / 'k100.cred'}",
        "--credential", f"{LONG_NAME}={SECRET}-long",
    ]  # fmt: skip
    b.up = up = mvmctl(*args, env=env)
    assert up.returncode == 0, up.stderr
    vdir = drives_home / "vms" / b.name
    try:
        record = json.loads((vdir / "vm.json").read_text())
        b.cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes()
        b.run_dir_files = sorted(str(p.relative_to(vdir)) for p in vdir.rglob("*"))
        b.run_dir_mode = vdir.stat().st_mode & 0o777
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            b.console = (vdir / "console.log").read_text(errors="replace")
            if "END-CHECK" in b.console:
                break
            time.sleep(0.2)
        b.vm_json = (vdir / "vm.json").read_text()
        b.status_json = mvmctl("status", b.name, "--json", env=env).stdout
        b.ls_json = mvmctl("ls", "--json", env=env).stdout
        b.qemu_log = (vdir / "qemu.log").read_text(errors="replace")
        b.home_leaks = _files_containing(drives_home, SECRET.encode())
    finally:
        down = mvmctl("down", b.name, env=env)
    assert down.returncode == 0, down.stderr
    b.after_down = vdir.exists()
    b.volume_kept = any((drives_home / "volumes" / b.name).glob("*.ext4"))
    # second boot: same name and data volume; only a data volume (vdd behind two
    # placeholders) and one credential; attached, so its output is on stdout
    b.second = mvmctl(
        "run", "--attached", str(inputs.project), "--name", b.name,
        "-v", f"{inputs.data}:/data:64M", "--credential", f"TOKEN@{inputs.root / 'bin.cred'}",
        env=env_for(drives_home),
    )  # fmt: skip
    mvmctl("down", b.name, env=env_for(drives_home))
    return b
