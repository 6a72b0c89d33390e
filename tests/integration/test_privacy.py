"""Everything under MVM_HOME is private to its owner: after a build, a run with
config/secrets/data drives and credentials, and a template pushed to and pulled
from a registry, no file or directory grants group or other any access."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import ok, write_project

pytestmark = pytest.mark.integration

PROJECT = """name = "priv"
[entrypoint]
command = ["/bin/sh", "-c", "echo priv-ok; ls /mnt/secrets > /dev/null; exit 0"]
[files."/etc/app.secret"]
content = "baked-in"
mode = "0600"
"""


def test_nothing_under_mvm_home_is_readable_by_others(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"MVM_HOME": str(home), "MVM_TEMPLATE_REGISTRY": str(tmp_path / "registry")}
    proj = write_project(tmp_path / "p", PROJECT)
    for kind in ("config", "secrets", "data"):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "f.txt").write_text(kind)
    ok("build", str(proj), env=env, timeout=600)
    ok("run", "--attached", str(proj), "--name", "r1",
       "-v", f"{tmp_path / 'config'}:/mnt/config", "-v", f"{tmp_path / 'secrets'}:/mnt/secrets",
       "-v", f"{tmp_path / 'data'}:/data:16M", "--credential", "K=v", env=env)  # fmt: skip
    ok("template", "create", "tpriv", "--flake", str(proj), env=env)
    ok("template", "build", "tpriv", env=env, timeout=600)
    ok("template", "push", "tpriv", env=env, timeout=300)
    ok("template", "delete", "tpriv", env=env)
    ok("template", "pull", "tpriv", env=env, timeout=300)
    leaky = []
    for dirpath, dirs, files in os.walk(home):
        for n in [*dirs, *files]:
            p = Path(dirpath) / n
            st = p.lstat()
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                leaky.append(f"{oct(stat.S_IMODE(st.st_mode))} {p.relative_to(home)}")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert leaky == [], leaky
