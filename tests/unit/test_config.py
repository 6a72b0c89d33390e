"""mvm.toml validation: every error names the file and key; defaults follow the seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvm.config import load_project
from mvm.errors import ConfigError


def project(tmp_path: Path, body: str) -> Path:
    (tmp_path / "mvm.toml").write_text(body)
    return tmp_path


def test_command_entrypoint_is_sealed_with_uid_1000(tmp_path: Path) -> None:
    spec = load_project(project(tmp_path, 'name="a"\n[entrypoint]\ncommand=["/bin/true"]\n')).spec
    assert spec.entrypoint.kind == "command"
    assert spec.sealed and not spec.accessible
    assert (spec.uids.agent, spec.uids.entrypoint) == (990, 1000)
    assert spec.uids.rootless


def test_shell_entrypoint_is_accessible_root(tmp_path: Path) -> None:
    spec = load_project(project(tmp_path, 'name="a"\n[entrypoint]\nshell="/bin/sh"\n')).spec
    assert spec.accessible and spec.uids.entrypoint == 0


def test_dev_override_and_uids(tmp_path: Path) -> None:
    body = 'name="a"\ndev=true\n[entrypoint]\ncommand=["/x"]\n[uids]\nagent=5000\nentrypoint=1000\n'
    spec = load_project(project(tmp_path, body)).spec
    assert spec.accessible and spec.uids.agent == 5000 and spec.uids.entrypoint == 1000


def test_services_and_files(tmp_path: Path) -> None:
    body = """name = "a"
[entrypoint.services.web]
command = ["/bin/web"]
restart = "always"
[services.log]
command = ["/bin/log"]
[files."/etc/app.conf"]
content = "x=1"
mode = "0600"
"""
    spec = load_project(project(tmp_path, body)).spec
    assert spec.entrypoint.services[0].restart == "always"
    assert spec.services[0].restart == "on-failure"
    assert spec.files[0].mode == 0o600


def test_profile_overrides(tmp_path: Path) -> None:
    body = 'name="a"\nvcpus=1\n[entrypoint]\ncommand=["/x"]\n[profiles.big]\nvcpus=4\n'
    assert load_project(project(tmp_path, body), profile="big").spec.vcpus == 4
    with pytest.raises(ConfigError, match="no profile 'nope'"):
        load_project(project(tmp_path, body), profile="nope")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            'name="a"\n[entrypoint]\nshell="/bin/sh"\ncommand=["/x"]\n',
            "entrypoint: needs exactly one",
        ),
        ('name="a"\n[entrypoint]\n', "entrypoint: needs exactly one"),
        ('name="a"\n', "entrypoint: is required"),
        ('[entrypoint]\ncommand=["/x"]\n', "name: is required"),
        ('name="../x"\n[entrypoint]\ncommand=["/x"]\n', "name: '../x' is not allowed"),
        ('name="a"\nbogus=1\n[entrypoint]\ncommand=["/x"]\n', "bogus: unknown key"),
        ('name="a"\nvcpus=0\n[entrypoint]\ncommand=["/x"]\n', "vcpus: must be between"),
        (
            'name="a"\nmemory_mib="big"\n[entrypoint]\ncommand=["/x"]\n',
            "memory_mib: must be an integer",
        ),
        ('name="a"\n[entrypoint]\ncommand=[]\n', "entrypoint.command: must be a non-empty list"),
        (
            'name="a"\n[entrypoint]\ncommand=["/x"]\n[services.s]\ncommand=["/y"]\nrestart="sometimes"\n',
            "services.s.restart: must be one of",
        ),
        ('name="a"\npackages=["Bad Name"]\n[entrypoint]\ncommand=["/x"]\n', "packages: 'Bad Name'"),
        (
            'name="a"\n[entrypoint]\ncommand=["/x"]\n[files."rel/path"]\ncontent="x"\n',
            "must be an absolute guest path",
        ),
        ('name="a"\n[entrypoint]\ncommand=["/x"]\n[uids]\nroot=0\n', "uids.root: unknown key"),
        ('name="a"\nhypervisor="vbox"\n[entrypoint]\ncommand=["/x"]\n', "hypervisor: 'vbox'"),
        (
            'name="a"\ncopy=[{from="missing/", to="/opt"}]\n[entrypoint]\ncommand=["/x"]\n',
            "copy[0].from:",
        ),
        ('name = "a\n', "not valid TOML"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_project(project(tmp_path, body))
    assert str(tmp_path / "mvm.toml") in str(err.value)
    assert needle in str(err.value)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_project(tmp_path)
