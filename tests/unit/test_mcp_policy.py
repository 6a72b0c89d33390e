"""The MCP server's policy (file, flags, refusals) and the manager's bookkeeping
that needs no VM: refusals happen before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvm.errors import ConfigError, NotFoundError
from mvm.mcp import policy as pm
from mvm.mcp.manager import Manager
from mvm.mcp.policy import Policy, PolicyError


def test_defaults_are_narrow() -> None:
    p = Policy()
    assert p.networks == ("none",) and p.max_sandboxes == 4 and p.secrets == {}
    assert p.check_template("anything") == "anything"  # "*" by default
    with pytest.raises(PolicyError, match="network 'open' is not allowed"):
        p.check_network("open")


def test_file_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text('templates = ["py", "node"]\nmax_sandboxes = 2\nmax_lifetime = 30\n'
                 'networks = ["none", "agent"]\n[secrets]\nopenai = "K=sk-123:api.openai.com"\n')  # fmt: skip
    p = pm.load(f)
    assert p.templates == ("py", "node") and p.max_sandboxes == 2 and p.max_lifetime == 30.0
    assert p.check_network("agent") == "agent"
    with pytest.raises(PolicyError, match="not allowed"):
        p.check_template("ruby")
    with pytest.raises(PolicyError, match="invalid template name"):
        p.check_template("../x")
    p.check_count(1)
    with pytest.raises(PolicyError, match="at most 2"):
        p.check_count(2)
    assert p.bindings(["openai", "openai"]) == ["K=sk-123:api.openai.com"]
    with pytest.raises(PolicyError, match="unknown secret binding 'aws'"):
        p.bindings(["aws"])
    # what a model may read names the binding, never its value
    d = p.describe()
    assert d["secrets"] == ["openai"] and "sk-123" not in repr(d) and "sk-123" not in repr(p)
    q = pm.from_mapping({"max_sandboxes": 5, "templates": ["py"]}, p, where="flags")
    assert (q.max_sandboxes, q.templates, q.max_lifetime) == (5, ("py",), 30.0)


@pytest.mark.parametrize("text", [
    "max_sandboxes = 0", "max_sandboxes = true", "max_sandboxes = 1.5", "max_lifetime = -1",
    'networks = ["wide"]', 'templates = "py"', 'templates = ["Bad/Name"]', "typo = 1",
    '[secrets]\n"Bad Name" = "x"', "secrets = 3", "not toml [", '[secrets]\nk = "K=v"',
    '[secrets]\nk = "NOT_IN_ENV_X:api.example.com"', '[secrets]\nk = "K@/no/such:h.example"',
])  # fmt: skip
def test_bad_policies_are_config_errors(tmp_path: Path, text: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(ConfigError):
        pm.load(f)


def test_binding_errors_never_show_the_value(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('[secrets]\nk = "K=sk-very-secret"\n')
    with pytest.raises(ConfigError) as e:
        pm.load(f)
    assert "sk-very-secret" not in str(e.value) and "[secrets] k" in str(e.value)


def test_missing_and_huge_policy_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        pm.load(tmp_path / "nope.toml")
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * ((1 << 20) + 10))
    with pytest.raises(ConfigError, match="1 MiB"):
        pm.load(big)


def test_exec_timeout_is_capped() -> None:
    p = Policy(max_exec_timeout=10)
    assert p.exec_timeout(None) == 10 and p.exec_timeout(3) == 3 and p.exec_timeout(99) == 10
    for bad in (0, -1, True):
        with pytest.raises(PolicyError):
            p.exec_timeout(bad)


def test_manager_refuses_before_starting_anything() -> None:
    m = Manager(Policy(templates=("py",), max_sandboxes=1, secrets={"k": "K=v:h.example"}))
    with pytest.raises(PolicyError):
        m.create("ruby")
    with pytest.raises(PolicyError):
        m.create("py", network="open")
    with pytest.raises(PolicyError):
        m.create("py", secrets=["nope"])
    for verb in (lambda: m.exec("mcp-x", "true"), lambda: m.destroy("mcp-x"),
                 lambda: m.read_file("mcp-x", "/etc/passwd"), lambda: m.fork("mcp-x")):  # fmt: skip
        with pytest.raises(NotFoundError, match="from this server"):
            verb()  # only its own sandboxes, never another VM on the host
    assert m.list() == [] and m._pending == 0
