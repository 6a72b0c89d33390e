"""The private rootfs copy of an accessible VM (mvm.runtime.rootfs): exact bytes,
holes kept, 0600, never a half copy at the destination."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mvm.runtime import rootfs
from mvm.runtime.snapshots import ROOTFS
from mvm.templates import integrity


def test_clone_is_exact_sparse_and_private(tmp_path: Path) -> None:
    src = tmp_path / "rootfs.ext4"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(b"a" * 4096)
        f.seek(40 << 20)
        f.write(os.urandom(100_000))
    dst = tmp_path / "run" / rootfs.FILE
    dst.parent.mkdir()
    rootfs.clone(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_mode & 0o777 == 0o600
    assert dst.stat().st_blocks * 512 < 8 << 20  # holes stay holes
    assert [p.name for p in dst.parent.iterdir()] == [rootfs.FILE]


def test_failed_clone_leaves_nothing(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    with pytest.raises(FileNotFoundError):
        rootfs.clone(tmp_path / "missing", dst)
    assert list(tmp_path.iterdir()) == []


def test_snapshot_rootfs_is_part_of_a_revision() -> None:
    assert integrity.SNAPSHOT_ROOTFS == ROOTFS
    base = {f: "0" * 64 for f in (*integrity.REVISION_FILES, *integrity.SNAPSHOT_FILES)}
    assert ROOTFS not in integrity.files_of(base)
    with_rootfs = {**base, ROOTFS: "1" * 64}
    assert integrity.files_of(with_rootfs)[-1] == ROOTFS
    assert integrity.parse_checksums(with_rootfs, "t") == with_rootfs
