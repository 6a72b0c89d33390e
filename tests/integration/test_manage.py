"""Imperative management with real VMs: create → start → ls (current) → edit
mvm.toml → ls (outdated) → update (diff; stale while the old image runs) →
update --restart (current); secret rotation with regenerate + restart; clone
with its own vars; rm."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import MVMCTL, fails, ok, write_project

pytestmark = pytest.mark.integration

TOML = """\
name = "mg"
[entrypoint]
command = ["/bin/sh", "-c", "echo \\"key $(sha256sum < /run/credentials/@system/API_KEY | cut -d' ' -f1) conf $(cat /etc/app.conf)\\"; exec sleep 3600"]

[vars.generators.app]
files.api-key = { secret = true }
runtime_inputs = ["openssl", "coreutils"]
script = "openssl rand -hex 16 | tr -d '\\\\n' > \\"$out/api-key\\""

[credentials]
API_KEY = { var = "app/api-key" }

[files."/etc/app.conf"]
content = "v1"
"""


def guest_line(name: str, timeout: float = 120) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in ok("logs", name).splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "key":
                return parts[1], parts[3]
        time.sleep(0.5)
    raise AssertionError(f"no key line from {name}: {ok('logs', name)[-2000:]}")


def key_sha(name: str) -> str:
    out = subprocess.run([MVMCTL, "vars", "get", name, "app/api-key", "--reveal"],
                         capture_output=True, timeout=60, check=True).stdout  # fmt: skip
    return hashlib.sha256(out).hexdigest()


def image_of(name: str) -> str:
    rows = {r["name"]: r for r in json.loads(ok("ls", "--json"))}
    return str(rows[name]["image"])


def test_create_start_update_restart_rotate_clone_rm(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", TOML)
    ok("create", "web", "--flake", str(project), timeout=300)
    rows = {r["name"]: r for r in json.loads(ok("ls", "--json"))}
    assert rows["web"]["state"] == "defined" and rows["web"]["image"] == "current"
    err = fails("start", "web")
    assert "Run 'mvmctl vars generate web' first" in err
    ok("vars", "generate", "web")
    try:
        ok("start", "web", timeout=300)
        key1, conf = guest_line("web")
        assert key1 == key_sha("web") and conf == "v1"
        assert image_of("web") == "current"

        (project / "mvm.toml").write_text(TOML.replace('content = "v1"', 'content = "v2"'))
        assert image_of("web") == "outdated (rebuild and restart: mvmctl update web --restart)"
        assert "outdated (rebuild and restart: mvmctl update web --restart)" in ok("ls")
        out = ok("update", "web", timeout=300)
        assert "~ /etc/app.conf" in out and "files: 0 added, 0 removed, 1 changed" in out
        assert image_of("web") == "stale (restart: mvmctl restart web)"
        out = ok("update", "web", "--restart", timeout=300)
        assert "restarted" in out
        assert guest_line("web")[1] == "v2"
        assert image_of("web") == "current"

        # rotation: regenerate, restart, the guest sees the new value and the old is gone
        ok("vars", "generate", "web", "--regenerate")
        key2 = key_sha("web")
        assert key2 != key1
        ok("restart", "web", timeout=300)
        assert guest_line("web")[0] == key2

        # clone: its own definition and its own, fresh vars
        out = ok("clone", "web", "web2")
        assert "app: generated" in out
        assert key_sha("web2") != key2
        rows = {r["name"]: r for r in json.loads(ok("ls", "--json"))}
        assert rows["web2"]["state"] == "defined" and rows["web2"]["source"] == str(project)
    finally:
        subprocess.run([MVMCTL, "rm", "web"], capture_output=True, timeout=120)
        subprocess.run([MVMCTL, "rm", "web2"], capture_output=True, timeout=120)
    assert json.loads(ok("ls", "--json")) == []
    home = Path(os.environ["MVM_HOME"])
    assert not (home / "vars" / "web").exists() and not (home / "defs" / "web.json").exists()


def test_run_started_vm_can_be_restarted_and_reports_freshness(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", TOML)
    ok("vars", "generate", "mg", "--flake", str(project))
    try:
        ok("up", "--flake", str(project), timeout=300)
        assert image_of("mg") == "current"
        (project / "mvm.toml").write_text(TOML.replace('content = "v1"', 'content = "v3"'))
        assert image_of("mg").startswith("outdated")
        ok("update", "mg", "--restart", timeout=300)
        assert guest_line("mg")[1] == "v3" and image_of("mg") == "current"
    finally:
        subprocess.run([MVMCTL, "rm", "mg"], capture_output=True, timeout=120)


def test_bad_management_input_is_one_line() -> None:
    assert "no VM named 'ghost'" in fails("start", "ghost")
    assert "invalid VM name" in fails("create", "Bad_Name", "--flake", ".")
    assert "exactly one of --flake" in fails("create", "x")
    assert "no VM named" in fails("rm", "ghost")
    assert "no VM named" in fails("update", "ghost")


def test_update_reports_packages_and_files_like_a_closure_diff(tmp_path: Path) -> None:
    base = 'name = "pk"\n[entrypoint]\ncommand = ["/bin/true"]\n'
    project = write_project(tmp_path / "p", base)
    ok("create", "pk", "--flake", str(project), timeout=300)
    assert json.loads(ok("update", "pk", "--json"))["diff"]["files"]["changed"] == []
    (project / "mvm.toml").write_text('name = "pk"\npackages = ["hello"]\n'
                                      '[entrypoint]\ncommand = ["/bin/true"]\n')  # fmt: skip
    assert image_of("pk").startswith("outdated")
    out = json.loads(ok("update", "pk", "--json", timeout=600))
    assert out["old"] != out["new"] and out["restarted"] is False
    assert "hello" in out["diff"]["packages"]["added"]
    assert "/usr/bin/hello" in out["diff"]["files"]["added"]
    assert image_of("pk") == "current"
    (project / "mvm.toml").write_text(base)
    text = ok("update", "pk", timeout=300)
    assert "hello: " in text and "→ ∅" in text and "- /usr/bin/hello" in text
    ok("rm", "pk")
