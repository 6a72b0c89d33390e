"""Staging: every write lands inside the staging root, whatever symlinks it holds."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mvm.errors import BuildError
from mvm.image.staging import Staging


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    return d


def host_files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_absolute_symlink_resolves_inside_the_root(tmp_path: Path, outside: Path) -> None:
    with Staging(tmp_path / "root") as st:
        st.mkdir("/opt/app")
        st.symlink("/opt/app/evil", str(outside))  # absolute host path
        assert st.write("/opt/app/evil/pwned", b"x", 0o644) == f"{outside}/pwned"
        st.mkdir("/opt/app/evil/sub/deeper")
    assert host_files(outside) == []
    inside = tmp_path / "root" / str(outside).lstrip("/")
    assert (inside / "pwned").read_bytes() == b"x"
    assert (inside / "sub" / "deeper").is_dir()


def test_dotdot_and_relative_symlinks_stop_at_the_root(tmp_path: Path, outside: Path) -> None:
    depth = len(tmp_path.parts) + 3
    with Staging(tmp_path / "root") as st:
        st.mkdir("/a/b")
        st.symlink("/a/b/up", "../" * depth + str(outside).lstrip("/"))
        assert st.write("/a/b/up/f", b"1", 0o600) == f"{outside}/f"
        assert st.write("/../../../../etc/x", b"2", 0o600) == "/etc/x"
    assert host_files(outside) == []
    assert (tmp_path / "root" / "etc" / "x").read_bytes() == b"2"


def test_a_final_symlink_is_replaced_not_followed(tmp_path: Path, outside: Path) -> None:
    victim = outside / "victim"
    victim.write_text("host")
    with Staging(tmp_path / "root") as st:
        st.symlink("/etc/conf", str(victim))
        st.write("/etc/conf", b"guest", 0o600)
        st.symlink("/etc/link", str(victim))
        st.symlink("/etc/link", "/elsewhere")
    assert victim.read_text() == "host"
    assert (tmp_path / "root" / "etc" / "conf").read_bytes() == b"guest"
    assert os.readlink(tmp_path / "root" / "etc" / "link") == "/elsewhere"


def test_symlink_loops_and_files_in_the_way_are_errors(tmp_path: Path) -> None:
    with Staging(tmp_path / "root") as st:
        st.symlink("/loop", "/loop")
        with pytest.raises(BuildError, match="too many levels of symlinks"):
            st.write("/loop/x", b"", 0o600)
        st.write("/file", b"", 0o600)
        with pytest.raises(BuildError, match="is not a directory"):
            st.write("/file/x", b"", 0o600)
        st.mkdir("/dir")
        with pytest.raises(BuildError, match="is a directory"):
            st.write("/dir", b"", 0o600)


def test_replacing_a_symlinked_directory_is_seen_by_later_writes(tmp_path: Path) -> None:
    """The resolved-directory cache must not outlive a symlink it went through."""
    with Staging(tmp_path / "root") as st:
        st.mkdir("/a")
        st.mkdir("/b")
        st.symlink("/d", "/a")
        assert st.write("/d/x", b"", 0o600) == "/a/x"
        st.symlink("/d", "/b")
        assert st.write("/d/y", b"", 0o600) == "/b/y"


def test_modes_are_explicit_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        with Staging(tmp_path / "root") as st:
            st.write("/usr/share/x/f", b"", 0o644)
            st.mkdir("/tmp", 0o1777)
            st.set_times(1)
    finally:
        os.umask(old)
    root = tmp_path / "root"
    assert stat.S_IMODE((root / "usr" / "share" / "x").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "usr/share/x/f").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert {p.lstat().st_mtime for p in root.rglob("*")} == {1.0}


def test_hard_links_stay_inside(tmp_path: Path, outside: Path) -> None:
    (outside / "secret").write_text("host")
    with Staging(tmp_path / "root") as st:
        st.write("/bin/a", b"bin", 0o755)
        st.link("/bin/b", "/bin/a")
        st.symlink("/bin/out", str(outside / "secret"))
        with pytest.raises(BuildError, match="not a file"):
            st.link("/bin/c", "/bin/out")
    assert (tmp_path / "root/bin/b").read_bytes() == b"bin"
    assert (outside / "secret").stat().st_nlink == 1
