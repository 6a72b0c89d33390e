"""What ``up --template NAME`` runs: the current revision's image (verified) and
the runtime defaults it carries — the template's explicit settings, the
data disk, and mvm.toml's ports, network and credentials as recorded at
build time (or read from the template's project when it is on this host
and the revision predates that record)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING

from mvm.errors import MvmError
from mvm.runtime.resolve import RuntimeDefaults

if TYPE_CHECKING:
    from mvm.image.builder import Image


def template_run(name: str) -> tuple[Image, RuntimeDefaults, str]:
    from mvm.templates import store

    image, rev_id = store.current_image(name)
    settings = store.load(name).settings
    defaults = RuntimeDefaults.from_revision(image.revision)
    if "runtime" not in image.revision:
        from mvm.config import load_project

        with contextlib.suppress(MvmError, OSError):
            project = load_project(settings.flake, profile=settings.profile_arg)
            defaults = RuntimeDefaults.from_spec(project.spec)
    defaults = replace(
        defaults,
        origin="template" if "runtime" in image.revision else defaults.origin,
        template=name,
        template_vcpus=getattr(settings, "cpus", None),
        template_memory_mib=getattr(settings, "memory_mib", None),
        data_disk_mib=getattr(settings, "data_disk_mib", None),
    )
    return image, defaults, rev_id
