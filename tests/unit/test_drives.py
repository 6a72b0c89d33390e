"""Drive specs, limits and images (real mkfs.ext4/debugfs, no VM)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from mvm import drives
from mvm.drives import DriveFile, VolumeSpec, parse_size, parse_volume, plan
from mvm.errors import DriveError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    d = tmp_path / "cfg"
    (d / "sub").mkdir(parents=True)
    (d / "app.json").write_text("{}\n")
    (d / "sub" / "x.txt").write_text("x")
    return d


def debugfs_ls(image: Path, path: str = "/") -> dict[str, tuple[int, int, int]]:
    """name → (mode, uid, gid) of the entries of ``path`` in ``image``."""
    out = subprocess.run(["debugfs", "-R", f"ls -l {path}", str(image)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    entries = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 8 and f[-1] not in (".", ".."):
            entries[f[-1]] = (int(f[1], 8), int(f[3]), int(f[4]))
    return entries


@pytest.mark.parametrize(
    ("text", "n"),
    [("512K", 512 << 10), ("64M", 64 << 20), ("1G", 1 << 30), ("2GiB", 2 << 30), ("4096", 4096),
     ("1t", 1 << 40)],
)  # fmt: skip
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "12Q", "M", "-1G", "1.5G", "0", "2T"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(DriveError):
        parse_size(text)


def test_parse_volume_kinds(tree: Path) -> None:
    assert parse_volume(f"{tree}:/mnt/config").kind == "config"
    sec = parse_volume(f"{tree}:/mnt/secrets:4M")
    assert sec.kind == "secrets" and sec.size == 4 << 20
    data = parse_volume(f"{tree}:/srv/data:1G")
    assert data.kind == "data" and data.size == 1 << 30 and data.guest == "/srv/data"
    assert str(data) == f"{tree}:/srv/data:1G"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{t}/missing:/mnt/config", "no such directory"),
        ("{t}/app.json:/mnt/config", "is a file"),
        ("{t}:/data", "needs a size"),
        ("{t}:/data:12Q", "malformed size"),
        ("{t}:/data:1M", "at least 8M"),
        ("{t}:/mnt/config:1K", "at least 1M"),
        ("{t}", "HOST_DIR:/guest/path"),
        ("{t}:relative:1G", "HOST_DIR:/guest/path"),
        ("{t}:/proc/x:1G", "system directory"),
        ("{t}:/etc:1G", "system directory"),
        ("{t}:/a/../etc:1G", "'..'"),
        ("{t}:/with space:1G", "invalid guest path"),
    ],
)
def test_parse_volume_rejects(tree: Path, spec: str, message: str) -> None:
    with pytest.raises(DriveError, match=message):
        parse_volume(spec.format(t=tree))


def test_plan_limits(tree: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "huge", "wb") as f:
        f.truncate(drives.SECRETS_MAX + 1)
    with pytest.raises(DriveError, match=r"huge .* larger than the drive"):
        plan([VolumeSpec(big, "/mnt/secrets")])
    plan([VolumeSpec(big, "/mnt/secrets", size=32 << 20)])  # an explicit size makes room
    with pytest.raises(DriveError, match="two volumes"):
        plan([VolumeSpec(tree, "/mnt/config"), VolumeSpec(tree, "/mnt/config")])
    with pytest.raises(DriveError, match="larger than the drive"):
        plan([], secret_files=[DriveFile("x", b"0" * (drives.SECRETS_MAX + 1))])
    with pytest.raises(DriveError, match="does not fit"):
        plan([VolumeSpec(big, "/data", size=8 << 20)])


@pytest.mark.parametrize("name", ["", "../x", "a/../b", "/", 'qu"ote', "new\nline"])
def test_drive_file_names(name: str) -> None:
    with pytest.raises(DriveError):
        plan([], config_files=[DriveFile(name, "x")])


def test_drive_file_hides_content() -> None:
    assert "s3cr3t" not in repr(DriveFile("a.env", "KEY=s3cr3t"))


def test_special_files_rejected(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    os.mkfifo(d / "fifo")
    with pytest.raises(DriveError, match="not a file, directory or symlink"):
        plan([VolumeSpec(d, "/mnt/config")])


def test_materialise_modes_owners_and_letters(tree: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    p = plan(
        [VolumeSpec(tree, "/mnt/config")],
        config_files=[DriveFile("extra/y.txt", "y", mode=0o640)],
        secret_files=[DriveFile("a.env", "K=v"), DriveFile("tls/key", b"\0k")],
    )
    att = drives.materialise(p, run_dir, vm="vm1", uid=1000)
    assert att.cmdline == ("mvm.drives=vdb:config:/mnt/config,vdc:secrets:/mnt/secrets",)
    cfg, sec = (d.path for d in att.drives)
    assert stat.S_IMODE((run_dir / "drives").stat().st_mode) == 0o700
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600
    assert sorted(os.listdir(run_dir / "drives")) == ["config.ext4", "secrets.ext4"]  # no staging
    root = debugfs_ls(cfg)
    assert set(root) == {"app.json", "sub", "extra"}  # no lost+found
    assert root["app.json"] == (0o100444, 0, 0) and root["sub"] == (0o40555, 0, 0)
    assert debugfs_ls(cfg, "/extra")["y.txt"] == (0o100640, 0, 0)
    sroot = debugfs_ls(sec)
    assert sroot["a.env"] == (0o100400, 1000, 1000) and sroot["tls"] == (0o40500, 1000, 1000)
    assert debugfs_ls(sec, "/tls")["key"] == (0o100400, 1000, 1000)
    assert all(d.readonly for d in att.drives)


def test_placeholders_keep_letters(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "home"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    att = drives.materialise(plan([VolumeSpec(tree, "/data", 16 << 20)]), run_dir, vm="v", uid=7)
    assert [d.path.name for d in att.drives][:2] == ["placeholder.img", "placeholder.img"]
    assert att.drives[0].path.stat().st_size == 0
    assert att.cmdline == ("mvm.drives=vdd:data:/data",)
    att2 = drives.materialise(plan([], secret_files=[DriveFile("s", "v")]), run_dir, vm="v", uid=7)
    assert [d.path.name for d in att2.drives] == ["placeholder.img", "secrets.ext4"]


def test_data_volume_created_once_grown_never_shrunk(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "home"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    vol = VolumeSpec(tree, "/srv/data", 16 << 20)
    att = drives.materialise(plan([vol]), run_dir, vm="v1", uid=1000)
    image = att.drives[-1].path
    assert att.created == [image] and not att.drives[-1].readonly
    assert image == drives.volume_image("v1", "/srv/data")
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    assert debugfs_ls(image)["app.json"][1:] == (1000, 1000)
    again = drives.materialise(plan([vol]), run_dir, vm="v1", uid=1000)
    assert again.created == []  # reused, not re-seeded
    bigger = VolumeSpec(tree, "/srv/data", 32 << 20)
    drives.materialise(plan([bigger]), run_dir, vm="v1", uid=1000)
    assert image.stat().st_size == 32 << 20
    with pytest.raises(DriveError, match="cannot shrink"):
        drives.materialise(plan([vol]), run_dir, vm="v1", uid=1000)
    att.discard_created()
    assert not image.exists()
