"""``template build``: turn a template's project into a new revision, only when needed.

The image itself comes from :func:`mvm.image.builder.build` (cached by the
hash of its inputs).  A template revision adds the template's settings, so
its key is ``sha256(image input hash + settings)``: an unchanged project and
unchanged settings cost one key computation and no new revision; editing
``--mem`` and rebuilding gives a new revision that shares the image bytes
(hard links) with the previous one.

Settings left to the project (``cpus``/``memory_mib`` of None) take the
project's ``vcpus``/``memory_mib``; those effective values are what the
revision's ``defaults`` record (the runtime reads them), so they are part of
the key too.  A new revision is signed with this user's key
(:mod:`mvm.templates.signing`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mvm.config.schema import GuestSpec
from mvm.errors import BuildError, IntegrityError, MetadataError
from mvm.image import builder
from mvm.image.meta import ARTEFACTS, Defaults, ImageMeta
from mvm.log import get_logger
from mvm.templates import integrity, signing, store

log = get_logger(__name__)


@dataclass(frozen=True)
class BuildResult:
    name: str
    revision: str
    created: bool  # False: an existing revision already had these inputs
    previous: str | None
    seconds: float


# builds the saved VM of a `--snapshot` revision into a staging directory: given the
# image (its metadata as the revision records it) and the directory; supplied by the
# runtime (mvm.runtime.templates.snapshot_into), which is what can boot VMs
SnapshotHook = Callable[[builder.Image, Path], None]


def revision_key(
    input_hash: str, settings: store.Settings, defaults: Defaults,
    runtime: dict[str, Any] | None = None, snapshot: bool = False,
) -> str:  # fmt: skip
    """What makes two builds the same revision.  ``defaults`` joins the key only
    when the project supplies part of them, and ``runtime`` only when mvm.toml
    says something about running (ports, network, credentials), so keys of
    older records stay what they were."""
    data: dict[str, object] = {"image": input_hash, "settings": settings.to_json()}
    if settings.cpus is None or settings.memory_mib is None:
        data["defaults"] = {"vcpus": defaults.vcpus, "memory_mib": defaults.memory_mib}
    if runtime:
        data["runtime"] = runtime
    if snapshot:
        data["snapshot"] = True
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def runtime_info(spec: GuestSpec) -> dict[str, Any]:
    """What mvm.toml says about running the image (not baked into it), recorded in
    the revision so ``up --template`` applies it on any host: ports, network and
    the credentials it declares (name and file; values are read at start)."""
    info: dict[str, Any] = {}
    if spec.ports:
        info["ports"] = list(spec.ports)
    if spec.network:
        info["network"] = True
    if spec.machine:
        info["machine"] = spec.machine
    if spec.network_table is not None:
        t = spec.network_table
        info["network_table"] = {
            "preset": t.preset,
            "allow": list(t.allow),
            "allow_cidr": list(t.allow_cidr),
            "add_hosts": list(t.add_host),
        }
    if spec.credentials:
        info["credentials"] = [{"name": c.name, "file": str(c.file)} for c in spec.credentials]
    if spec.var_credentials:  # read from the starting VM's own var store (docs/vars.md)
        info["var_credentials"] = [{"name": c.name, "var": c.var} for c in spec.var_credentials]
    return info


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _reusable(name: str, key: str, artefacts: dict[str, str] | None) -> store.Revision | None:
    """An intact revision with ``key`` (and, when given, exactly these artefact bytes)."""
    current = store.current_id(name)
    candidates = sorted(store.revisions(name), key=lambda r: r.id != current)
    for rev in candidates:
        if rev.key != key:
            continue
        try:
            sums = store.verify(name, rev.id, cached=True).checksums
        except IntegrityError:
            log.warning("%s: damaged, not reused", rev.where)
            continue
        if artefacts is None or all(sums[a] == artefacts[a] for a in ARTEFACTS):
            return rev
    return None


def build(name: str, *, force: bool = False, snapshot: SnapshotHook | None = None) -> BuildResult:
    """Build template ``name``; a new revision appears only if its inputs changed.

    ``force`` rebuilds the image even if cached; a new revision still appears
    only if the rebuilt bytes differ.  ``snapshot``: the revision also holds a
    saved, ready VM (``template build --snapshot``; a revision of its own).
    """
    from mvm.config import load_project

    started = time.monotonic()
    with store.lock(name):
        record = store.load(name)
        settings = record.settings
        project = load_project(settings.flake, profile=settings.profile_arg)
        image = builder.build(project, force=force)
        meta = _image_meta(image)
        defaults = Defaults(*settings.effective(project.spec.vcpus, project.spec.memory_mib))
        runtime = runtime_info(project.spec)
        key = revision_key(image.input_hash, settings, defaults, runtime, snapshot is not None)
        previous = store.current_id(name)
        recorded = dict(meta.checksums)
        found = _reusable(name, key, recorded if force else None)
        if found is not None:
            if found.id != previous:
                store.set_current(name, found.id)
            if record.needs_rebuild:
                record.needs_rebuild = False
                record.save()
            return BuildResult(name, found.id, False, previous, time.monotonic() - started)
        rev_meta = meta.for_template(record.name, key, settings.to_json(), store.now_iso(),
                                     defaults)  # fmt: skip
        if runtime:
            rev_meta = replace(rev_meta, extra={**rev_meta.extra, "runtime": runtime})
        rev_id = _new_revision(record, image, rev_meta, recorded, snapshot)
        record.needs_rebuild = False
        record.save()
    log.info("template %s: new revision %s", name, rev_id)
    return BuildResult(name, rev_id, True, previous, time.monotonic() - started)


def _image_meta(image: builder.Image) -> ImageMeta:
    """The image's metadata, validated (a damaged image cache is a clear error)."""
    where = str(image.path / "revision.json")
    try:
        return ImageMeta.from_json(image.revision, where)
    except MetadataError as exc:
        raise BuildError(
            exc.message, hint="rebuild with `mvmctl template build NAME --force`"
        ) from exc


def _new_revision(
    record: store.Template, image: builder.Image, meta: ImageMeta, recorded: dict[str, str],
    snapshot: SnapshotHook | None = None,
) -> str:  # fmt: skip
    """Stage, checksum, sign and install a revision from ``image`` (caller holds the lock).

    ``meta`` is the image's metadata as a revision of this template (its
    ``name`` is the template's: the default VM name for ``up --template``).
    """
    stage = store.staging_dir("build")
    try:
        for a in ARTEFACTS:
            _link_or_copy(image.path / a, stage / a)
        (stage / "revision.json").write_bytes(meta.encode())
        if snapshot is not None:
            snapshot(builder.Image(stage, meta.to_json()), stage)
        checksums = integrity.compute(stage)
        for a in ARTEFACTS:
            if checksums[a] != recorded[a]:
                raise BuildError(
                    f"cached image {image.path.name[:12]}: {a} no longer matches its build record",
                    hint=f"rebuild with `mvmctl template build {record.name} --force`",
                )
        digest = integrity.digest(checksums)
        rev_id = f"r{store.next_number(record.name)}-{digest[:8]}"
        (stage / integrity.CHECKSUMS).write_bytes(integrity.encode_checksums(checksums))
        signing.write_local(stage, signing.sign(record.name, rev_id, checksums).encode())
        integrity.mark_verified(stage, checksums)
        store.install_revision(record, stage, rev_id, new_record=False)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return rev_id
