"""What ``up --template NAME`` runs: the current revision's image (verified) and
the runtime defaults it carries — the template's explicit settings, the
data disk, and mvm.toml's ports, network and credentials as recorded at
build time (or read from the template's project when it is on this host
and the revision predates that record)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from mvm.errors import MvmError
from mvm.runtime.resolve import RuntimeDefaults

if TYPE_CHECKING:
    from mvm.image.builder import Image
    from mvm.runtime.restore import Restore


def template_run(name: str) -> tuple[Image, RuntimeDefaults, str]:
    from mvm.templates import store

    image, rev_id = store.current_image(name)
    record = store.load(name)
    settings = record.settings
    local = record.origin == "local"
    recorded = "runtime" in image.meta.extra
    defaults = RuntimeDefaults.from_meta(image.meta)
    if not recorded and local:  # a revision built before runtime settings were recorded
        from mvm.config import load_project

        with contextlib.suppress(MvmError, OSError):
            project = load_project(settings.flake, profile=settings.profile_arg)
            defaults = RuntimeDefaults.from_spec(project.spec)
    if not local:
        defaults = _untrusted(defaults)
    defaults = replace(
        defaults,
        origin="template" if recorded else defaults.origin,
        template=name,
        template_vcpus=settings.cpus,
        template_memory_mib=settings.memory_mib,
        data_disk_mib=settings.data_disk_mib,
    )
    return image, defaults, rev_id


def _untrusted(defaults: RuntimeDefaults) -> RuntimeDefaults:
    """Runtime settings recorded by another host are suggestions, not authority: a
    pulled template must never make mvm read this host's files (its credential
    files become names the caller has to supply) or listen beyond loopback."""
    from mvm.runtime.config import parse_port

    ports = tuple(p for p in defaults.ports if parse_port(p).address == "127.0.0.1")
    return replace(
        defaults, ports=ports, credentials=(),
        required_credentials=tuple(c.name for c in defaults.credentials),
    )  # fmt: skip


def snapshot_into(image: Image, stage: Path) -> None:
    """``template build --snapshot``: boot the revision being built (secret-free), wait
    until it is ready and save it into ``stage`` beside its artefacts."""
    from mvm.runtime.config import RunConfig
    from mvm.runtime.resolve import resolve
    from mvm.runtime.snapshot_save import template_snapshot

    defaults = RuntimeDefaults.from_meta(image.meta)
    run = resolve(image, RunConfig(project_credentials=[], forward_host_credentials=False),
                  defaults, source=f"template:{image.meta.name}")  # fmt: skip
    template_snapshot(run, stage)


def template_restore(image: Image) -> Restore | None:
    """The snapshot a template revision holds (checked with the revision by
    ``store.current_image``), as what ``start`` restores; None if it has none."""
    from mvm.errors import MvmError
    from mvm.runtime.restore import Restore
    from mvm.runtime.snapshots import META, load
    from mvm.templates import integrity

    if not (image.path / META).exists():
        return None
    kernel_sha = None
    with contextlib.suppress(MvmError):  # verified with the revision: no second hash
        kernel_sha = integrity.load_checksums(image.path, str(image.path)).get("kernel")
    return Restore(load(image.path), kernel_sha256=kernel_sha)
