"""Push and pull template revisions: the protocol, written once for every backend.

Push (local current revision → registry):
  1. verify the local revision (a damaged one is never published);
  2. if the registry already holds this revision's ``checksums.json`` and the
     objects are present, upload nothing;
  3. else upload the files that are not already there intact (so an
     interrupted push resumes), verify each stored object (size + sha256),
  4. then write ``checksums.json`` (the revision's commit marker),
  5. and only then move ``current``.
A push that dies anywhere before step 5 leaves ``current`` where it was.

Pull (registry → local):
  1. read ``current`` (or the requested revision) and its ``checksums.json``;
  2. if the local copy has the same checksums and verifies, download nothing;
  3. else download into a staging directory under ``MVM_HOME/templates``,
     recompute every sha256, and install with one ``rename``; ``current``
     moves last.  An interrupted or corrupted pull leaves no usable-looking
     template (the staging directory is swept by the next pull or build).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mvm import paths
from mvm.errors import (
    ConflictError,
    IntegrityError,
    NotFoundError,
    RegistryError,
    StateError,
    TemplateError,
)
from mvm.image.builder import ARTEFACTS
from mvm.templates import integrity, store
from mvm.templates.registry.base import (
    NullProgress,
    Progress,
    Registry,
    current_key,
    revision_key,
    revisions_key,
)


@dataclass(frozen=True)
class TransferResult:
    """What a push or pull did; ``bytes`` counts artefact bytes actually moved."""

    name: str
    revision: str
    bytes: int
    files: int
    seconds: float
    moved_current: bool

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def push(name: str, registry: Registry, *, progress: Progress | None = None) -> TransferResult:
    """Publish the current local revision of ``name`` and make it the registry's current."""
    progress = progress or NullProgress()
    started = time.monotonic()
    rev = store.verify(name, cached=True)
    checksums = rev.checksums
    sizes = rev.sizes()
    remote_current = _read_current(registry, name, missing_ok=True)
    remote_raw = registry.get_bytes(revision_key(name, rev.id, integrity.CHECKSUMS))
    committed = False
    if remote_raw is not None:
        try:
            committed = integrity.decode_checksums(remote_raw, registry.description) == checksums
        except IntegrityError:
            committed = False
    todo: list[str] = []
    for f in integrity.REVISION_FILES:
        key = revision_key(name, rev.id, f)
        info = registry.stat(key)
        if info is None or info.size != sizes[f]:
            todo.append(f)
        elif not committed and info.sha256 != checksums[f]:
            todo.append(f)  # there, but not known to be ours and whole: upload again
    sent = 0
    if todo:
        total = sum(sizes[f] for f in todo)
        progress.begin(f"push {name} {rev.id}", total)
        try:
            for f in todo:
                registry.upload(
                    revision_key(name, rev.id, f), rev.path / f, checksums[f], progress.advance
                )
                sent += sizes[f]
        finally:
            progress.end()
        for f in todo:
            if not registry.verify_object(revision_key(name, rev.id, f), sizes[f], checksums[f]):
                raise RegistryError(
                    f"registry {registry.description}: {f} of {name} {rev.id} "
                    "did not verify after upload; `current` was not moved"
                )
    if todo or not committed:
        registry.put_bytes(
            revision_key(name, rev.id, integrity.CHECKSUMS), integrity.encode_checksums(checksums)
        )
    moved = remote_current != rev.id
    if moved:
        registry.put_bytes(current_key(name), (rev.id + "\n").encode())
    return TransferResult(name, rev.id, sent, len(todo), time.monotonic() - started, moved)


def _read_current(registry: Registry, name: str, *, missing_ok: bool) -> str | None:
    raw = registry.get_bytes(current_key(name))
    if raw is None:
        if missing_ok:
            return None
        raise NotFoundError(
            f"template {name!r} is not in the registry {registry.description}",
            hint=f"push it first with `mvmctl template push {name}`",
        )
    text = raw.decode(errors="replace").strip()
    if not store.REV_RE.match(text):
        if missing_ok:
            return None
        raise RegistryError(f"registry {registry.description}: current of {name} is invalid")
    return text


def resolve_remote(name: str, registry: Registry, ref: str) -> str:
    """A full revision id, or ``rN`` matched against the registry's revisions."""
    if store.REV_RE.match(ref):
        return ref
    if not re.fullmatch(r"r[1-9][0-9]{0,8}", ref):
        raise TemplateError(f"invalid revision {ref!r}: use rN or rN-xxxxxxxx")
    matches = [r for r in registry.list_dirs(revisions_key(name)) if r.startswith(ref + "-")]
    if not matches:
        raise NotFoundError(f"registry {registry.description} has no revision {ref} of {name!r}")
    if len(matches) > 1:
        raise ConflictError(f"revision {ref} of {name!r} is ambiguous: {', '.join(matches)}")
    return matches[0]


def pull(
    name: str, registry: Registry, *, revision: str | None = None, progress: Progress | None = None
) -> TransferResult:
    """Install a revision (default: the registry's current) and make it current here."""
    paths.validate_name(name, "template name")
    progress = progress or NullProgress()
    started = time.monotonic()
    if revision is None:
        rev_id = _read_current(registry, name, missing_ok=False)
        assert rev_id is not None
    else:
        rev_id = resolve_remote(name, registry, revision)
    where = f"registry {registry.description}: {name} {rev_id}"
    raw = registry.get_bytes(revision_key(name, rev_id, integrity.CHECKSUMS))
    if raw is None:
        raise NotFoundError(f"registry {registry.description} has no revision {rev_id} of {name!r}")
    checksums = integrity.decode_checksums(raw, where)
    store.check_id(rev_id, checksums, where)
    with store.lock(name):
        record = store.load(name) if store.exists(name) else None
        if record is not None and _have(name, rev_id, checksums):
            moved = store.current_id(name) != rev_id
            if moved:
                store.set_current(name, rev_id)
            return TransferResult(name, rev_id, 0, 0, time.monotonic() - started, moved)
        got = _download(name, registry, rev_id, checksums, record, where, progress)
    return TransferResult(name, rev_id, got, len(integrity.REVISION_FILES),
                          time.monotonic() - started, True)  # fmt: skip


def _have(name: str, rev_id: str, checksums: dict[str, str]) -> bool:
    """True if the local copy of ``rev_id`` is intact (then nothing needs downloading)."""
    try:
        rev = store.load_revision(name, rev_id)
        return rev.checksums == checksums and store.verify(name, rev_id, cached=True) is not None
    except (NotFoundError, IntegrityError, TemplateError):
        return False


def _download(
    name: str,
    registry: Registry,
    rev_id: str,
    checksums: dict[str, str],
    record: store.Template | None,
    where: str,
    progress: Progress,
) -> int:
    """Download, verify and install ``rev_id`` (caller holds the template lock).

    revision.json comes first (small; once verified, its sizes give the
    progress total without extra requests); each artefact is hashed in a
    worker thread while the next one downloads, so verification costs
    almost no wall time.
    """
    stage = store.staging_dir("pull")
    try:
        rev_dir = stage / "revisions" / rev_id if record is None else stage
        rev_dir.mkdir(parents=True, exist_ok=True)
        meta = "revision.json"
        registry.download(revision_key(name, rev_id, meta), rev_dir / meta, lambda n: None)
        integrity.check_file(rev_dir, meta, checksums[meta], where)
        sizes = _sizes(rev_dir / meta) or _remote_sizes(registry, name, rev_id, where)
        progress.begin(f"pull {name} {rev_id}", sum(sizes.values()))
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mvm-verify") as pool:
            checks: list[Future[None]] = []
            try:
                for f in sorted(ARTEFACTS, key=lambda a: -sizes[a]):
                    registry.download(revision_key(name, rev_id, f), rev_dir / f, progress.advance)
                    checks.append(
                        pool.submit(integrity.check_file, rev_dir, f, checksums[f], where)
                    )
            finally:
                progress.end()
            for check in checks:
                check.result()  # IntegrityError naming the bad file
        integrity.mark_verified(rev_dir, checksums)
        (rev_dir / integrity.CHECKSUMS).write_bytes(integrity.encode_checksums(checksums))
        got = sum((rev_dir / f).stat().st_size for f in integrity.REVISION_FILES)
        new_record = record is None
        if record is None:
            record = _record_from_revision(name, rev_dir, where)
        store.install_revision(record, stage, rev_id, new_record=new_record)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return got


def _sizes(revision_json: Path) -> dict[str, int] | None:
    """Artefact sizes recorded in a (verified) revision.json, if it has them."""
    try:
        sizes = json.loads(revision_json.read_text())["sizes"]
        out = {a: sizes[a] for a in ARTEFACTS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in out.values())
    return out if ok else None


def _remote_sizes(registry: Registry, name: str, rev_id: str, where: str) -> dict[str, int]:
    sizes = {}
    for f in ARTEFACTS:
        info = registry.stat(revision_key(name, rev_id, f))
        if info is None:
            raise RegistryError(f"{where}: {f} is missing from the registry")
        sizes[f] = info.size
    return sizes


def _record_from_revision(name: str, rev_dir: Path, where: str) -> store.Template:
    """A template record for a template first seen here (settings from its revision.json)."""
    try:
        meta = json.loads((rev_dir / "revision.json").read_text())
        settings = store.Settings.from_json(meta["template"]["settings"], where)
    except (ValueError, KeyError, TypeError, StateError) as exc:
        raise RegistryError(f"{where}: revision.json lacks valid template settings") from exc
    return store.Template(name=name, settings=settings, needs_rebuild=False, origin="registry")
