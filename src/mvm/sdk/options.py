"""``Sandbox.create``'s arguments checked and turned into what the runtime takes:
a target for :func:`mvm.runtime.vm.up` and a :class:`~mvm.runtime.config.RunConfig`.

Pure (no VM, no I/O beyond reading a project's mvm.toml when ``project`` is
given), so the checks are unit-tested; a bad argument is a ``ConfigError``
before anything is built or started.
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mvm import paths
from mvm.errors import ConfigError
from mvm.network.policy import PRESETS
from mvm.runtime.config import RunConfig, parse_port
from mvm.secrets.credentials import Credential

NAME_PREFIX = "sb-"
DEFAULT_CREATE_TIMEOUT = 600.0  # a cold boot under TCG on a loaded host; a restore is ~1 s
DEFAULT_CALL_TIMEOUT = 120.0
MAX_TIMEOUT = 7 * 24 * 3600.0


def fresh_name(prefix: str = NAME_PREFIX) -> str:
    """A VM name no one chose: ``prefix`` and 8 random hex digits."""
    return paths.validate_name(f"{prefix}{_secrets.token_hex(4)}", "VM name")


def check_timeout(timeout: float | None, default: float, what: str = "timeout") -> float:
    """A usable timeout in seconds (``None`` is ``default``): every SDK call has one."""
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigError(f"{what} must be a number of seconds, not {type(timeout).__name__}")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(f"{what} must be between 0 and {MAX_TIMEOUT:.0f} seconds, not {timeout}")
    return float(timeout)


@dataclass
class CreateOptions:
    """What to start and how; ``kind`` is ``template``, ``project`` or ``image``."""

    kind: str
    source: str
    run: RunConfig = field(repr=False)
    cold: bool = False


def _strs(value: Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | bytes) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what} must be a list of strings")
    return list(value)


def _credentials(creds: Mapping[str, str | bytes] | None) -> list[Credential]:
    if creds is None:
        return []
    if not isinstance(creds, Mapping):
        raise ConfigError("credentials must be a mapping of NAME to value")
    out = []
    for k, v in creds.items():
        if not isinstance(k, str) or not isinstance(v, str | bytes):
            raise ConfigError("credentials must map names (str) to values (str or bytes)")
        out.append(Credential(k, v.encode() if isinstance(v, str) else v, source="sdk"))
    return out


def _int(value: int | None, what: str, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{what} must be an integer from {lo} to {hi}")
    return value


def create_options(
    template: str | None = None, *, project: str | Path | None = None,
    image: str | None = None, name: str | None = None,
    secrets: Sequence[str] | None = None, network: str | None = None,
    allow: Sequence[str] | None = None, ports: Sequence[str] | None = None,
    credentials: Mapping[str, str | bytes] | None = None, cpus: int | None = None,
    mem: int | None = None, cold: bool = False,
) -> CreateOptions:  # fmt: skip
    """Check ``Sandbox.create``'s arguments (exactly one of template, project, image)."""
    given = [(k, v) for k, v in (("template", template), ("project", project),
                                 ("image", image)) if v is not None]  # fmt: skip
    if len(given) != 1:
        raise ConfigError("give exactly one of template=, project= and image=")
    kind, source = given[0]
    if kind == "project":
        if not isinstance(source, str | Path):
            raise ConfigError("project must be a path")
        source = str(source)
    elif not isinstance(source, str) or not source:
        raise ConfigError(f"{kind} must be a non-empty string")
    if kind == "template":
        paths.validate_name(str(source), "template name")
    if name is not None:
        paths.validate_name(name, "VM name")
    if network is not None and network not in PRESETS:
        raise ConfigError(f"invalid network {network!r}: use one of {', '.join(PRESETS)}")
    port_list = _strs(ports, "ports")
    for p in port_list:
        parse_port(p)
    run = RunConfig(
        name=name or fresh_name(), cpus=_int(cpus, "cpus", 1, 64),
        memory_mib=_int(mem, "mem", 64, 1 << 20), ports=port_list,
        network_preset=network, network_allow=_strs(allow, "allow"),
        secrets=_strs(secrets, "secrets"), credentials=_credentials(credentials),
    )  # fmt: skip
    # credentials given now reach a restored guest too (`remount` re-reads fw_cfg)
    return CreateOptions(kind, str(source), run, cold=bool(cold))
