"""Templates with real images and real boots (QEMU; TCG here): init → build →
up, defaults from the template, tamper → verify fails and up refuses, delete
refused while a VM runs from it, and the local-directory registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import REPO, fails, ok, write_project

pytestmark = pytest.mark.integration

HELLO = REPO / "examples" / "hello"


def run_to_end(vm: str) -> str:
    """Wait for a VM's entrypoint to finish; return its console output and remove it."""
    ok("wait", vm, "--timeout", "60", timeout=90)
    out = ok("logs", vm)
    ok("down", vm)
    return out


def current(name: str) -> str:
    return str(json.loads(ok("template", "list", "--json"))[0]["current"])


def test_init_build_up_runs_as_is(tmp_path: Path) -> None:
    proj = tmp_path / "my-service"
    ok("template", "init", "my-service", "--local", "--dir", str(proj))
    assert "built revision r1-" in ok("template", "build", "my-service")
    assert "up to date" in ok("template", "build", "my-service")
    assert "my-service-1: running" in ok("up", "--template", "my-service", "--name", "my-service-1")
    status = json.loads(ok("status", "my-service-1", "--json"))
    assert status["source"] == "template:my-service" and status["revision"].startswith("r1-")
    assert (status["vcpus"], status["memory_mib"]) == (1, 256)  # the project's mvm.toml values
    assert "hello from my-service" in run_to_end("my-service-1")


def test_edit_then_build_gives_a_new_revision_with_new_defaults(tmp_path: Path) -> None:
    ok("template", "create", "hello", "--flake", str(HELLO), "--cpus", "1", "--mem", "256")
    r1 = ok("template", "build", "hello").split()[-2]
    ok("template", "edit", "hello", "--mem", "384")
    assert "needs rebuild" in ok("template", "list")
    out = ok("template", "build", "hello")
    assert "built revision r2-" in out
    info = json.loads(ok("template", "info", "hello", "--json"))
    assert info["revisions"][0]["id"] == r1 and info["current"].startswith("r2-")
    ok("up", "--template", "hello", "--name", "h1")
    assert json.loads(ok("status", "h1", "--json"))["memory_mib"] == 384
    assert "hello from" in run_to_end("h1")
    ok("up", "--template", "hello", "--name", "h2", "--mem", "320")  # the CLI still wins
    assert json.loads(ok("status", "h2", "--json"))["memory_mib"] == 320
    run_to_end("h2")


def test_tampered_template_fails_verify_and_up_refuses(tmp_path: Path) -> None:
    ok("template", "create", "hello", "--flake", str(HELLO))
    ok("template", "build", "hello")
    assert "ok" in ok("template", "verify", "hello")
    rev = Path(os.environ["MVM_HOME"]) / "templates" / "hello" / "revisions" / current("hello")
    rootfs = rev / "rootfs.ext4"
    # rootfs.ext4 is hard-linked only with this test's own image cache; never damage the
    # kernel, whose inode is shared with the machine-wide MVM_CACHE
    data = bytearray(rootfs.read_bytes())
    data[4096] ^= 0xFF
    rootfs.write_bytes(bytes(data))
    assert "rootfs.ext4" in fails("template", "verify", "hello")
    err = fails("up", "--template", "hello", "--name", "bad")
    assert "rootfs.ext4 does not match" in err
    assert json.loads(ok("ls", "--json")) == []


def test_delete_is_refused_while_a_vm_uses_the_template(tmp_path: Path) -> None:
    proj = write_project(tmp_path / "sleeper", """name = "sleeper"
[entrypoint]
command = ["/bin/sh", "-c", "echo sleeping; exec sleep 600"]
""")  # fmt: skip
    ok("template", "create", "sleeper", "--flake", str(proj), "--cpus", "1", "--mem", "256")
    ok("template", "build", "sleeper")
    ok("up", "--template", "sleeper", "--name", "s1")
    try:
        err = fails("template", "delete", "sleeper")
        assert "in use by VM s1" in err
        assert "sleeper" in ok("template", "list")
    finally:
        ok("down", "s1")
    assert "deleted" in ok("template", "delete", "sleeper")
    assert json.loads(ok("template", "list", "--json")) == []


def test_local_directory_registry_round_trip(tmp_path: Path) -> None:
    reg = {"MVM_TEMPLATE_REGISTRY": f"file://{tmp_path}/registry"}
    ok("template", "create", "hello", "--flake", str(HELLO))
    ok("template", "build", "hello")
    assert "pushed r1-" in ok("template", "push", "hello", env=reg)
    assert "nothing transferred" in ok("template", "push", "hello", env=reg)
    home2 = {**reg, "MVM_HOME": str(tmp_path / "home2")}
    assert "verified" in ok("template", "pull", "hello", env=home2)
    assert "nothing transferred" in ok("template", "pull", "hello", env=home2)
    assert "ok" in ok("template", "verify", "hello", env=home2)
