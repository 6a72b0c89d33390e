"""One snapshot template for the SDK and MCP tests, as a pytest plugin
(``pytest_plugins = ["tests.integration.sdk_support"]``: fixtures ``tmpl_home``,
``home``).  Restores are ~1 s, so many sandboxes per module stay cheap under TCG."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import mvmctl, ok, write_project

TEMPLATE = "sdkbox"
PROJECT = """name = "sdkbox"
dev = true
[uids]
entrypoint = 1000
[entrypoint.services.idle]
command = ["/bin/sh", "-c", "mkdir -p /tmp/work; exec sleep 1000000"]
"""


def template_home(factory: pytest.TempPathFactory, tag: str) -> Iterator[Path]:
    """An MVM_HOME holding template ``sdkbox`` built with --snapshot; every VM left
    in it is removed at the end."""
    home = factory.mktemp(f"{tag}-home")
    env = {"MVM_HOME": str(home)}
    proj = write_project(factory.mktemp(tag) / "p", PROJECT)
    ok("template", "create", TEMPLATE, "--flake", str(proj), env=env)
    ok("template", "build", TEMPLATE, "--snapshot", env=env, timeout=1800)
    yield home
    down_all(home)


def down_all(home: Path) -> None:
    vms = home / "vms"
    for d in vms.glob("*") if vms.exists() else []:
        if d.is_dir():
            mvmctl("down", d.name, env={"MVM_HOME": str(home)})


@pytest.fixture(scope="module")
def tmpl_home(tmp_path_factory: pytest.TempPathFactory,
              request: pytest.FixtureRequest) -> Iterator[Path]:  # fmt: skip
    """One template home per test module that imports this fixture."""
    yield from template_home(tmp_path_factory, request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture
def home(tmpl_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """MVM_HOME is the module's template home; the test's VMs are removed after it."""
    monkeypatch.setenv("MVM_HOME", str(tmpl_home))
    yield tmpl_home
    down_all(tmpl_home)
