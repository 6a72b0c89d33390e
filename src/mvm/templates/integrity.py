"""Checksums of template revisions: computing, parsing and verifying them.

A revision directory is trusted only through its ``checksums.json``, which
lists the sha256 of every file that matters (the three boot artefacts and
``revision.json``, whose runtime defaults and flags steer the VM).  The
revision id ends in a prefix of the digest of that checksum list, so an id
names one exact content: two hosts can never publish different bytes under
one id, and a registry cannot swap a checksum list under a known id.

Hashing ~75 MB on every ``up`` would cost more than the boot saves, so a
successful full check leaves a marker (``.verified.json``) keyed on each
file's size, mtime, ctime and inode; a file whose stat still matches is not
re-hashed.  Any write to a file (even one that restores the mtime) changes
its ctime, so tampering always forces a re-hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from mvm.errors import IntegrityError
from mvm.image.builder import sha256_file
from mvm.image.meta import ARTEFACTS, MAX_BYTES, read_capped

REVISION_FILES: tuple[str, ...] = (*ARTEFACTS, "revision.json")
# a revision built with `template build --snapshot` also holds a saved VM (all three or
# none; names as in mvm.runtime.snapshots): checksummed, signed and transferred with it
SNAPSHOT_FILES: tuple[str, ...] = ("snapshot.json", "snapshot.state", "snapshot.ram")
# ...and, for an accessible image, its writable rootfs as saved (mvm.runtime.rootfs)
SNAPSHOT_ROOTFS = "snapshot.rootfs"


def files_of(checksums: dict[str, str]) -> tuple[str, ...]:
    """The files a revision with these checksums holds."""
    if SNAPSHOT_FILES[0] not in checksums:
        return REVISION_FILES
    extra = (SNAPSHOT_ROOTFS,) if SNAPSHOT_ROOTFS in checksums else ()
    return (*REVISION_FILES, *SNAPSHOT_FILES, *extra)


CHECKSUMS = "checksums.json"
MARKER = ".verified.json"
HEX64 = re.compile(r"[0-9a-f]{64}")  # fullmatch only


def parse_checksums(data: Any, where: str) -> dict[str, str]:
    """Validate a decoded ``checksums.json`` (exactly our files, sha256 hex each)."""
    if (
        not isinstance(data, dict)
        or set(data)
        not in (
            set(REVISION_FILES),
            {*REVISION_FILES, *SNAPSHOT_FILES},
            {*REVISION_FILES, *SNAPSHOT_FILES, SNAPSHOT_ROOTFS},
        )
        or not all(isinstance(v, str) and HEX64.fullmatch(v) for v in data.values())
    ):
        raise IntegrityError(
            f"{where}: checksums.json is malformed "
            f"(expected a sha256 for each of {', '.join(REVISION_FILES)}, "
            f"and optionally of {', '.join(SNAPSHOT_FILES)})"
        )
    return {name: str(data[name]) for name in files_of(data)}


def decode_checksums(raw: bytes, where: str) -> dict[str, str]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"{where}: checksums.json is not valid JSON") from exc
    return parse_checksums(data, where)


def encode_checksums(checksums: dict[str, str]) -> bytes:
    return (json.dumps(checksums, indent=2, sort_keys=True) + "\n").encode()


def digest(checksums: dict[str, str]) -> str:
    """Content digest of a revision: independent of how checksums.json is formatted."""
    canonical = json.dumps(checksums, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_checksums(directory: Path, where: str) -> dict[str, str]:
    try:
        raw = read_capped(directory / CHECKSUMS, MAX_BYTES)
    except FileNotFoundError:
        raise IntegrityError(f"{where}: checksums.json is missing") from None
    except OSError as exc:
        raise IntegrityError(f"{where}: cannot read checksums.json: {exc.strerror or exc}") from exc
    return decode_checksums(raw, where)


def compute(directory: Path) -> dict[str, str]:
    names = REVISION_FILES
    if (directory / SNAPSHOT_FILES[0]).exists():
        names = (*REVISION_FILES, *SNAPSHOT_FILES)
        if (directory / SNAPSHOT_ROOTFS).exists():
            names = (*names, SNAPSHOT_ROOTFS)
    return {name: sha256_file(directory / name) for name in names}


def _ident(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_marker(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_capped(directory / MARKER, MAX_BYTES))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_marker(directory: Path, marker: dict[str, Any]) -> None:
    """Best effort: a read-only revision is simply re-hashed next time."""
    with contextlib.suppress(OSError):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{MARKER}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(marker, f)
            os.replace(tmp, directory / MARKER)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def check_file(directory: Path, name: str, expected: str, where: str) -> None:
    """Hash one file; raise ``IntegrityError`` naming it if it does not match."""
    try:
        actual = sha256_file(directory / name)
    except FileNotFoundError:
        raise IntegrityError(f"{where}: {name} is missing") from None
    except OSError as exc:
        raise IntegrityError(f"{where}: cannot read {name}: {exc.strerror}") from exc
    if actual != expected:
        raise IntegrityError(
            f"{where}: {name} does not match checksums.json "
            f"(sha256 {actual[:16]}…, expected {expected[:16]}…)",
            hint="the file was modified or corrupted; pull or rebuild the template",
        )


def verify_dir(directory: Path, checksums: dict[str, str], *, where: str, cached: bool) -> int:
    """Check every file against ``checksums``; raise ``IntegrityError`` naming the bad one.

    With ``cached``, files whose stat matches the last successful check are
    not re-hashed.  Returns the number of bytes actually hashed.
    """
    marker = _read_marker(directory) if cached else {}
    fresh: dict[str, Any] = {}
    hashed = 0
    for name in files_of(checksums):
        path = directory / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise IntegrityError(f"{where}: {name} is missing") from None
        except OSError as exc:
            raise IntegrityError(f"{where}: cannot read {name}: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):  # a FIFO would hang the hash, a symlink leads out
            raise IntegrityError(f"{where}: {name} is not a regular file")
        entry = [*_ident(st), checksums[name]]
        if cached and marker.get(name) == entry:
            fresh[name] = entry
            continue
        check_file(directory, name, checksums[name], where)
        hashed += st.st_size
        fresh[name] = entry
    if fresh != marker:
        _write_marker(directory, fresh)
    return hashed


def mark_verified(directory: Path, checksums: dict[str, str]) -> None:
    """Record that the files were just hashed to ``checksums`` (saves a second pass)."""
    marker = {
        name: [*_ident((directory / name).stat()), checksums[name]] for name in files_of(checksums)
    }
    _write_marker(directory, marker)
