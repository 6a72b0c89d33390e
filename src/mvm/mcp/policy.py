"""What a model driving ``mvmctl mcp`` may do, from a TOML file and/or flags.

A model is hostile input: it picks templates only from ``templates`` (never a
project path or an image reference), starts at most ``max_sandboxes`` at a
time, each for at most ``max_lifetime`` seconds, with a network preset from
``networks``; it names secret bindings from ``[secrets]`` and never sees
their values (the binding, ``KEY[=VALUE|@FILE]:HOST[,HOST][:HEADER]`` as for
``mvmctl up --secret``, is applied by the server)::

    templates = ["py"]        # "*": any template on this host
    max_sandboxes = 4
    max_lifetime = 1800       # seconds
    networks = ["none", "agent"]
    max_exec_timeout = 300
    [secrets]
    openai = "OPENAI_API_KEY@/run/keys/openai:api.openai.com"
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mvm import paths
from mvm.errors import ConfigError
from mvm.network.policy import PRESETS

KEYS = ("templates", "max_sandboxes", "max_lifetime", "networks", "max_exec_timeout", "secrets")
MAX_POLICY_BYTES = 1 << 20


class PolicyError(ConfigError):
    """A request the policy refuses (what the model sees as a tool error)."""


@dataclass(frozen=True)
class Policy:
    templates: tuple[str, ...] = ("*",)
    max_sandboxes: int = 4
    max_lifetime: float = 3600.0
    networks: tuple[str, ...] = ("none",)
    max_exec_timeout: float = 600.0
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    def check_template(self, name: str) -> str:
        if not isinstance(name, str) or not paths.NAME_RE.fullmatch(name):
            raise PolicyError(f"invalid template name {name!r}")
        if "*" not in self.templates and name not in self.templates:
            allowed = ", ".join(self.templates) or "none"
            raise PolicyError(f"template {name!r} is not allowed (allowed: {allowed})")
        return name

    def check_network(self, preset: str) -> str:
        if preset not in self.networks:
            raise PolicyError(f"network {preset!r} is not allowed "
                              f"(allowed: {', '.join(self.networks)})")  # fmt: skip
        return preset

    def check_count(self, running: int) -> None:
        if running >= self.max_sandboxes:
            raise PolicyError(f"at most {self.max_sandboxes} sandboxes at a time: "
                              "destroy one first")  # fmt: skip

    def bindings(self, names: Sequence[str]) -> list[str]:
        """The binding specs for secret ``names`` (unknown names refused, values unseen)."""
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise PolicyError("secrets must be a list of binding names")
        unknown = sorted(set(names) - set(self.secrets))
        if unknown:
            known = ", ".join(sorted(self.secrets)) or "none"
            raise PolicyError(f"unknown secret binding {unknown[0]!r} (configured: {known})")
        return [self.secrets[n] for n in dict.fromkeys(names)]

    def exec_timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return min(120.0, self.max_exec_timeout)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise PolicyError("timeout must be a positive number of seconds")
        return float(min(timeout, self.max_exec_timeout))

    def describe(self) -> dict[str, Any]:
        """The policy as a model may see it (secret names, never their bindings)."""
        return {"templates": list(self.templates), "max_sandboxes": self.max_sandboxes,
                "max_lifetime": self.max_lifetime, "networks": list(self.networks),
                "max_exec_timeout": self.max_exec_timeout,
                "secrets": sorted(self.secrets)}  # fmt: skip


def _pos_number(raw: Any, key: str, integer: bool = False) -> float:
    ok = isinstance(raw, int) if integer else isinstance(raw, int | float)
    if isinstance(raw, bool) or not ok or not 0 < raw <= 10**7:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"policy: {key} must be {kind}")
    return raw  # type: ignore[no-any-return]


def _names(raw: Any, key: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ConfigError(f"policy: {key} must be a list of strings")
    return tuple(raw)


def from_mapping(data: Mapping[str, Any], base: Policy | None = None, where: str = "policy"
                 ) -> Policy:  # fmt: skip
    """A policy from parsed TOML (unknown keys refused: a typo must not widen it)."""
    pol = base or Policy()
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    changes: dict[str, Any] = {}
    if "templates" in data:
        tpl = _names(data["templates"], "templates")
        for t in tpl:
            if t != "*":
                paths.validate_name(t, "template name")
        changes["templates"] = tpl
    if "networks" in data:
        nets = _names(data["networks"], "networks")
        for n in nets:
            if n not in PRESETS:
                raise ConfigError(f"{where}: unknown network preset {n!r} "
                                  f"(use {', '.join(PRESETS)})")  # fmt: skip
        changes["networks"] = nets
    if "max_sandboxes" in data:
        changes["max_sandboxes"] = int(_pos_number(data["max_sandboxes"], "max_sandboxes", True))
    for k in ("max_lifetime", "max_exec_timeout"):
        if k in data:
            changes[k] = float(_pos_number(data[k], k))
    if "secrets" in data:
        sec = data["secrets"]
        if not isinstance(sec, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in sec.items()
        ):
            raise ConfigError(f"{where}: [secrets] maps binding names to binding specs")
        for k, spec in sec.items():
            paths.validate_name(k, "secret binding name")
            _check_binding(k, spec, where)
        changes["secrets"] = dict(sec)
    return replace(pol, **changes)


def _check_binding(name: str, spec: str, where: str) -> None:
    """A binding the server could not apply is the operator's error, found at start
    (never a model's: it only names the binding).  Messages never show the value."""
    import os

    from mvm.errors import NetworkError
    from mvm.network import bindings

    try:
        bindings.parse(spec, dict(os.environ), origin="policy")
    except NetworkError as exc:
        raise ConfigError(f"{where}: [secrets] {name}: {exc.message}", hint=exc.hint) from None


def load(path: str | Path) -> Policy:
    """Read a policy file (TOML)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"policy {p}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_POLICY_BYTES:
        raise ConfigError(f"policy {p}: larger than 1 MiB")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"policy {p}: not valid TOML ({exc})") from exc
    return from_mapping(data, where=f"policy {p}")
