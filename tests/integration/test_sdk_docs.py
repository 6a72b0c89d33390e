"""docs/sdk.md's examples run as written against real VMs: its first ```toml
block is the template (built with --snapshot once), every ```python block runs
in a fresh interpreter and must exit 0 and leave no VM behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, ok, write_project
from tests.integration.sdk_support import down_all

pytestmark = pytest.mark.integration

DOC = REPO / "docs" / "sdk.md"
TOML = re.compile(r"^```toml\n(.*?)^```", re.DOTALL | re.MULTILINE)
PYTHON = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[str]:
    return PYTHON.findall(DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def docs_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("sdk-docs-home")
    env = {"MVM_HOME": str(home)}
    project = TOML.findall(DOC.read_text(encoding="utf-8"))[0]
    name = re.search(r'^name = "([a-z0-9-]+)"', project, re.MULTILINE)
    assert name is not None
    proj = write_project(tmp_path_factory.mktemp("sdk-docs") / name.group(1), project)
    ok("template", "create", name.group(1), "--flake", str(proj), env=env)
    ok("template", "build", name.group(1), "--snapshot", env=env, timeout=1800)
    yield home
    down_all(home)


def test_the_doc_has_python_examples() -> None:
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("n", range(len(python_blocks())))
def test_python_example_runs(docs_home: Path, tmp_path: Path, n: int) -> None:
    script = tmp_path / f"example{n}.py"
    script.write_text(python_blocks()[n])
    env = dict(os.environ, MVM_HOME=str(docs_home))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=900, env=env, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, f"docs/sdk.md python block {n}:\n{r.stdout}{r.stderr}"
    vms = docs_home / "vms"
    left = [d.name for d in vms.iterdir() if d.is_dir()] if vms.exists() else []
    assert left == [], f"example {n} left VMs behind: {left}"
