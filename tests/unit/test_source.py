"""copy sources: confined to the project, never followed, FIFOs and devices refused
(without blocking), hashed by content, and copied exactly as hashed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from mvm.errors import BuildError
from mvm.image import source
from mvm.image.hashcache import ContentHashes
from mvm.image.staging import Staging


def nothing(_resolved: str, _rel: str) -> None:
    return None


@pytest.fixture
def project(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    (p / "app" / "sub").mkdir(parents=True)
    (p / "app" / "main.py").write_text("print(1)\n")
    (p / "app" / "sub" / "data").write_bytes(b"\x00" * 10)
    return p


def scan(path: Path, project: Path, hashes: ContentHashes | None = None) -> source.Source:
    return source.scan(path, project, "copy[0].from", hashes or ContentHashes(None))


def test_fifo_is_refused_without_blocking(project: Path) -> None:
    os.mkfifo(project / "app" / "pipe")
    with pytest.raises(BuildError, match=r"copy\[0\].from: 'pipe' is a FIFO"):
        scan(project / "app", project)
    with pytest.raises(BuildError, match="is a FIFO"):
        scan(project / "app" / "pipe", project)


def test_socket_and_device_are_refused(project: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(project / "app" / "sock"))
        with pytest.raises(BuildError, match="'sock' is a socket"):
            scan(project / "app", project)
    os.unlink(project / "app" / "sock")
    if os.geteuid() == 0:
        os.mknod(project / "app" / "zero", 0o020666, os.makedev(1, 5))  # /dev/zero
        with pytest.raises(BuildError, match="'zero' is a character device"):
            scan(project / "app", project)


def test_symlinks_are_kept_not_followed(project: Path, tmp_path: Path) -> None:
    os.symlink("/dev/zero", project / "app" / "zero")
    os.symlink("/etc", project / "app" / "etc")
    os.symlink("../../..", project / "app" / "up")
    src = scan(project / "app", project)
    links = {i.rel: i.target for i in src.items if i.kind == "link"}
    assert links == {"zero": "/dev/zero", "etc": "/etc", "up": "../../.."}
    assert not any(i.rel.startswith("etc/") for i in src.items)
    with Staging(tmp_path / "root") as st:
        source.copy_into(src, st, "/opt/app", nothing)
    root = tmp_path / "root"
    assert os.readlink(root / "opt/app/zero") == "/dev/zero"
    assert (root / "opt/app/sub/data").read_bytes() == b"\x00" * 10


def test_sources_outside_the_project_are_refused(project: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("host")
    os.symlink(tmp_path / "secret", project / "leak")
    for path in (tmp_path / "secret", project / "leak", project / ".." / "secret"):
        with pytest.raises(BuildError, match="outside the project"):
            scan(path, project)


def test_unsafe_names_are_refused(project: Path) -> None:
    (project / "app" / 'a"b').write_text("")
    with pytest.raises(BuildError, match=r"unsupported file name 'a\"b'"):
        scan(project / "app", project)


def test_digest_follows_content_names_and_modes(project: Path) -> None:
    hashes = ContentHashes(None)
    first = scan(project / "app", project, hashes).digest
    assert scan(project / "app", project, hashes).digest == first
    main = project / "app" / "main.py"
    st = main.stat()
    main.write_text("print(2)\n")  # same size, mtime put back: the ctime still moves
    os.utime(main, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = scan(project / "app", project, hashes).digest
    assert second != first
    main.chmod(0o700)
    assert scan(project / "app", project, hashes).digest != second


def test_content_hash_cache_survives_a_reload(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hashes.json"
    hashes = ContentHashes(cache)
    digest = scan(project / "app", project, hashes).digest
    hashes.save()
    assert cache.stat().st_mode & 0o777 == 0o600
    cache_again = ContentHashes(cache)
    assert scan(project / "app", project, cache_again).digest == digest
    cache.write_text("[not a cache")
    assert scan(project / "app", project, ContentHashes(cache)).digest == digest


def test_a_file_changed_after_hashing_is_not_copied(project: Path, tmp_path: Path) -> None:
    src = scan(project / "app", project)
    (project / "app" / "main.py").write_text("print('changed')\n")
    with Staging(tmp_path / "root") as st, pytest.raises(BuildError, match="changed during"):
        source.copy_into(src, st, "/opt/app", nothing)


def test_a_single_file_goes_into_an_existing_directory(project: Path, tmp_path: Path) -> None:
    src = scan(project / "app" / "main.py", project)
    with Staging(tmp_path / "root") as st:
        st.mkdir("/opt")
        source.copy_into(src, st, "/opt", nothing)
        source.copy_into(src, st, "/usr/bin/app", nothing)
    assert (tmp_path / "root/opt/main.py").read_text() == "print(1)\n"
    assert (tmp_path / "root/usr/bin/app").read_text() == "print(1)\n"
