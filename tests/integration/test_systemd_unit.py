"""Host services: the mvm@VM.service unit is valid for systemd (``systemd-analyze
verify``), and its ExecStart, run the way systemd runs it (the unit's
Environment=, ``$CREDENTIALS_DIRECTORY`` filled as LoadCredential= does, SIGTERM to
stop), boots the VM attached, forwards the host credential to the guest and stops
cleanly with the declared success status."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import fails, ok, write_project

pytestmark = pytest.mark.integration

TOML = """\
name = "svc"
[entrypoint]
command = ["/bin/sh", "-c", "for c in DB_PASS API_KEY; do echo \\"cred $c $(sha256sum < /run/credentials/@system/$c | cut -d' ' -f1)\\"; done; exec sleep 3600"]

[vars.generators.app]
files.api-key = { secret = true }
runtime_inputs = ["coreutils"]
script = "head -c 16 /dev/urandom | base64 > \\"$out/api-key\\""

[credentials]
API_KEY = { var = "app/api-key" }
"""

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze (package systemd) not installed")  # fmt: skip


def parse_unit(text: str) -> tuple[dict[str, str], list[str], list[str]]:
    env: dict[str, str] = {}
    exec_start: list[str] = []
    creds: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "Environment":
            k, _, v = shlex.split(value)[0].partition("=")
            env[k] = v
        elif key == "ExecStart":
            exec_start = shlex.split(value)
        elif key == "LoadCredential":
            creds.append(value)
    return env, exec_start, creds


@pytest.fixture
def defined(tmp_path: Path) -> tuple[Path, Path]:
    project = write_project(tmp_path / "p", TOML)
    secret = tmp_path / "db.pass"
    secret.write_bytes(b"db-secret-value")
    secret.chmod(0o600)
    ok("create", "svc", "--flake", str(project), timeout=300)
    ok("vars", "generate", "svc")
    return project, secret


@needs_analyze
def test_unit_verifies_and_names_the_host_secret(defined: tuple[Path, Path],
                                                 tmp_path: Path) -> None:  # fmt: skip
    _project, secret = defined
    for user in ([], ["--user"]):
        text = ok("systemd", "unit", "svc", "--load-credential", f"DB_PASS:{secret}", *user)
        assert "db-secret-value" not in text
        env, exec_start, creds = parse_unit(text)
        assert exec_start[1:] == ["start", "--attached", "svc"]
        assert env["MVM_HOME"] == os.environ["MVM_HOME"]
        assert creds == [f"DB_PASS:{secret}"]
        assert "KillMode=mixed" in text and "SuccessExitStatus=130" in text
        assert ("WantedBy=default.target" in text) == bool(user)
        unit = tmp_path / "mvm@svc.service"
        unit.write_text(text)
        r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0 and "ignoring" not in r.stderr, r.stderr
    out = ok("systemd", "install", "svc", "--dir", str(tmp_path / "units"))
    installed = tmp_path / "units" / "mvm@svc.service"
    assert str(installed) in out and "enable --now mvm@svc.service" in out
    assert installed.stat().st_mode & 0o777 == 0o644


def test_exec_start_runs_forwards_credentials_and_stops_cleanly(
    defined: tuple[Path, Path], tmp_path: Path
) -> None:
    _project, secret = defined
    env, exec_start, creds = parse_unit(
        ok("systemd", "unit", "svc", "--load-credential", f"DB_PASS:{secret}")
    )
    # what systemd does for LoadCredential=: a private directory with a copy of each file
    creddir = tmp_path / "credentials"
    creddir.mkdir(mode=0o700)
    for c in creds:
        name, _, path = c.partition(":")
        (creddir / name).write_bytes(Path(path).read_bytes())
    child_env = {"PATH": os.environ["PATH"], "CREDENTIALS_DIRECTORY": str(creddir), **env}
    proc = subprocess.Popen(exec_start, env=child_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while len(seen) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            parts = line.split()
            if len(parts) == 3 and parts[0] == "cred":
                seen[parts[1]] = parts[2]
        assert seen.get("DB_PASS") == hashlib.sha256(b"db-secret-value").hexdigest(), seen
        api = subprocess.run([exec_start[0], "vars", "get", "svc",
                              "app/api-key", "--reveal"], capture_output=True, check=True,
                             timeout=60).stdout  # fmt: skip
        assert seen.get("API_KEY") == hashlib.sha256(api).hexdigest()
        rows = {r["name"]: r for r in json.loads(ok("ls", "--json"))}
        assert rows["svc"]["state"] == "running" and rows["svc"]["mode"] == "attached"
        proc.send_signal(signal.SIGTERM)  # systemctl stop, with KillMode=mixed
        rc = proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert rc == 130  # SuccessExitStatus=130
    rows = {r["name"]: r for r in json.loads(ok("ls", "--json"))}
    assert rows["svc"]["state"] in ("stopped", "exited") and rows["svc"]["pid"] is None
    ok("rm", "svc")


def test_unit_refuses_what_it_cannot_write_safely(defined: tuple[Path, Path]) -> None:
    assert "expected NAME:PATH" in fails("systemd", "unit", "svc", "--load-credential", "nocolon")
    assert "invalid credential name" in fails("systemd", "unit", "svc", "--load-credential",
                                              "BAD/NAME:/x")  # fmt: skip
    assert "cannot be written into a unit file" in fails(
        "systemd", "unit", "svc", "--load-credential", 'X:/tmp/a"b'
    )
    assert "VM 'ghost' is not defined" in fails("systemd", "unit", "ghost")
