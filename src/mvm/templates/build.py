"""``template build``: turn a template's project into a new revision, only when needed.

The image itself comes from :func:`mvm.image.builder.build` (cached by the
hash of its inputs).  A template revision adds the template's settings, so
its key is ``sha256(image input hash + settings)``: an unchanged project and
unchanged settings cost one key computation and no new revision; editing
``--mem`` and rebuilding gives a new revision that shares the image bytes
(hard links) with the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mvm.errors import BuildError, IntegrityError
from mvm.image import builder
from mvm.log import get_logger
from mvm.templates import integrity, store

log = get_logger(__name__)


@dataclass(frozen=True)
class BuildResult:
    name: str
    revision: str
    created: bool  # False: an existing revision already had these inputs
    previous: str | None
    seconds: float


def revision_key(input_hash: str, settings: store.Settings) -> str:
    blob = json.dumps({"image": input_hash, "settings": settings.to_json()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


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
        if artefacts is None or all(sums[a] == artefacts[a] for a in builder.ARTEFACTS):
            return rev
    return None


def build(name: str, *, force: bool = False) -> BuildResult:
    """Build template ``name``; a new revision appears only if its inputs changed.

    ``force`` rebuilds the image even if cached; a new revision still appears
    only if the rebuilt bytes differ.
    """
    from mvm.config import load_project

    started = time.monotonic()
    with store.lock(name):
        record = store.load(name)
        settings = record.settings
        project = load_project(settings.flake, profile=settings.profile_arg)
        image = builder.build(project, force=force)
        key = revision_key(image.input_hash, settings)
        previous = store.current_id(name)
        recorded = {a: str(image.revision["checksums"][a]) for a in builder.ARTEFACTS}
        found = _reusable(name, key, recorded if force else None)
        if found is not None:
            if found.id != previous:
                store.set_current(name, found.id)
            if record.needs_rebuild:
                record.needs_rebuild = False
                record.save()
            return BuildResult(name, found.id, False, previous, time.monotonic() - started)
        rev_id = _new_revision(record, image, key, recorded)
        record.needs_rebuild = False
        record.save()
    log.info("template %s: new revision %s", name, rev_id)
    return BuildResult(name, rev_id, True, previous, time.monotonic() - started)


def _new_revision(
    record: store.Template, image: builder.Image, key: str, recorded: dict[str, str]
) -> str:
    """Stage, checksum and install a revision from ``image`` (caller holds the lock)."""
    settings = record.settings
    stage = store.staging_dir("build")
    try:
        for a in builder.ARTEFACTS:
            _link_or_copy(image.path / a, stage / a)
        meta = dict(image.revision)
        meta.update(
            name=record.name,  # default VM name for `up --template`
            projectName=image.revision.get("name"),
            defaults={"vcpus": settings.cpus, "memory_mib": settings.memory_mib},
            template={
                "name": record.name,
                "key": key,
                "settings": settings.to_json(),
                "createdAt": store.now_iso(),
            },
        )
        (stage / "revision.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        checksums = integrity.compute(stage)
        for a in builder.ARTEFACTS:
            if checksums[a] != recorded[a]:
                raise BuildError(
                    f"cached image {image.path.name[:12]}: {a} no longer matches its build record",
                    hint=f"rebuild with `mvmctl template build {record.name} --force`",
                )
        digest = integrity.digest(checksums)
        rev_id = f"r{store.next_number(record.name)}-{digest[:8]}"
        (stage / integrity.CHECKSUMS).write_bytes(integrity.encode_checksums(checksums))
        integrity.mark_verified(stage, checksums)
        store.install_revision(record, stage, rev_id, new_record=False)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return rev_id
