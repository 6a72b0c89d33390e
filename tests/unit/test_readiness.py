"""Service readiness in mvm.toml (`ready = { tcp = PORT } | { command = [...] }`,
optional `timeout`): validation names the key, and the image carries what the
guest agent evaluates."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvm.config import load_project
from mvm.config.schema import Readiness
from mvm.errors import ConfigError
from mvm.image.render import render

HEAD = 'name = "a"\n[entrypoint.services.web]\ncommand = ["/bin/web"]\n'


def load(tmp_path: Path, ready: str, extra: str = "") -> object:
    (tmp_path / "mvm.toml").write_text(HEAD + f"ready = {ready}\n" + extra)
    return load_project(tmp_path).spec


def test_tcp_and_command_readiness(tmp_path: Path) -> None:
    spec = load(tmp_path, "{ tcp = 8080 }",
                '[services.side]\ncommand = ["/bin/s"]\nready = { command = ["/bin/ok", "-q"], '
                "timeout = 2.5 }\n")  # fmt: skip
    web, side = spec.entrypoint.services[0], spec.services[0]  # type: ignore[attr-defined]
    assert web.ready == Readiness(tcp=8080, timeout=60.0)
    assert side.ready == Readiness(command=("/bin/ok", "-q"), timeout=2.5)
    files = {f.path: f for f in render(spec)}  # type: ignore[arg-type]
    assert files["/etc/mvm/ready/web"].content == b"tcp 8080 60\n"
    assert files["/etc/mvm/ready/side"].content == b"command 2.5\n"
    launcher = files["/etc/mvm/run/ready-side"]
    assert launcher.mode == 0o755 and b"exec /bin/ok -q" in launcher.content
    assert "/etc/mvm/run/ready-web" not in files


@pytest.mark.parametrize(("ready", "needle"), [
    ("{ tcp = 0 }", "ready.tcp: must be between 1 and 65535"),
    ("{ tcp = 70000 }", "ready.tcp: must be between"),
    ('{ tcp = "80" }', "ready.tcp: must be an integer"),
    ("{ tcp = 80, command = ['/x'] }", "needs exactly one of tcp"),
    ("{ timeout = 3 }", "needs exactly one of tcp"),
    ("{ command = [] }", "ready.command: must be a non-empty list"),
    ("{ tcp = 80, timeout = 0 }", "ready.timeout: must be more than 0"),
    ("{ tcp = 80, timeout = 99999 }", "ready.timeout: must be more than 0 and at most 3600"),
    ("{ tcp = 80, timeout = true }", "ready.timeout: must be a number"),
    ("{ tcp = 80, http = '/' }", "ready.http: unknown key"),
    ("8080", "ready: must be a table"),
])  # fmt: skip
def test_bad_readiness_names_the_key(tmp_path: Path, ready: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, ready)
    msg = str(err.value)
    assert "mvm.toml" in msg and needle in msg, msg
