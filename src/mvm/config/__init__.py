"""mvm.toml → typed ``GuestSpec``."""

from mvm.config.loader import load_project, parse_spec
from mvm.config.schema import (
    CopySpec,
    CredentialSpec,
    Entrypoint,
    FileSpec,
    GuestSpec,
    KernelSpec,
    Project,
    Service,
    Uids,
)

__all__ = [
    "CopySpec",
    "CredentialSpec",
    "Entrypoint",
    "FileSpec",
    "GuestSpec",
    "KernelSpec",
    "Project",
    "Service",
    "Uids",
    "load_project",
    "parse_spec",
]
