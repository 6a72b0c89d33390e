"""Network settings resolved once: mvm.toml [network] / [secrets.KEY], CLI over
mvm.toml, bad input as one-line NetworkErrors (nothing started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvm.config import load_project
from mvm.errors import ConfigError, NetworkError
from mvm.runtime.config import RunConfig
from mvm.runtime.resolve import NetworkDecl, RuntimeDefaults, resolve_network

BASE = 'name = "n"\n[entrypoint]\ncommand = ["/bin/true"]\n'


def _defaults(tmp_path: Path, extra: str) -> RuntimeDefaults:
    (tmp_path / "mvm.toml").write_text(BASE + extra)
    return RuntimeDefaults.from_spec(load_project(tmp_path).spec)


def test_toml_network_table_and_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    (tmp_path / "tok").write_text("from-file\n")
    d = _defaults(
        tmp_path,
        '[network]\npreset = "agent"\nallow = ["api.test:8443"]\n'
        'add_host = ["api.test:127.0.0.1"]\n'
        '[secrets.OPENAI_API_KEY]\nhost = "api.openai.com"\n'
        '[secrets.TOK]\nhosts = ["api.test"]\nheader = "x-api-key"\nfile = "tok"\n',
    )
    sources: dict[str, str] = {}
    plan = resolve_network(RunConfig(), d, "cli", sources)
    assert plan.policy.preset == "agent" and sources["network"] == "mvm.toml"
    assert plan.policy.hosts == {"api.test": "127.0.0.1"}
    vals = {b.key: (b.value, b.hosts, b.header) for b in plan.bindings}
    assert vals == {
        "OPENAI_API_KEY": ("sk-env", ("api.openai.com",), None),
        "TOK": ("from-file", ("api.test",), "x-api-key"),
    }
    # CLI wins
    plan = resolve_network(
        RunConfig(network_preset="dev", network_allow=["api.openai.com"]), d, "cli", sources
    )
    assert plan.policy.preset == "dev" and sources["network"] == "cli"


def test_defaults_and_aliases() -> None:
    d = RuntimeDefaults(origin="mvm.toml")
    assert resolve_network(RunConfig(), d, "cli", {}).policy.preset == "none"
    assert resolve_network(RunConfig(network=True), d, "cli", {}).policy.preset == "open"
    legacy = RuntimeDefaults(origin="mvm.toml", network=True)
    plan = resolve_network(RunConfig(), legacy, "cli", {})
    assert plan.policy.open and plan.plain_egress and not plan.uses_proxy
    with pytest.raises(NetworkError):
        resolve_network(RunConfig(network=True, network_preset="dev"), d, "cli", {})


@pytest.mark.parametrize("run", [
    RunConfig(secrets=["KEY:"]), RunConfig(secrets=[":host"]),
    RunConfig(secrets=["K=v:api.test:"]), RunConfig(secrets=["NOT_IN_ENV_XYZ:api.test"]),
    RunConfig(secrets=["K=v:api.test"]),  # preset none does not allow api.test
    RunConfig(network_preset="dev", secrets=["K=v:api.test"]),  # nor does dev
    RunConfig(network_allow=["*.com"]), RunConfig(network_allow=["10.0.0.0/8"]),
    RunConfig(network_allow=["1.2.3.4"]), RunConfig(network_allow_cidr=["nope"]),
    RunConfig(add_hosts=["x"]), RunConfig(secret_mode="vault"),
    RunConfig(network_preset="dev", network_allow=["a.test"], secrets=["K=v:a.test", "K=w:a.test"]),
    RunConfig(add_ca="/nonexistent.pem"),
])  # fmt: skip
def test_bad_network_input(run: RunConfig) -> None:
    with pytest.raises(NetworkError):
        resolve_network(run, RuntimeDefaults(origin="mvm.toml"), "cli", {})


def test_binding_allowed_by_rule() -> None:
    plan = resolve_network(
        RunConfig(network_preset="dev", network_allow=["api.test"], secrets=["K=sekrit-v:api.test"]),
        RuntimeDefaults(origin="mvm.toml"), "cli", {},
    )  # fmt: skip
    assert plan.uses_proxy and [b.key for b in plan.bindings] == ["K"]
    assert "sekrit-v" not in str(plan.describe()) and "sekrit-v" not in repr(plan)


@pytest.mark.parametrize("extra", [
    '[network]\npreset = "closed"\n', '[network]\nallow = ["*"]\n', '[network]\nbogus = 1\n',
    '[network]\nallow = "x"\n', '[secrets.K]\nheader = "x"\n', '[secrets.K]\nhost = "*.x.com"\n',
    '[secrets.K]\nhost = "a.test"\nfile = "f"\nfrom_env = "E"\n', '[secrets."bad key"]\nhost = "a.test"\n',
])  # fmt: skip
def test_bad_toml(tmp_path: Path, extra: str) -> None:
    with pytest.raises(ConfigError):
        _defaults(tmp_path, extra)


def test_template_record_round_trip() -> None:
    d = NetworkDecl("dev", ("a.test",), (), ("a.test:127.0.0.1",))
    assert NetworkDecl.from_json(d.to_json()) == d
    assert NetworkDecl.from_json("garbage") == NetworkDecl()
