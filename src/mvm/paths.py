"""Every on-disk location mvm uses, derived from ``MVM_HOME`` in one place.

``MVM_HOME`` (default ``~/.mvm``) holds state: VMs, images, templates.
``MVM_CACHE`` (default ``MVM_HOME/cache``) holds downloads that are safe to
share between homes (kernels, Debian packages): tests point many throw-away
homes at one cache so the kernel is fetched once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mvm.errors import ConfigError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def validate_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a safe record name (never a path), else raise."""
    if not NAME_RE.match(name):
        raise ConfigError(
            f"invalid {what} {name!r}: use 1-63 characters a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return name


def home() -> Path:
    env = os.environ.get("MVM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".mvm"


def cache_dir() -> Path:
    env = os.environ.get("MVM_CACHE")
    return Path(env).expanduser() if env else home() / "cache"


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
    """Create ``path`` (and parents) with mode 0700; tighten it if it exists."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
