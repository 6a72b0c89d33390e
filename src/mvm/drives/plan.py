"""Validate every drive of one start before anything is written: sizes,
file types, names, modes, mount points.  Bad input fails here, so a
failed ``up`` never leaves a half-made drive behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mvm import proc
from mvm.config.guestpaths import name_problem
from mvm.drives.spec import (
    CONFIG_MAX,
    MAX_DATA_VOLUMES,
    SECRETS_MAX,
    DriveFile,
    VolumeKind,
    VolumeSpec,
    _guest,
    _human,
)
from mvm.errors import DriveError


@dataclass
class _Tree:
    """What one drive will hold: host directories plus DriveFiles, checked."""

    kind: VolumeKind
    dirs: list[Path] = field(default_factory=list)
    files: list[DriveFile] = field(default_factory=list)
    size: int | None = None  # explicit capacity
    total: int = 0
    sources: list[str] = field(default_factory=list)

    @property
    def capacity(self) -> int:
        return self.size or (CONFIG_MAX if self.kind == "config" else SECRETS_MAX)


@dataclass
class DrivePlan:
    """Every drive of one start, validated (nothing written yet)."""

    config: _Tree | None = None
    secrets: _Tree | None = None
    data: list[VolumeSpec] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.config or self.secrets or self.data)

    def describe(self) -> list[str]:
        """Volume specs for the VM record (host paths and guest paths only)."""
        out: list[str] = []
        for t in (self.config, self.secrets):
            if t is not None:
                out += t.sources
        return out + [str(v) for v in self.data]


def _walk(top: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, lstat) for everything under ``top``, sorted."""
    for dirpath, dirs, names in os.walk(top):
        dirs.sort()
        for n in sorted(dirs + names):
            full = os.path.join(dirpath, n)
            yield os.path.relpath(full, top), os.lstat(full)


def _check_name(rel: str, where: str) -> None:
    problem = name_problem(where, rel)
    if problem:
        raise DriveError(problem)


def scan_dir(host: Path, kind: str, limit: int | None = None) -> int:
    """Check every entry under ``host`` can go on a drive; return the bytes of its files.

    Only regular files, directories and symlinks; every file readable; when
    ``limit`` is given, no single file larger than it (sizes are ``st_size``,
    so a sparse file counts in full: it would on the drive too).
    """
    total = 0
    for rel, st in _walk(host):
        _check_name(rel, f"volume source {host}")
        full = host / rel
        if stat.S_ISREG(st.st_mode):
            if not os.access(full, os.R_OK):
                raise DriveError(f"volume source {host}: cannot read {rel}: permission denied")
            if limit is not None and st.st_size > limit:
                raise DriveError(
                    f"{kind} drive: {rel} ({_human(st.st_size)}) is larger than the drive "
                    f"({_human(limit)}); give it a size: -v DIR:{_guest(kind)}:SIZE",
                )
            total += st.st_size
        elif stat.S_ISDIR(st.st_mode):
            if not os.access(full, os.R_OK | os.X_OK):
                raise DriveError(f"volume source {host}: cannot read {rel}/: permission denied")
        elif not stat.S_ISLNK(st.st_mode):
            raise DriveError(f"volume source {host}: {rel} is not a file, directory or symlink")
    return total


def _check_drive_file(f: DriveFile, kind: str) -> str:
    name = f.name.strip("/")
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts):
        raise DriveError(f"{kind} file name {f.name!r}: use a relative path without '..'")
    _check_name(name, f"{kind} file")
    if f.mode is not None and not 0 <= f.mode <= 0o777:
        raise DriveError(f"{kind} file {name}: mode {f.mode:#o} out of range (0..0o777)")
    return name


def plan(
    volumes: Sequence[VolumeSpec],
    config_files: Sequence[DriveFile] = (),
    secret_files: Sequence[DriveFile] = (),
) -> DrivePlan:
    """Validate every volume and drive file; write nothing (bad input → DriveError)."""
    out = DrivePlan()
    trees: dict[str, _Tree] = {}
    seen: set[str] = set()
    for v in volumes:
        if v.guest in seen:
            raise DriveError(f"two volumes for {v.guest}")
        seen.add(v.guest)
        if v.kind == "data":
            out.data.append(v)
        elif v.host is None:
            raise DriveError(f"the {v.kind} drive needs a host directory")
        else:
            trees[v.kind] = _Tree(v.kind, dirs=[v.host], size=v.size, sources=[str(v)])
    if len(out.data) > MAX_DATA_VOLUMES:
        raise DriveError(f"at most {MAX_DATA_VOLUMES} data volumes per VM")
    kinds: tuple[tuple[VolumeKind, Sequence[DriveFile]], ...] = (
        ("config", config_files), ("secrets", secret_files),
    )  # fmt: skip
    for kind, files in kinds:
        if not files:
            continue
        tree = trees.setdefault(kind, _Tree(kind))
        names = [_check_drive_file(f, kind) for f in files]
        if len(set(names)) != len(names):
            raise DriveError(f"{kind} files: the same name given twice")
        tree.files = list(files)
        tree.sources.append(f"<{len(files)} file(s)>:{_guest(kind)}")
    for tree in trees.values():
        limit = tree.capacity
        tree.total = sum(scan_dir(d, tree.kind, limit) for d in tree.dirs)
        for f in tree.files:
            n = len(f.data())
            if n > limit:
                raise DriveError(f"{tree.kind} file {f.name} ({_human(n)}) is larger than the "
                                 f"drive ({_human(limit)})")  # fmt: skip
            tree.total += n
        if tree.total > limit:
            raise DriveError(
                f"{tree.kind} drive: {_human(tree.total)} of files do not fit on the "
                f"{_human(limit)} drive; give it a size: -v DIR:{_guest(tree.kind)}:SIZE"
            )
    out.config, out.secrets = trees.get("config"), trees.get("secrets")
    for v in out.data:
        if v.host is None:
            continue  # an empty volume
        total = scan_dir(v.host, "data")
        assert v.size is not None
        if total > v.size * 0.9:
            raise DriveError(f"data volume {v.guest}: {v.host} holds {_human(total)}, which "
                             f"does not fit in {_human(v.size)}")  # fmt: skip
    return out


def check_mountpoints(p: DrivePlan, rootfs_image: Path, home: str) -> None:
    """On a read-only (sealed) rootfs the guest cannot create mount points:
    each data volume's path must exist in the image or lie on a tmpfs
    (the entrypoint's home, /tmp)."""
    for v in p.data:
        if any(v.guest.startswith(t + "/") for t in (home, "/tmp")):
            continue
        res = proc.run(["debugfs", "-R", f'stat "{v.guest}"', rootfs_image], timeout=30,
                       error=DriveError, what="checking the image for mount points")  # fmt: skip
        if b"not found" in res.stderr:
            raise DriveError(
                f"data volume {v.guest}: no such directory in the sealed image "
                f"(its rootfs is read-only); use /data, a path under {home}, or add it to the image"
            )
