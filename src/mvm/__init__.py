"""mvm: build small microVM images from ``mvm.toml`` and run them under QEMU.

The public API is re-exported here lazily (attribute access imports the
defining module) so that ``mvmctl --help`` does not pay for modules it does
not use.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not `from typing`: importing typing costs `mvmctl exec` start-up

__version__ = "0.1.0"

_EXPORTS = {
    "MvmError": "mvm.errors",
    "ConfigError": "mvm.errors",
    "ClusterError": "mvm.errors",
    "BuildError": "mvm.errors",
    "BackendError": "mvm.errors",
    "StateError": "mvm.errors",
    "NotFoundError": "mvm.errors",
    "ConflictError": "mvm.errors",
    "DriveError": "mvm.errors",
    "CredentialError": "mvm.errors",
    "DiskFullError": "mvm.errors",
    "HypervisorMissing": "mvm.errors",
    "MetadataError": "mvm.errors",
    "TemplateError": "mvm.errors",
    "RegistryError": "mvm.errors",
    "IntegrityError": "mvm.errors",
    "TrustError": "mvm.errors",
    "VarsError": "mvm.errors",
    "SnapshotError": "mvm.errors",
    "NetworkError": "mvm.errors",
    "LaunchError": "mvm.backends.base",
    "DriveFile": "mvm.drives",
    "VolumeSpec": "mvm.drives",
    "Credential": "mvm.secrets.credentials",
    "GuestSpec": "mvm.config",
    "Project": "mvm.config",
    "load_project": "mvm.config",
    "Image": "mvm.image.builder",
    "build_image": "mvm.image.builder",
    "RunConfig": "mvm.runtime.config",
    "Vm": "mvm.runtime.vm",
    "VmState": "mvm.state.records",
    "up": "mvm.runtime.vm",
    "down": "mvm.runtime.vm",
    "list_vms": "mvm.runtime.vm",
    "get_vm": "mvm.runtime.vm",
    "wait": "mvm.runtime.vm",
    "pause": "mvm.runtime.vm",
    "resume": "mvm.runtime.vm",
    "ImageMeta": "mvm.image.meta",
    "MachineSpec": "mvm.backends.spec",
    "AgentError": "mvm.errors",
    "ProtocolError": "mvm.errors",
    "exec": "mvm.runtime.guest",
    "guest_status": "mvm.runtime.guest",
    "read_file": "mvm.runtime.guest",
    "write_file": "mvm.runtime.guest",
    "list_dir": "mvm.runtime.guest",
    "connect_agent": "mvm.runtime.guest",
    "DeadlineError": "mvm.errors",
    "Sandbox": "mvm.sdk",
    "AsyncSandbox": "mvm.sdk",
    "CommandResult": "mvm.sdk",
}

__all__ = sorted([*_EXPORTS, "__version__"])

# the library logs through mvm.log (lazy); its first use adds a NullHandler to "mvm"


_RENAMED = {
    "build_image": "build",
    "get_vm": "get",
    "guest_status": "status",
    "connect_agent": "connect",
}  # exported under a name that says what it builds


def __dir__() -> list[str]:
    """``dir(mvm)`` lists the public API even before any of it is imported."""
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mvm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), _RENAMED.get(name, name))


if TYPE_CHECKING:
    from typing import Any

    from mvm.backends.base import LaunchError
    from mvm.backends.spec import MachineSpec
    from mvm.config import GuestSpec, Project, load_project
    from mvm.drives import DriveFile, VolumeSpec
    from mvm.errors import (
        AgentError,
        BackendError,
        BuildError,
        ClusterError,
        ConfigError,
        ConflictError,
        CredentialError,
        DeadlineError,
        DiskFullError,
        DriveError,
        HypervisorMissing,
        IntegrityError,
        MetadataError,
        MvmError,
        NetworkError,
        NotFoundError,
        ProtocolError,
        RegistryError,
        SnapshotError,
        StateError,
        TemplateError,
        TrustError,
        VarsError,
    )
    from mvm.image.builder import Image
    from mvm.image.builder import build as build_image
    from mvm.image.meta import ImageMeta
    from mvm.runtime.config import RunConfig
    from mvm.runtime.guest import connect as connect_agent
    from mvm.runtime.guest import exec, list_dir, read_file, write_file
    from mvm.runtime.guest import status as guest_status
    from mvm.runtime.vm import Vm, down, list_vms, pause, resume, up, wait
    from mvm.runtime.vm import get as get_vm
    from mvm.sdk import AsyncSandbox, CommandResult, Sandbox
    from mvm.secrets.credentials import Credential
    from mvm.state.records import VmState
