"""Every on-disk location mvm uses, derived from ``MVM_HOME`` in one place.

``MVM_HOME`` (default ``~/.mvm``) holds state: VMs, images, templates.
``MVM_CACHE`` (default ``${XDG_CACHE_HOME:-~/.cache}/mvm``) holds what is safe
to share between homes and checkouts (kernels, Debian packages, compiled guest
programs, the accelerator verdict): ``make setup``, the CLI and the tests all
use this one default, so the kernel is fetched or built once per machine.

Both are private to their owner: every directory mvm creates is 0700.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

from mvm.errors import ConfigError, StateError

# ``\Z``, not ``$``: ``$`` also matches before a trailing newline ("x\n" is not a name)
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")


def validate_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a safe record name (never a path), else raise."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid {what} {name!r}: use 1-63 characters a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return name


def _dir_setting(var: str, default: Path) -> Path:
    """``$var`` (or ``default``) as an absolute path that is a directory if it exists."""
    env = os.environ.get(var)
    path = Path(env).expanduser() if env else default
    if env is not None and (not env.strip() or "\0" in env):
        raise ConfigError(f"{var} is set but empty or invalid")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{var} {str(path)!r} exists and is not a directory")
    return path.absolute()


def home() -> Path:
    return _dir_setting("MVM_HOME", Path.home() / ".mvm")


def cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return _dir_setting("MVM_CACHE", base / "mvm")


def kernels_dir() -> Path:
    return cache_dir() / "kernels"


def debs_dir() -> Path:
    return cache_dir() / "debs"


def images_dir() -> Path:
    return home() / "images"


def vms_dir() -> Path:
    return home() / "vms"


def vm_dir(name: str) -> Path:
    return vms_dir() / validate_name(name, "VM name")


def volumes_dir() -> Path:
    """Persistent data volumes, kept across ``down``/``up`` (``volumes/VM/*.ext4``)."""
    return home() / "volumes"


def templates_dir() -> Path:
    return home() / "templates"


def template_dir(name: str) -> Path:
    return templates_dir() / validate_name(name, "template name")


def registry_dir() -> Path:
    """The embedded local template registry used when none is configured."""
    return home() / "registry"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700 (missing parents too); tighten it if it exists.

    Parents are made 0700 as well: ``mkdir -p`` with the default umask would
    leave ``MVM_HOME`` itself world-readable.
    """
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    try:
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):  # a concurrent mvmctl made it
                os.mkdir(d, 0o700)
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        os.chmod(path, 0o700)
    except OSError as exc:
        raise StateError(f"cannot create directory {str(path)!r}: {exc.strerror or exc}") from exc
    return path
