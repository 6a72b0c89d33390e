"""Test isolation: every test gets its own MVM_HOME; the download cache
(kernel, .debs) is shared so the kernel is fetched once per machine."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MVMCTL = str(Path(sys.executable).parent / "mvmctl")
# the one shared download cache (the CLI's default), so the kernel is fetched once per machine
SHARED_CACHE = os.environ.get("MVM_CACHE") or str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mvm"
)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "mvm-home"))
    monkeypatch.setenv("MVM_CACHE", SHARED_CACHE)
    for var in list(os.environ):
        if var.startswith("MVM_TEMPLATE_REGISTRY") or var == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(var, raising=False)
    yield


KERNEL_BUILD_TIMEOUT = 3 * 3600  # a fresh machine builds the mvm kernel once (≈4 min idle)


@pytest.fixture(scope="session", autouse=True)
def _mvm_kernel(request: pytest.FixtureRequest) -> None:
    """Before the first VM test: the default kernel (kernel = "mvm") is in the shared
    cache, built once per machine (a no-op when cached), so no test's own timeout has
    to cover a kernel build and concurrent test runs wait on one build."""
    if not any("integration" in item.nodeid.split("/") for item in request.session.items):
        return
    r = subprocess.run([MVMCTL, "kernel", "build"], env=dict(os.environ, MVM_CACHE=SHARED_CACHE),
                       capture_output=True, text=True, timeout=KERNEL_BUILD_TIMEOUT)  # fmt: skip
    assert r.returncode == 0, f"mvmctl kernel build: {r.stdout}{r.stderr}"


def mvmctl(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
           input: bytes | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run the real CLI as a subprocess (as users do) and capture its output."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [MVMCTL, *args], capture_output=True, text=True, timeout=timeout, env=full_env,
        input=input.decode() if input is not None else None,
    )  # fmt: skip


def ok(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    r = mvmctl(*args, env=env, timeout=timeout)
    assert r.returncode == 0, f"mvmctl {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout


def fails(*args: str, env: dict[str, str] | None = None) -> str:
    r = mvmctl(*args, env=env)
    assert r.returncode != 0, f"mvmctl {' '.join(args)} should fail: {r.stdout}"
    assert r.stderr.startswith("mvmctl: error: ") and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def write_project(root: Path, toml: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mvm.toml").write_text(toml)
    return root
