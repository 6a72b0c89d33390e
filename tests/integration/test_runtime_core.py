"""Settings resolved once, for real: `up --template` and `mvm.up()` honour
mvm.toml's ports and credentials and a template's data disk exactly like
`mvmctl up --flake`; `--show-command`, pause/resume and data volume
management work against real QEMU VMs."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import mvmctl, ok, write_project

pytestmark = pytest.mark.integration

TOKEN = "tok-3f9a1c"
PROJECT = """name = "core"
ports = ["{port}:8080"]
[entrypoint]
command = ["/bin/sh", "-c", "mkdir -p /tmp/w; cat $CREDENTIALS_DIRECTORY/TOKEN > /tmp/w/index.html; grep -q ' /data ' /proc/mounts && echo data-mounted; echo core-ready; exec httpd -f -p 8080 -h /tmp/w"]
[credentials]
TOKEN = {{ file = "token.txt" }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, timeout: float = 90) -> str:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.3)


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    home = tmp_path_factory.mktemp("core-home")
    port = free_port()
    proj = write_project(tmp_path_factory.mktemp("core") / "p", PROJECT.format(port=port))
    (proj / "token.txt").write_text(TOKEN)
    ok("build", str(proj), env={"MVM_HOME": str(home)}, timeout=600)
    return home, proj, port


@pytest.fixture
def home(core: tuple[Path, Path, int], monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("MVM_HOME", str(core[0]))
    yield core[0]
    vms = core[0] / "vms"
    for d in vms.glob("*") if vms.exists() else []:
        if d.is_dir():
            mvmctl("down", d.name)


def test_up_template_honours_mvm_toml_and_data_disk(
    home: Path, core: tuple[Path, Path, int]
) -> None:
    _, proj, port = core
    ok("template", "create", "tcore", "--flake", str(proj))
    ok("template", "edit", "tcore", "--data-disk", "32")
    ok("template", "build", "tcore", timeout=600)
    ok("up", "--template", "tcore", "--name", "t1")
    assert get(port) == TOKEN  # mvm.toml's port forward and [credentials] applied
    log = (home / "vms" / "t1" / "console.log").read_text(errors="replace")
    assert "data-mounted" in log  # the template's --data-disk is attached at /data
    status = json.loads(ok("status", "t1", "--json"))
    assert status["settings"]["ports"] == "template"
    assert status["settings"]["credentials"] == "template"
    assert status["settings"]["volumes"] == "template"
    assert status["settings"]["name"] == "cli"
    assert status["credentials"] == ["TOKEN"] and TOKEN not in json.dumps(status)
    ok("down", "t1")


def test_python_api_honours_mvm_toml(home: Path, core: tuple[Path, Path, int]) -> None:
    import mvm

    _, proj, port = core
    handle = mvm.up(mvm.load_project(proj), mvm.RunConfig(name="api1"))
    try:
        assert get(port) == TOKEN
        info = handle.info()
        assert info["settings"]["ports"] == "mvm.toml" and info["credentials"] == ["TOKEN"]
        assert info["settings"]["name"] == "api"
    finally:
        mvm.down("api1")


def test_show_command_prints_and_creates_nothing(home: Path, core: tuple[Path, Path, int]) -> None:
    _, proj, port = core
    out = ok("up", "--flake", str(proj), "--name", "sc1", "--show-command")
    assert out.startswith(("qemu-system-x86_64", "/")) and "-M microvm" in out
    assert f"hostfwd=tcp:127.0.0.1:{port}-:8080" in out
    assert "opt/io.systemd.credentials/TOKEN" in out and TOKEN not in out
    assert not (home / "vms" / "sc1").exists()


def test_pause_resume_and_guards(home: Path, core: tuple[Path, Path, int]) -> None:
    _, proj, port = core
    ok("up", "--flake", str(proj), "--name", "p1")
    assert get(port) == TOKEN
    res = mvmctl("resume", "p1")
    assert res.returncode != 0 and "cannot resume VM p1: it is running" in res.stderr
    ok("pause", "p1")
    ls = {v["name"]: v for v in json.loads(ok("ls", "--json"))}
    assert ls["p1"]["state"] == "paused"
    with pytest.raises(OSError):  # a paused guest does not answer
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
    ok("resume", "p1")
    assert get(port, timeout=10) == TOKEN
    started = time.monotonic()
    ok("down", "p1")
    assert time.monotonic() - started < 5


def test_data_volumes_are_listed_and_removed(
    home: Path, core: tuple[Path, Path, int], tmp_path: Path
) -> None:
    _, proj, _ = core
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "kept.txt").write_text("x")
    ok("up", "--flake", str(proj), "--name", "v1", "-v", f"{seed}:/data:16M")
    vols = json.loads(ok("volume", "ls", "v1", "--json"))
    assert [(v["vm"], v["guest"], v["size"]) for v in vols] == [("v1", "/data", 16 << 20)]
    res = mvmctl("volume", "rm", "v1")
    assert res.returncode != 0 and "is running" in res.stderr
    assert "removed" in ok("down", "v1")
    assert json.loads(ok("volume", "ls", "v1", "--json"))  # kept across down (persistent)
    ok("up", "--flake", str(proj), "--name", "v1", "-v", f"{seed}:/data:16M")
    assert "and its data volumes" in ok("down", "v1", "--volumes")
    assert json.loads(ok("volume", "ls", "v1", "--json")) == []
    assert not (home / "volumes" / "v1").exists()
