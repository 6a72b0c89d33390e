"""``mvmctl template …`` run in-process: output, --json, and bad input giving a
one-line error, a non-zero exit and no change on disk."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mvm import paths
from mvm.cli.main import main
from mvm.config import load_project

if TYPE_CHECKING:
    from tests.unit.template_fakes import FakeBuilder

pytest_plugins = ["tests.unit.template_fakes"]

MakeProject = Callable[..., Path]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    def run(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _tree() -> dict[str, bytes]:
    root = paths.home()
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def test_create_build_list_info_json(
    cli: Callable[..., tuple[int, str, str]], make_project: MakeProject, fake_builder: FakeBuilder
) -> None:
    flake = str(make_project())
    assert cli("template", "create", "app", "--flake", flake, "--role", "gateway")[0] == 0
    code, out, _ = cli("template", "build", "app")
    assert code == 0 and "built revision r1-" in out
    code, out, _ = cli("template", "build", "app")
    assert code == 0 and "up to date" in out
    code, out, _ = cli("template", "list", "--json")
    [row] = json.loads(out)
    assert (
        row["name"] == "app" and row["status"] == "ready" and row["settings"]["role"] == "gateway"
    )
    code, out, _ = cli("template", "list")
    assert out.splitlines()[0].split()[:3] == ["NAME", "ROLE", "CPUS"] and "gateway" in out
    code, out, _ = cli("template", "info", "app", "--json")
    info = json.loads(out)
    [rev] = info["revisions"]
    assert rev["current"] and set(rev["checksums"]) == {
        "kernel", "initramfs.cpio", "rootfs.ext4", "revision.json",
    } and rev["size"] > 0  # fmt: skip
    code, out, _ = cli("template", "info", "app")
    assert "(current)" in out and "sha256:" in out and "role:" in out
    code, out, _ = cli("template", "edit", "app", "--mem", "2048")
    assert code == 0
    code, out, _ = cli("template", "list")
    assert "needs rebuild" in out
    code, out, _ = cli("template", "verify", "app")
    assert code == 0 and "ok" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["template", "info", "ghost"], "no template named 'ghost'"),
        (["template", "build", "ghost"], "no template named 'ghost'"),
        (["template", "delete", "ghost"], "no template named 'ghost'"),
        (["template", "verify", "ghost"], "no template named 'ghost'"),
        (["template", "create", "app", "--flake", "{flake}"], "already exists"),
        (["template", "create", "Bad_Name", "--flake", "{flake}"], "invalid template name"),
        (["template", "create", "x", "--flake", "{flake}", "--cpus", "0"], "--cpus"),
        (["template", "create", "x", "--flake", "{flake}", "--role", "boss"], "--role"),
        (["template", "create", "x", "--flake", "/nonexistent"], "no such file"),
        (["template", "edit", "app", "--cpus", "0"], "--cpus"),
        (["template", "edit", "app", "--mem", "1"], "--mem"),
        (["template", "edit", "app", "--data-disk", "-1"], "--data-disk"),
        (["template", "edit", "app"], "nothing to change"),
        (
            ["template", "create-multi", "web", "--flake", "{flake}", "--roles", "worker,x"],
            "--role",
        ),
        (["template", "verify", "app", "--revision", "r9"], "no revision r9"),
        (["up", "--template", "ghost", "--name", "vm"], "no template named 'ghost'"),
        (["template", "pull", "app"], "not in the registry"),
    ],
)
def test_bad_input_one_line_error_nothing_changed(
    cli: Callable[..., tuple[int, str, str]],
    make_project: MakeProject,
    fake_builder: FakeBuilder,
    args: list[str],
    needle: str,
) -> None:
    flake = str(make_project())
    assert cli("template", "create", "app", "--flake", flake)[0] == 0
    assert cli("template", "build", "app")[0] == 0
    before = _tree()
    code, _, err = cli(*[a.replace("{flake}", flake) for a in args])
    assert code != 0
    first = err.splitlines()[0]
    assert first.startswith("mvmctl: error: ") and needle in first, err
    assert "Traceback" not in err and len(err.splitlines()) <= 2  # the error + an optional hint
    assert _tree() == before


def test_half_set_registry_env_is_a_config_error(
    cli: Callable[..., tuple[int, str, str]],
    make_project: MakeProject,
    fake_builder: FakeBuilder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli("template", "create", "app", "--flake", str(make_project()))
    cli("template", "build", "app")
    monkeypatch.setenv("MVM_TEMPLATE_REGISTRY_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("MVM_TEMPLATE_REGISTRY_SECRET_ACCESS_KEY", "hunter2-secret")
    for verb in ("push", "pull"):
        code, out, err = cli("template", verb, "app")
        assert code == 2 and "configuration incomplete" in err and "BUCKET" in err
        assert "hunter2" not in out + err


def test_push_pull_through_the_default_local_registry(
    cli: Callable[..., tuple[int, str, str]],
    make_project: MakeProject,
    fake_builder: FakeBuilder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MVM_TEMPLATE_REGISTRY", f"file://{tmp_path}/reg")
    cli("template", "create", "app", "--flake", str(make_project()))
    cli("template", "build", "app")
    code, out, _ = cli("template", "push", "app")
    assert code == 0 and "pushed r1-" in out
    code, out, _ = cli("template", "push", "app")
    assert "nothing transferred" in out
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "home2"))
    code, out, _ = cli("template", "pull", "app")
    assert code == 0 and "pulled r1-" in out and "verified" in out
    code, out, _ = cli("template", "pull", "app")
    assert "nothing transferred" in out


def test_init_scaffolds_a_project_that_loads(
    cli: Callable[..., tuple[int, str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("template", "init", "my-service", "--local")
    assert code == 0
    d = tmp_path / "my-service"
    assert sorted(p.name for p in d.iterdir()) == [".gitignore", "README.md", "mvm.toml"]
    assert load_project(d).spec.name == "my-service"
    assert load_project(d, profile="debug").spec.accessible
    code, out, _ = cli("template", "list", "--json")
    assert json.loads(out)[0]["settings"]["flake"] == str(d)
    code, _, err = cli("template", "init", "my-service", "--local")
    assert code != 0 and "already exists" in err
    code, _, err = cli("template", "init", "other", "--dir", str(d))
    assert code != 0 and "not empty" in err
    assert not (tmp_path / "other").exists()


def test_create_multi_and_delete(
    cli: Callable[..., tuple[int, str, str]], make_project: MakeProject
) -> None:
    flake = str(make_project())
    code, out, _ = cli("template", "create-multi", "my-app", "--flake", flake,
                       "--roles", "worker,gateway")  # fmt: skip
    assert code == 0 and "my-app-worker" in out and "my-app-gateway" in out
    assert cli("template", "delete", "my-app-worker")[0] == 0
    code, out, _ = cli("template", "list", "--json")
    assert [t["name"] for t in json.loads(out)] == ["my-app-gateway"]
