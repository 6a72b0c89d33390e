"""Every mvm.toml the documentation shows is valid: each ```toml block in README.md
and docs/*.md goes through ``parse_spec``, and every examples/*/mvm.toml through
``load_project``.  A block that is deliberately partial starts with a line
``# fragment``; it only has to be valid TOML.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from mvm.config import load_project, parse_spec
from tests.conftest import REPO

BLOCK = re.compile(r"^```toml\n(.*?)^```", re.DOTALL | re.MULTILINE)
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def toml_blocks() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for n, m in enumerate(BLOCK.finditer(doc.read_text(encoding="utf-8"))):
            out.append((f"{doc.name}#{n}", m.group(1)))
    return out


def test_the_readme_shows_a_project() -> None:
    assert any(where.startswith("README.md") for where, _ in toml_blocks())


@pytest.mark.parametrize(("where", "block"), toml_blocks(), ids=[w for w, _ in toml_blocks()])
def test_toml_blocks_validate(tmp_path: Path, where: str, block: str) -> None:
    raw = tomllib.loads(block)
    if block.startswith("# fragment"):
        return
    for c in raw.get("copy", []):  # the project's own files: present in a real project
        (tmp_path / c["from"]).mkdir(parents=True, exist_ok=True)
    image = raw.get("image", "")
    if image.startswith(("oci-archive:", "docker-archive:")):  # an image archive, likewise
        (tmp_path / image.split(":", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / image.split(":", 1)[1]).write_bytes(b"")
    elif image.startswith("oci:"):
        (tmp_path / image.split(":")[1]).mkdir(parents=True, exist_ok=True)
    spec = parse_spec(raw, tmp_path / "mvm.toml")
    assert spec.name, where


@pytest.mark.parametrize("example", sorted(p.parent.name for p in REPO.glob("examples/*/mvm.toml")))
def test_examples_validate(example: str) -> None:
    assert load_project(REPO / "examples" / example).spec.name == example
