"""Fakes for fast template tests: a builder that writes tiny artefacts instead of
a kernel and an ext4 image (the seam is ``mvm.image.builder.build``), and
small projects.  Load with ``pytest_plugins = ["tests.unit.template_fakes"]``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mvm import paths
from mvm.config.schema import GuestSpec, Project
from mvm.image.builder import Image, sha256_file
from mvm.image.meta import ARTEFACTS

TOML = """name = "{name}"
vcpus = 1
memory_mib = 256
[entrypoint]
command = ["/bin/echo", "{word}"]
[profiles.big]
memory_mib = 512
"""


@dataclass
class FakeBuilder:
    """Counts builds; ``reproducible = False`` makes ``force`` produce new bytes."""

    calls: int = 0
    reproducible: bool = True

    def __call__(self, project: Project, *, force: bool = False) -> Image:
        digest = hashlib.sha256(
            project.manifest.read_bytes() + (project.profile or "").encode()
        ).hexdigest()
        dest = paths.images_dir() / digest
        if (dest / "revision.json").is_file() and not force:
            return Image.load(dest)
        self.calls += 1
        salt = "" if self.reproducible else f"-{self.calls}"
        tmp = paths.images_dir() / f".tmp-{digest}"
        tmp.mkdir(parents=True, exist_ok=True)
        for a in ARTEFACTS:
            (tmp / a).write_bytes(f"{a}:{digest}{salt}\n".encode() * 64)
        revision = fake_revision(project.spec, digest, tmp)
        (tmp / "revision.json").write_text(json.dumps(revision))
        if dest.exists():
            import shutil

            shutil.rmtree(dest)
        tmp.rename(dest)
        return Image.load(dest)


def fake_revision(spec: GuestSpec, digest: str, out: Path) -> dict[str, Any]:
    """Every key the real builder writes (``image/builder.py:_revision``), so the
    fake's images pass the same ``ImageMeta`` validation as real ones."""
    return {
        "schema": 1,
        "name": spec.name,
        "accessible": spec.accessible,
        "sealed": spec.sealed,
        "entrypointKind": spec.entrypoint.kind,
        "hypervisor": spec.hypervisor,
        "uids": {"agent": spec.uids.agent, "entrypoint": spec.uids.entrypoint},
        "rootlessEntrypoint": spec.uids.rootless,
        "agentBinary": "stub",
        "guestFeatures": ["drives", "credentials"],
        "expectedBootMs": 300,
        "expectedBootMsByAccel": {"kvm": 300, "tcg": 2000},
        "inputHash": digest,
        "kernel": {"version": "6.1.0-fake", "identity": "fake:kernel"},
        "packages": list(spec.packages),
        "defaults": {"vcpus": spec.vcpus, "memory_mib": spec.memory_mib},
        "checksums": {a: sha256_file(out / a) for a in ARTEFACTS},
        "sizes": {a: (out / a).stat().st_size for a in ARTEFACTS},
        "createdAt": "2026-12-03T12:00:00Z",
        "buildSeconds": 0.01,
        "mvmVersion": "0.1.0",
    }


@pytest.fixture
def fake_builder(monkeypatch: pytest.MonkeyPatch) -> FakeBuilder:
    fake = FakeBuilder()
    monkeypatch.setattr("mvm.image.builder.build", fake)
    return fake


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """``make_project("app", word="hi")`` → a directory with a valid mvm.toml."""

    def make(name: str = "app", word: str = "hello", dirname: str | None = None) -> Path:
        root = tmp_path / "projects" / (dirname or name)
        root.mkdir(parents=True, exist_ok=True)
        (root / "mvm.toml").write_text(TOML.format(name=name, word=word))
        return root

    return make
