"""What is inside an image, for humans: ``contents.json`` beside the artefacts.

Written at build time from the staging tree (every package with its version,
every file with its size and sha256, every symlink with its target), so that
``mvmctl update`` can say what a rebuild changed, the way the seeds'
``nix store diff-closures`` does: packages added, removed or at another
version, and files added, removed or changed.  It is derived from the build
inputs alone (sorted, no timestamps), so it is as reproducible as the image.

It is informational: no reader trusts it for anything but display, and an
image without one (built before it existed) simply diffs as "unknown".
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvm.state.atomic import atomic_file

CONTENTS = "contents.json"
SCHEMA = 1
MAX_BYTES = 64 << 20


def scan(root: Path, packages: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The manifest of staging tree ``root`` (walked without following symlinks)."""
    files: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(
                os.path.join(dirpath, d))]:  # fmt: skip
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                files[rel] = {"link": os.readlink(full)}
            elif stat.S_ISREG(st.st_mode):
                files[rel] = {"size": st.st_size, "sha256": _sha256(full),
                              "mode": f"{stat.S_IMODE(st.st_mode):04o}"}  # fmt: skip
    return {
        "schema": SCHEMA,
        "packages": dict(sorted(packages)),
        "files": dict(sorted(files.items())),
    }


def write(image_dir: Path, manifest: dict[str, Any]) -> None:
    with atomic_file(image_dir / CONTENTS) as f:
        f.write(json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n")


def load(image_dir: Path) -> dict[str, Any] | None:
    """An image's manifest, or None when it has none (or a malformed one)."""
    path = image_dir / CONTENTS
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read(MAX_BYTES + 1)
    try:
        doc = json.loads(data) if len(data) <= MAX_BYTES else None
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        return None
    if not isinstance(doc.get("packages"), dict) or not isinstance(doc.get("files"), dict):
        return None
    return doc


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class Diff:
    """What changed between two images (``known`` is False when one has no manifest)."""

    known: bool = True
    packages_added: dict[str, str] = field(default_factory=dict)
    packages_removed: dict[str, str] = field(default_factory=dict)
    packages_changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    files_added: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    files_changed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.known and not any((self.packages_added, self.packages_removed,
                                       self.packages_changed, self.files_added,
                                       self.files_removed, self.files_changed))  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "known": self.known,
            "packages": {"added": self.packages_added, "removed": self.packages_removed,
                         "changed": {k: list(v) for k, v in self.packages_changed.items()}},
            "files": {"added": self.files_added, "removed": self.files_removed,
                      "changed": self.files_changed},
        }  # fmt: skip

    def lines(self, limit: int = 40) -> list[str]:
        """Human-readable, closure-diff style."""
        if not self.known:
            return ["  (no contents manifest for the old image: changes unknown)"]
        if self.empty:
            return ["  no changes"]
        out = [f"  {p}: {a} → {b}" for p, (a, b) in sorted(self.packages_changed.items())]
        out += [f"  {p}: ∅ → {v}" for p, v in sorted(self.packages_added.items())]
        out += [f"  {p}: {v} → ∅" for p, v in sorted(self.packages_removed.items())]
        counts = (f"  files: {len(self.files_added)} added, {len(self.files_removed)} removed, "
                  f"{len(self.files_changed)} changed")  # fmt: skip
        detail = [f"    + {f}" for f in self.files_added]
        detail += [f"    - {f}" for f in self.files_removed]
        detail += [f"    ~ {f}" for f in self.files_changed]
        if len(detail) > limit:
            detail = [*detail[:limit], f"    … and {len(detail) - limit} more"]
        return [*out, counts, *detail]


def diff(old: dict[str, Any] | None, new: dict[str, Any] | None) -> Diff:
    if old is None or new is None:
        return Diff(known=False)
    d = Diff()
    op, np = old["packages"], new["packages"]
    d.packages_added = {k: str(np[k]) for k in sorted(set(np) - set(op))}
    d.packages_removed = {k: str(op[k]) for k in sorted(set(op) - set(np))}
    d.packages_changed = {k: (str(op[k]), str(np[k])) for k in sorted(set(op) & set(np))
                          if op[k] != np[k]}  # fmt: skip
    of, nf = old["files"], new["files"]
    d.files_added = sorted(set(nf) - set(of))
    d.files_removed = sorted(set(of) - set(nf))
    d.files_changed = sorted(k for k in set(of) & set(nf) if of[k] != nf[k])
    return d
