"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, mvmctl, write_project

pytestmark = pytest.mark.integration

HELLO = REPO / "examples" / "hello"


def assert_clean_error(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines and lines[0].startswith("mvmctl: error:"), res.stderr
    assert all(line.startswith(("mvmctl: error:", "hint:")) for line in lines), res.stderr
    assert needle in lines[0], res.stderr


def home_is_empty_of_vms(home: Path) -> bool:
    vms = home / "vms"
    return not vms.exists() or not [p for p in vms.iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('name = "x"\n[entrypoint\n', "not valid TOML"),
        ('name = "x"\n[entrypoint]\nshell = "/bin/sh"\ncommand = ["/x"]\n', "needs exactly one"),
        ('name = "../x"\n[entrypoint]\ncommand = ["/x"]\n', "not allowed"),
        ('name = "x"\ncolour = 1\n[entrypoint]\ncommand = ["/x"]\n', "colour: unknown key"),
    ],
)
def test_invalid_manifests(tmp_path: Path, toml: str, needle: str) -> None:
    project = write_project(tmp_path / "p", toml)
    for verb in ("validate", "build", "run"):
        assert_clean_error(mvmctl(verb, str(project)), needle)
    assert home_is_empty_of_vms(Path(os.environ["MVM_HOME"]))


def test_missing_manifest(tmp_path: Path) -> None:
    assert_clean_error(mvmctl("run", str(tmp_path)), "no such file")


def test_unknown_debian_package(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", 'name = "x"\npackages = ["no-such-package-mvm"]\n'
                            '[entrypoint]\ncommand = ["/bin/true"]\n')  # fmt: skip
    assert_clean_error(
        mvmctl("build", str(project)), "unknown Debian package 'no-such-package-mvm'"
    )
    images = Path(os.environ["MVM_HOME"]) / "images"
    assert (
        not [p for p in images.glob("*") if not p.name.startswith(".")] if images.exists() else True
    )
    assert not list(images.glob(".build-*")) if images.exists() else True


def test_unknown_vm() -> None:
    for verb in (["down", "nope"], ["logs", "nope"], ["status", "nope"], ["wait", "nope"]):
        assert_clean_error(mvmctl(*verb), "no VM named 'nope'")
    assert_clean_error(mvmctl("down", "../etc"), "invalid VM name")


def test_invalid_vm_name_and_port() -> None:
    assert_clean_error(mvmctl("run", str(HELLO), "--name", "Bad/Name"), "invalid VM name")
    assert_clean_error(mvmctl("run", str(HELLO), "-p", "80:99999"), "invalid port")
    assert home_is_empty_of_vms(Path(os.environ["MVM_HOME"]))


def test_unavailable_hypervisor_is_refused(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", 'name = "fc"\nhypervisor = "firecracker"\n'
                            '[entrypoint]\ncommand = ["/bin/true"]\n')  # fmt: skip
    res = mvmctl("run", str(project), env={"MVM_FIRECRACKER": "/nonexistent/firecracker"})
    assert_clean_error(res, "/nonexistent/firecracker not found")
    assert home_is_empty_of_vms(Path(os.environ["MVM_HOME"]))


def test_qemu_missing() -> None:
    res = mvmctl("run", str(HELLO), env={"MVM_QEMU": "/nonexistent/qemu-system-x86_64"})
    assert_clean_error(res, "/nonexistent/qemu-system-x86_64 not found")
    assert home_is_empty_of_vms(Path(os.environ["MVM_HOME"]))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_during_build_leaves_no_half_image(tmp_path: Path) -> None:
    home = tmp_path / "small-home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(home)], check=True)
    try:
        res = mvmctl("build", str(HELLO), env={"MVM_HOME": str(home)})
        assert_clean_error(res, "no space left on device")
        images = home / "images"
        leftovers = [p.name for p in images.iterdir() if not p.name.endswith(".lock")]
        assert leftovers == [], leftovers
    finally:
        subprocess.run(["umount", str(home)], check=False)


def test_usage_errors_are_one_line() -> None:
    assert_clean_error(mvmctl("run", str(HELLO), "--cpus", "0"), "Invalid value for '--cpus'")
    assert_clean_error(mvmctl("no-such-command"), "No such command")


def test_bad_environment_settings(tmp_path: Path) -> None:
    assert_clean_error(mvmctl("run", str(HELLO), env={"MVM_ACCEL": "bogus"}), "MVM_ACCEL='bogus'")
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    assert_clean_error(mvmctl("ls", env={"MVM_HOME": str(not_dir)}), "is not a directory")


def test_name_with_trailing_newline_is_refused() -> None:
    assert_clean_error(mvmctl("run", str(HELLO), "--name", "x\n"), "invalid VM name")
    assert home_is_empty_of_vms(Path(os.environ["MVM_HOME"]))


def test_wait_on_a_stopped_vm_says_why() -> None:
    name = "w-stop"
    res = mvmctl("up", "--flake", str(HELLO), "--name", name)
    assert res.returncode == 0, res.stderr
    home = Path(os.environ["MVM_HOME"])
    try:
        # hello exits on its own: wait returns its code; then mark it stopped as down/Ctrl-C do
        assert mvmctl("wait", name, "--timeout", "120").returncode == 0
        rec = home / "vms" / name / "vm.json"
        import json

        data = json.loads(rec.read_text())
        (home / "vms" / name / "status").write_text("")
        data["phase"] = "stopping"  # as down / Ctrl-C leave it
        rec.write_text(json.dumps(data))
        assert_clean_error(mvmctl("wait", name), "is stopped and reported no exit status")
    finally:
        mvmctl("down", name)


def test_qemu_gets_no_secret_from_mvmctls_environment(tmp_path: Path) -> None:
    secret = "registry-s3cret-value"
    project = write_project(tmp_path / "p", 'name = "envp"\n[entrypoint]\n'
                            'command = ["/bin/sh", "-c", "exec sleep 1000"]\n')  # fmt: skip
    env = {"MVM_TEMPLATE_REGISTRY_SECRET_ACCESS_KEY": secret, "OPENAI_API_KEY": secret}
    res = mvmctl("up", "--flake", str(project), "--name", "envp", env=env)
    assert res.returncode == 0, res.stderr
    try:
        home = Path(os.environ["MVM_HOME"])
        pid = int((home / "vms" / "envp" / "qemu.pid").read_text().split()[0])
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert secret.encode() not in environ
        assert b"PATH=" in environ
    finally:
        mvmctl("down", "envp")
