"""Generated vars in real guests: the seeds' API_KEY flow end to end.

One project (one image per MVM_HOME), booted with ``run --attached``: the
guest prints each var credential's size and sha256, which the test compares
with ``vars get --reveal`` on the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MVMCTL, mvmctl, write_project

pytestmark = pytest.mark.integration

TOML = """\
name = "vt"
[entrypoint]
command = ["/bin/sh", "-c", "for c in API_KEY PUBLIC_ID; do f=/run/credentials/@system/$c; echo \\"cred $c $(wc -c < $f) $(sha256sum < $f | cut -d' ' -f1) $(stat -c %a $f)\\"; done"]

[vars.generators.app-secrets]
files.api-key = { secret = true, mode = "0400" }
files.public-id = { secret = false }
runtime_inputs = ["openssl", "coreutils"]
script = "openssl rand -base64 32 | tr -d '\\\\n' > \\"$out/api-key\\"; echo id-1 > \\"$out/public-id\\""

[credentials]
API_KEY = { var = "app-secrets/api-key" }
PUBLIC_ID = { var = "app-secrets/public-id" }
"""
FAILING = TOML.replace(
    'echo id-1 > \\"$out/public-id\\""', 'echo id-1 > \\"$out/public-id\\"; exit 7"'
)


def env(home: Path) -> dict[str, str]:
    return {"MVM_HOME": str(home)}


def boot(project: Path, home: Path) -> dict[str, tuple[int, str, str]]:
    r = mvmctl("run", "--attached", str(project), env=env(home), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "cred":
            out[parts[1]] = (int(parts[2]), parts[3], parts[4])
    assert set(out) == {"API_KEY", "PUBLIC_ID"}, r.stdout
    return out


def reveal(home: Path, var: str) -> bytes:
    r = subprocess.run([MVMCTL, "vars", "get", "vt", var, "--reveal"], capture_output=True,
                       env=dict(os.environ, **env(home)), timeout=60, check=True)  # fmt: skip
    return r.stdout


def leaks(home: Path, secret: bytes) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file() and not p.is_symlink()
            and secret in p.read_bytes()]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("vars")
    project = write_project(root / "p", TOML)
    failing = write_project(root / "failing", FAILING)
    return project, failing, root / "home"


def test_missing_vars_fail_before_boot(world: tuple[Path, Path, Path]) -> None:
    project, _failing, home = world
    r = mvmctl("run", "--attached", str(project), env=env(home), timeout=300)
    assert r.returncode != 0
    assert r.stderr.startswith("mvmctl: error: ") and "Traceback" not in r.stderr
    assert "Run 'mvmctl vars generate vt' first" in r.stderr
    assert not (home / "vms" / "vt").exists()


def test_generated_secret_reaches_the_guest_and_is_encrypted_at_rest(
    world: tuple[Path, Path, Path],
) -> None:
    project, _failing, home = world
    r = mvmctl("vars", "generate", "vt", "--flake", str(project), env=env(home))
    assert r.returncode == 0 and "app-secrets: generated" in r.stdout, r.stderr
    key = reveal(home, "app-secrets/api-key")
    assert len(key) == 44
    got = boot(project, home)
    assert got["API_KEY"] == (44, hashlib.sha256(key).hexdigest(), "400")
    assert got["PUBLIC_ID"][:2] == (5, hashlib.sha256(b"id-1\n").hexdigest())
    assert leaks(home, key) == []  # the store, the run directory, logs: nowhere in plaintext
    status = json.loads(mvmctl("status", "vt", "--json", env=env(home)).stdout)
    assert status["settings"]["credentials"] == "var"
    assert sorted(status["credentials"]) == ["API_KEY", "PUBLIC_ID"]
    assert (home / "vars/vt/app-secrets/public-id").read_bytes() == b"id-1\n"


def test_failing_regeneration_keeps_the_old_values(world: tuple[Path, Path, Path]) -> None:
    _project, failing, home = world
    before = reveal(home, "app-secrets/api-key")
    r = mvmctl("vars", "generate", "vt", "--flake", str(failing), "--regenerate", env=env(home))
    assert r.returncode != 0 and "exit status 7" in r.stderr and "Traceback" not in r.stderr
    assert reveal(home, "app-secrets/api-key") == before


def test_regenerate_changes_what_the_guest_sees(world: tuple[Path, Path, Path]) -> None:
    project, _failing, home = world
    before = reveal(home, "app-secrets/api-key")
    r = mvmctl("vars", "generate", "vt", "--flake", str(project), "--regenerate", env=env(home))
    assert r.returncode == 0 and "regenerated" in r.stdout, r.stderr
    after = reveal(home, "app-secrets/api-key")
    assert after != before and len(after) == 44
    assert boot(project, home)["API_KEY"][1] == hashlib.sha256(after).hexdigest()
    assert leaks(home, before) == [] and leaks(home, after) == []


def test_export_import_to_a_second_home(world: tuple[Path, Path, Path], tmp_path: Path) -> None:
    project, _failing, home = world
    key = reveal(home, "app-secrets/api-key")
    home2 = tmp_path / "home2"
    base = dict(os.environ)
    recipient = subprocess.run([MVMCTL, "vars", "recipient"], capture_output=True, text=True,
                               env=dict(base, MVM_HOME=str(home2)), timeout=60,
                               check=True).stdout.strip()  # fmt: skip
    assert recipient.startswith("age1")
    bundle = subprocess.run([MVMCTL, "vars", "export", "vt", "--recipient", recipient],
                            capture_output=True, env=dict(base, MVM_HOME=str(home)), timeout=60,
                            check=True).stdout  # fmt: skip
    assert key not in bundle
    imp = subprocess.run([MVMCTL, "vars", "import", "vt"], input=bundle, capture_output=True,
                         env=dict(base, MVM_HOME=str(home2)), timeout=60)  # fmt: skip
    assert imp.returncode == 0, imp.stderr
    assert boot(project, home2)["API_KEY"][1] == hashlib.sha256(key).hexdigest()
    assert leaks(home2, key) == []


def test_template_vm_gets_its_own_vars(world: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A template records the var credentials (names only); the VM started from it
    reads them from its own store, under its own name."""
    project, _failing, _home = world
    home = tmp_path / "home-t"
    r = mvmctl("template", "create", "vtt", "--flake", str(project), env=env(home), timeout=300)
    assert r.returncode == 0, r.stderr
    r = mvmctl("template", "build", "vtt", env=env(home), timeout=300)
    assert r.returncode == 0, r.stderr
    r = mvmctl("up", "--template", "vtt", "--name", "t1", env=env(home), timeout=300)
    assert r.returncode != 0 and "Run 'mvmctl vars generate t1' first" in r.stderr
    r = mvmctl("vars", "generate", "t1", "--flake", str(project), env=env(home))
    assert r.returncode == 0, r.stderr
    r = mvmctl("up", "--template", "vtt", "--name", "t1", env=env(home), timeout=300)
    assert r.returncode == 0, r.stderr
    try:
        r = mvmctl("wait", "t1", "--timeout", "120", env=env(home), timeout=180)
        log = mvmctl("logs", "t1", env=env(home)).stdout
        got = subprocess.run([MVMCTL, "vars", "get", "t1", "app-secrets/api-key", "--reveal"],
                             capture_output=True, env=dict(os.environ, **env(home)), timeout=60,
                             check=True).stdout  # fmt: skip
        assert f"cred API_KEY 44 {hashlib.sha256(got).hexdigest()} 400" in log, log[-2000:]
    finally:
        mvmctl("down", "t1", env=env(home))
