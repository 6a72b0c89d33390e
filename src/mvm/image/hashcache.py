"""sha256 of file contents, remembered by what ``fstat`` says about the file.

The input hash is computed on every ``mvmctl run`` and must stay a few
milliseconds, yet it should depend on *content* (busybox's bytes, the
project's ``copy`` files), not on host details like an mtime.  A content
hash is reused while the file's (device, inode, size, mtime, ctime) are
unchanged: any write changes the ctime, even one that restores the mtime,
and no user can set a ctime.

The cache is a private JSON file in ``MVM_CACHE`` (shared by every home of
one user, like the kernels); a missing or damaged one is simply empty, and
it is written (atomically) only when a hash was computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from mvm.errors import StateError
from mvm.log import get_logger
from mvm.state.atomic import atomic_file

log = get_logger(__name__)
MAX_ENTRIES = 20_000  # ≈2 MB of JSON: loading it stays a few ms
CHUNK = 1 << 20


def _key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class ContentHashes:
    """A (device, inode) → (size, mtime, ctime, sha256) map backed by ``path``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, list[object]] = {}
        self._dirty = False
        if path is None:
            return
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError):
            return
        if isinstance(data, dict):
            self._entries = {
                k: v for k, v in data.items()
                if isinstance(v, list) and len(v) == 4 and isinstance(v[3], str)
            }  # fmt: skip

    def of_fd(self, fd: int, st: os.stat_result) -> str:
        """The sha256 of the open regular file ``fd`` whose ``fstat`` is ``st``."""
        key, stamp = _key(st), _stamp(st)
        hit = self._entries.get(key)
        if hit is not None and hit[:3] == stamp:
            return str(hit[3])
        h = hashlib.sha256()
        with os.fdopen(os.dup(fd), "rb") as f:
            f.seek(0)
            while chunk := f.read(CHUNK):
                h.update(chunk)
        self._entries.pop(key, None)  # re-insert last: the oldest entries are pruned first
        self._entries[key] = [*stamp, h.hexdigest()]
        self._dirty = True
        return h.hexdigest()

    def save(self) -> None:
        """Write the cache if it changed; a failure only costs the next run a re-hash."""
        if not self._dirty or self.path is None:
            return
        keep = dict(list(self._entries.items())[-MAX_ENTRIES:])
        with contextlib.suppress(OSError, StateError):
            with atomic_file(self.path, 0o600) as f:
                f.write(json.dumps(keep, separators=(",", ":")).encode())
            self._dirty = False
