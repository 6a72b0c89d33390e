"""Host services: a systemd unit that runs one defined VM attached (the seeds'
``microvm@NAME.service``).

``mvmctl systemd unit VM`` renders ``mvm@VM.service`` (an instance file of
the ``mvm@.service`` template name, so ``systemctl start mvm@VM`` works):

- ``ExecStart=mvmctl start --attached VM``: the VM's life is the service's;
  its console goes to the journal and its exit code is the service's.
- a clean stop: ``KillMode=mixed`` sends SIGTERM to mvmctl only, which stops
  the guest gracefully (poweroff → QMP quit → kill) and exits 130, declared a
  success (``SuccessExitStatus=130``); systemd kills what is left only after
  ``TimeoutStopSec``.
- ``Restart=on-failure`` with a delay, so a crashed VM comes back.
- ``LoadCredential=NAME:PATH`` for every file credential of the VM's mvm.toml
  (and any given with ``--load-credential``): systemd reads the files, and
  mvmctl forwards ``$CREDENTIALS_DIRECTORY`` to the guest.  Var credentials
  come from the VM's var store through ``MVM_HOME``.

Everything interpolated into the unit is checked (no control characters) and
escaped for systemd (``%`` specifiers, quotes), because paths come from the
user's environment and project.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from mvm import paths
from mvm.errors import ConfigError
from mvm.secrets.credentials import check_name

UNIT_TEMPLATE = "mvm@{name}.service"
STOP_TIMEOUT = 60


@dataclass(frozen=True)
class Unit:
    name: str  # mvm@VM.service
    text: str


def _safe(value: str, what: str) -> str:
    if not value or re.search(r"[\x00-\x1f\x7f\"\\]", value):
        raise ConfigError(f"{what} {value!r} cannot be written into a unit file "
                          "(control characters, quotes or backslashes)")  # fmt: skip
    return value.replace("%", "%%")


def _quoted(value: str, what: str) -> str:
    return f'"{_safe(value, what)}"'


def mvmctl_path() -> str:
    """The mvmctl the unit runs: the one beside this Python (a venv), else PATH's."""
    beside = Path(sys.executable).parent / "mvmctl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mvmctl")
    if found is None:
        raise ConfigError("cannot find the mvmctl executable to put in the unit")
    return str(Path(found).resolve())


def parse_load_credential(spec: str) -> tuple[str, Path]:
    """``NAME:PATH`` (PATH made absolute: systemd needs it)."""
    name, sep, path = spec.partition(":")
    if not sep or not path:
        raise ConfigError(f"--load-credential {spec!r}: expected NAME:PATH")
    check_name(name, "--load-credential")
    return name, Path(path).expanduser().absolute()


def render(name: str, *, user: bool = False,
           load_credentials: list[tuple[str, Path]] | None = None) -> Unit:  # fmt: skip
    """The unit for VM ``name`` (defined or started from a project directory)."""
    from mvm.errors import NotFoundError
    from mvm.runtime import defs

    paths.validate_name(name, "VM name")
    d = defs.find(name)
    if d is None:  # the unit starts it by name after every reboot: it must be declared
        raise NotFoundError(f"VM {name!r} is not defined",
                            hint=f"`mvmctl create {name} --flake PATH` first")  # fmt: skip
    creds: dict[str, Path] = {}
    if d.flake is not None:
        from mvm.config import load_project

        for c in load_project(d.flake, d.profile).spec.credentials:
            creds[c.name] = c.file
    for cname, cpath in load_credentials or []:
        creds[cname] = cpath
    exe = _quoted(mvmctl_path(), "mvmctl path")
    env = [f"Environment={_quoted(f'MVM_HOME={paths.home()}', 'MVM_HOME')}",
           f"Environment={_quoted(f'MVM_CACHE={paths.cache_dir()}', 'MVM_CACHE')}"]  # fmt: skip
    lines = [
        f"# written by `mvmctl systemd unit {name}`: the VM {name} as a service",
        "[Unit]",
        f"Description=mvm microVM {name}",
        "After=network.target",
        "",
        "[Service]",
        "Type=exec",
        *env,
        f"ExecStart={exe} start --attached {name}",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={STOP_TIMEOUT}",
        "SuccessExitStatus=130",
        "Restart=on-failure",
        "RestartSec=5",
        "UMask=0077",
        *(f"LoadCredential={check_name(n, 'LoadCredential')}:{_safe(str(p), 'credential path')}"
          for n, p in sorted(creds.items())),
        "",
        "[Install]",
        f"WantedBy={'default.target' if user else 'multi-user.target'}",
        "",
    ]  # fmt: skip
    return Unit(UNIT_TEMPLATE.format(name=name), "\n".join(lines))


def unit_dir(user: bool) -> Path:
    if user:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "systemd" / "user"
    return Path("/etc/systemd/system")


def install(unit: Unit, directory: Path) -> Path:
    """Write ``unit`` into ``directory`` (atomically, 0644: units are not secret)."""
    from mvm.state.atomic import atomic_file

    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / unit.name
    with atomic_file(dest, mode=0o644) as f:
        f.write(unit.text.encode())
    return dest
