"""Push and pull template revisions: the protocol, written once for every backend.

Push (local current revision → registry):
  1. verify the local revision (a damaged one is never published) and sign it
     with this user's key if it carries no valid signature;
  2. check every remote object against the local checksums and sizes (S3:
     the sha256 recorded as object metadata; a local registry re-hashes) and
     upload only what is missing or differs, so an interrupted push resumes
     and a corrupted remote object is repaired (``force``: upload everything);
  3. verify each uploaded object (size + sha256);
  4. write ``signature.json``, then ``checksums.json`` (the revision's commit
     marker),
  5. and only then move ``current``.
A push that dies anywhere before step 5 leaves ``current`` where it was.

Pull (registry → local):
  1. read ``current`` (or the requested revision), its ``checksums.json`` and
     ``signature.json`` (small objects, capped at 1 MiB each); check the id
     against the checksums and, when trust is configured, refuse a revision
     not signed by a trusted key before anything is downloaded;
  2. if the local copy has the same checksums and verifies, download nothing;
  3. else download ``revision.json``, check its sha256 and validate it
     (:class:`mvm.image.meta.ImageMeta`) *before* anything else; download each
     artefact into a staging directory, capped at the size ``revision.json``
     records (a registry serving more is cut off), recompute every sha256,
     and install with one ``rename``; ``current`` moves last.  An interrupted
     or corrupted pull leaves no usable-looking template (the staging
     directory is swept by the next pull or build).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mvm.errors import (
    ConflictError,
    IntegrityError,
    MetadataError,
    NotFoundError,
    RegistryError,
    TemplateError,
)
from mvm.image.meta import ARTEFACTS, ImageMeta
from mvm.templates import integrity, signing, store, trust
from mvm.templates.registry.base import (
    SMALL_OBJECT_MAX,
    NullProgress,
    Progress,
    Registry,
    current_key,
    revision_key,
    revisions_key,
)
from mvm.templates.signing import SIGNATURE

META = "revision.json"
SPACE_MARGIN = 64 << 20  # keep this much free beyond a pull's bytes


@dataclass(frozen=True)
class TransferResult:
    """What a push or pull did; ``bytes`` counts artefact bytes actually moved."""

    name: str
    revision: str
    bytes: int
    files: int
    seconds: float
    moved_current: bool
    repaired: bool = False  # push: the registry had this revision, but damaged
    signer: str | None = None

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def push(
    name: str, registry: Registry, *, force: bool = False, progress: Progress | None = None
) -> TransferResult:
    """Publish the current local revision of ``name`` and make it the registry's current.

    ``force`` uploads every object even when the registry's copy checks out.
    """
    progress = progress or NullProgress()
    started = time.monotonic()
    rev = store.verify(name, cached=True)
    checksums = rev.checksums
    sizes = rev.sizes()
    prov = signing.ensure_signed(rev.path, name, rev.id, checksums)
    sig_raw = signing.read_local(rev.path) or b""
    remote_current = _read_current(registry, name, missing_ok=True)
    committed = _same_checksums(registry, name, rev.id, checksums)
    todo = [
        f
        for f in integrity.files_of(checksums)
        if force
        or not registry.verify_object(revision_key(name, rev.id, f), sizes[f], checksums[f])
    ]
    sent = 0
    if todo:
        progress.begin(f"push {name} {rev.id}", sum(sizes[f] for f in todo))
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
    sig_key = revision_key(name, rev.id, SIGNATURE)
    if force or registry.get_bytes(sig_key) != sig_raw:
        registry.put_bytes(sig_key, sig_raw)
    if force or todo or not committed:
        registry.put_bytes(
            revision_key(name, rev.id, integrity.CHECKSUMS), integrity.encode_checksums(checksums)
        )
    moved = remote_current != rev.id
    if moved or force:
        registry.put_bytes(current_key(name), (rev.id + "\n").encode())
    return TransferResult(name, rev.id, sent, len(todo), time.monotonic() - started, moved,
                          repaired=committed and bool(todo) and not force,
                          signer=prov.signer)  # fmt: skip


def _same_checksums(registry: Registry, name: str, rev_id: str, checksums: dict[str, str]) -> bool:
    """Whether the registry has committed this revision with these checksums."""
    raw = registry.get_bytes(revision_key(name, rev_id, integrity.CHECKSUMS))
    if raw is None:
        return False
    try:
        return integrity.decode_checksums(raw, registry.description) == checksums
    except IntegrityError:
        return False


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
    if not store.REV_RE.fullmatch(text):
        if missing_ok:
            return None
        raise RegistryError(f"registry {registry.description}: current of {name} is invalid")
    return text


def resolve_remote(name: str, registry: Registry, ref: str) -> str:
    """A full revision id, or ``rN`` matched against the registry's revisions."""
    if store.REV_RE.fullmatch(ref):
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
    store.validate_name(name)
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
    sig_raw = registry.get_bytes(revision_key(name, rev_id, SIGNATURE))
    remote = signing.check(sig_raw, name, rev_id, checksums, where)
    policy = trust.load_policy()
    with store.lock(name):
        record = store.load(name) if store.exists(name) else None
        local = _have(name, rev_id, checksums) if record is not None else None
        if local is not None:
            mine = store.provenance(local)
            policy.enforce(mine if policy.trusted(mine) else remote, where)
            if remote.signer and not mine.signer and sig_raw:
                signing.write_local(local.path, sig_raw)
            moved = store.current_id(name) != rev_id
            if moved:
                store.set_current(name, rev_id)
            return TransferResult(name, rev_id, 0, 0, time.monotonic() - started, moved,
                                  signer=mine.signer or remote.signer)  # fmt: skip
        policy.enforce(remote, where)
        sig = sig_raw if remote.signer else None
        got = _download(name, registry, rev_id, checksums, record, where, progress, sig)
    return TransferResult(name, rev_id, got, len(integrity.files_of(checksums)),
                          time.monotonic() - started, True, signer=remote.signer)  # fmt: skip


def _have(name: str, rev_id: str, checksums: dict[str, str]) -> store.Revision | None:
    """The local copy of ``rev_id`` if it is intact (then nothing needs downloading)."""
    try:
        rev = store.load_revision(name, rev_id)
        if rev.checksums != checksums:
            return None
        return store.verify(name, rev_id, cached=True)
    except (NotFoundError, IntegrityError, TemplateError, MetadataError):
        return None


def _download(
    name: str,
    registry: Registry,
    rev_id: str,
    checksums: dict[str, str],
    record: store.Template | None,
    where: str,
    progress: Progress,
    signature: bytes | None,
) -> int:
    """Download, verify and install ``rev_id`` (caller holds the template lock).

    revision.json comes first: once its sha256 matches and it validates, its
    ``sizes`` cap every download and give the progress total.  Each artefact
    is hashed in a worker thread while the next one downloads, so
    verification costs almost no wall time.
    """
    stage = store.staging_dir("pull")
    try:
        rev_dir = stage / "revisions" / rev_id if record is None else stage
        rev_dir.mkdir(parents=True, exist_ok=True)
        meta = _fetch_meta(name, registry, rev_id, checksums, where)
        (rev_dir / META).write_bytes(meta[1])
        sizes = meta[0].sizes
        _check_space(stage, sum(sizes.values()), where)
        progress.begin(f"pull {name} {rev_id}", sum(sizes.values()))
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mvm-verify") as pool:
            checks: list[Future[None]] = []
            try:
                for f in sorted(ARTEFACTS, key=lambda a: -sizes[a]):
                    registry.download(revision_key(name, rev_id, f), rev_dir / f,
                                      progress.advance, max_bytes=sizes[f])  # fmt: skip
                    checks.append(
                        pool.submit(integrity.check_file, rev_dir, f, checksums[f], where)
                    )
            finally:
                progress.end()
            for check in checks:
                check.result()  # IntegrityError naming the bad file
        if integrity.SNAPSHOT_FILES[0] in checksums:
            _download_snapshot(name, registry, rev_id, checksums, rev_dir, where, _ignore)
        integrity.mark_verified(rev_dir, checksums)
        (rev_dir / integrity.CHECKSUMS).write_bytes(integrity.encode_checksums(checksums))
        if signature is not None:
            signing.write_local(rev_dir, signature)
        got = sum((rev_dir / f).stat().st_size for f in integrity.files_of(checksums))
        new_record = record is None
        if record is None:
            record = _record_from_revision(name, meta[0])
        store.install_revision(record, stage, rev_id, new_record=new_record)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return got


def _ignore(_n: int) -> None:
    pass


def _download_snapshot(name: str, registry: Registry, rev_id: str, checksums: dict[str, str],
                       rev_dir: Path, where: str,
                       progress: Callable[[int], None]) -> None:  # fmt: skip
    """A revision's saved VM: ``snapshot.json`` first (small, checked), whose recorded
    sizes then cap the state and RAM downloads; every file checked against its sha256."""
    meta_name, *rest = integrity.SNAPSHOT_FILES
    registry.download(revision_key(name, rev_id, meta_name), rev_dir / meta_name, _ignore,
                      max_bytes=SMALL_OBJECT_MAX)  # fmt: skip
    integrity.check_file(rev_dir, meta_name, checksums[meta_name], where)
    try:
        files = json.loads((rev_dir / meta_name).read_bytes())["files"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise RegistryError(f"{where}: {meta_name} is malformed") from None
    if integrity.SNAPSHOT_ROOTFS in checksums:
        rest.append(integrity.SNAPSHOT_ROOTFS)
    for f in rest:
        size = files.get(f) if isinstance(files, dict) else None
        if not isinstance(size, int) or size < 0:
            raise RegistryError(f"{where}: {meta_name} does not record the size of {f}")
        registry.download(revision_key(name, rev_id, f), rev_dir / f, progress, max_bytes=size)
        integrity.check_file(rev_dir, f, checksums[f], where)


def _fetch_meta(name: str, registry: Registry, rev_id: str, checksums: dict[str, str],
                where: str) -> tuple[ImageMeta, bytes]:  # fmt: skip
    """The revision's ``revision.json``: its sha256 checked, then validated."""
    raw = registry.get_bytes(revision_key(name, rev_id, META))
    if raw is None:
        raise RegistryError(f"{where}: {META} is missing from the registry")
    actual = hashlib.sha256(raw).hexdigest()
    if actual != checksums[META]:
        raise IntegrityError(
            f"{where}: {META} does not match checksums.json "
            f"(sha256 {actual[:16]}…, expected {checksums[META][:16]}…)"
        )
    return store.parse_revision_meta(raw, name, where), raw


def _check_space(directory: Path, needed: int, where: str) -> None:
    """Refuse up front rather than fill the disk halfway through a pull."""
    free = shutil.disk_usage(directory).free
    if needed + SPACE_MARGIN > free:
        raise RegistryError(
            f"{where}: not enough free space in {directory.parent}: "
            f"needs {needed / 1e6:.0f} MB, {free / 1e6:.0f} MB free"
        )


def _record_from_revision(name: str, meta: ImageMeta) -> store.Template:
    """A template record for a template first seen here (settings from its revision.json)."""
    assert meta.template is not None  # parse_revision_meta requires it
    settings = store.Settings.from_json(meta.template.settings, f"template {name}")
    return store.Template(name=name, settings=settings, needs_rebuild=False, origin="registry")
