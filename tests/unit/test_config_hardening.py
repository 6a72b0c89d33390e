"""Hostile mvm.toml and names: every gap found in issue 9 is a one-line error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mvm import drives
from mvm.config import load_project
from mvm.config.guestpaths import (
    MOUNTED,
    MVM_FILES,
    MVM_TREES,
    name_problem,
    reserved,
    unsafe_name,
)
from mvm.config.schema import Entrypoint, GuestSpec, Uids
from mvm.errors import ConfigError, DriveError
from mvm.image.builder import own_files, source_date_epoch

HEAD = 'name = "a"\n'
EP = '[entrypoint]\ncommand = ["/bin/true"]\n'


def load(tmp_path: Path, top: str = "", tables: str = "") -> GuestSpec:
    (tmp_path / "mvm.toml").write_text(HEAD + top + EP + tables)
    return load_project(tmp_path).spec


def refused(tmp_path: Path, needle: str, top: str = "", tables: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, top, tables)
    msg = info.value.message
    assert needle in msg and "\n" not in msg, msg
    return msg


def test_flake_other_than_dot_is_refused(tmp_path: Path) -> None:
    assert load(tmp_path, 'flake = "."\n').name == "a"
    msg = refused(tmp_path, 'only flake = "." is supported', 'flake = "../web"\n')
    assert "'../web'" in msg and "directory of mvm.toml" in msg
    refused(tmp_path, "flake", "flake = 1\n")


@pytest.mark.parametrize("port", ["99999:80", "80:99999", "0:80", "65536", "8080:80\n"])
def test_ports_out_of_range_are_refused(tmp_path: Path, port: str) -> None:
    escaped = port.replace("\n", "\\n")  # a TOML escape: the value holds a real newline
    refused(tmp_path, "ports", f'ports = ["{escaped}"]\n')


def test_valid_ports_pass(tmp_path: Path) -> None:
    assert load(tmp_path, 'ports = ["1:65535", "8080/udp"]\n').ports == ("1:65535", "8080/udp")


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "mvm.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_project(tmp_path)


@pytest.mark.parametrize(
    ("top", "tables", "needle"),
    [
        ('name = "a\\n"\n', "", "is not allowed"),
        ('packages = ["hello\\n"]\n', "", "not a valid Debian package name"),
        ("", '[services."s\\n"]\ncommand = ["/x"]\n', "service names"),
        ("", '[credentials."c\\n"]\nfile = "x"\n', "credential names"),
    ],
)
def test_a_trailing_newline_never_passes_a_name_check(
    tmp_path: Path, top: str, tables: str, needle: str
) -> None:
    body = top + EP + tables if top.startswith("name") else HEAD + top + EP + tables
    (tmp_path / "mvm.toml").write_text(body)
    with pytest.raises(ConfigError, match=needle):
        load_project(tmp_path)


def test_copy_from_must_stay_inside_the_project(tmp_path: Path) -> None:
    proj = tmp_path / "p"
    (proj / "app").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", proj / "leak")
    os.symlink("/etc/hostname", proj / "host")
    for src in ("/etc", "../outside", "leak", "host", "app/../../outside"):
        msg = refused(proj, "copy[0].from", f'copy = [{{ from = "{src}", to = "/opt" }}]\n')
        assert "relative to the project" in msg or "outside the project" in msg, msg
    assert load(proj, 'copy = [{ from = "app", to = "/opt/app" }]\n').copy[0].src == proj / "app"


def test_copy_from_a_fifo_or_device_is_refused_at_validation(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    refused(
        tmp_path, "not a regular file or a directory", 'copy = [{ from = "pipe", to = "/x" }]\n'
    )
    os.symlink("/dev/zero", tmp_path / "zero")
    refused(tmp_path, "outside the project", 'copy = [{ from = "zero", to = "/x" }]\n')


@pytest.mark.parametrize(
    "dest",
    ["/init", "/etc/mvm", "/etc/mvm/spec.sh", "/usr/local/bin/mvm-guest-agent", "/etc/passwd",
     "/bin/busybox", "/lib/modules/mvm/x.ko", "/tmp/x", "/run", "/proc/x", "/home/app/.rc"],
)  # fmt: skip
def test_reserved_destinations_are_refused(tmp_path: Path, dest: str) -> None:
    (tmp_path / "app").mkdir(exist_ok=True)
    refused(tmp_path, f"{dest!r} is", f'copy = [{{ from = "app", to = "{dest}" }}]\n')
    refused(tmp_path, f"{dest!r} is", "", f'[files."{dest}"]\ncontent = "x"\n')


def test_home_is_fine_when_accessible_and_reserved_when_sealed(tmp_path: Path) -> None:
    files = '[files."/root/.profile"]\ncontent = "x"\n'
    assert load(tmp_path, "dev = true\n", files).files[0].path == "/root/.profile"
    refused(tmp_path, "private tmpfs", "dev = false\n[uids]\nentrypoint = 0\n", files)


def test_image_paths_with_quotes_or_control_characters_are_refused(tmp_path: Path) -> None:
    evil = '/etc/x\\"\\ndump /etc/shadow /tmp/stolen\\n'
    msg = refused(tmp_path, "control characters", "", f'[files."{evil}"]\ncontent = "x"\n')
    assert "\n" not in msg
    (tmp_path / "app").mkdir()
    refused(tmp_path, "control characters", 'copy = [{ from = "app", to = "/opt/a\\tb" }]\n')


def test_kernel_path_must_be_a_kernel(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a kernel")
    refused(tmp_path, "is not a Linux kernel", 'kernel = "notes.txt"\n')
    (tmp_path / "vmlinux").write_bytes(b"\x7fELF" + b"\0" * 600)
    assert load(tmp_path, 'kernel = "vmlinux"\n').kernel.path == tmp_path / "vmlinux"


def test_every_file_mvm_writes_is_reserved() -> None:
    spec = GuestSpec("a", Entrypoint("command", command=("/x",)), uids=Uids(990, 1000))
    paths = [f.path for f in own_files(spec, [("virtio_console", b"\x7fELF")])]
    assert "/init" in paths and "/etc/passwd" in paths
    for p in [*paths, *MVM_FILES]:
        assert reserved(p) == "is written by mvm itself", p
    assert all(reserved(t + "/x") for t in (*MVM_TREES, *MOUNTED))
    assert reserved("/etc") is None and reserved("/opt/app") is None and reserved("/tmpx") is None


def test_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch() == 1
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date_epoch() == 1700000000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert source_date_epoch() == 1  # e2fsprogs reads 0 as "unset"
    for bad in ("-1", "1e9", "99999999999", "12\n"):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
        with pytest.raises(ConfigError, match="SOURCE_DATE_EPOCH"):
            source_date_epoch()


def test_unsafe_names_are_one_shared_check() -> None:
    for bad in ('a"b', "a\\b", "a\nb", "a\x7f", "a\x85", "\udcff", "/x" * 2048):
        assert unsafe_name(bad), repr(bad)
        problem = name_problem("where", bad)
        assert problem and "\n" not in problem and problem.startswith("where: ")
    for good in ("/opt/app/main.py", "naïve ünïcode", "a b", "x" * 255):
        assert not unsafe_name(good) and name_problem("where", good) is None


def test_drive_paths_and_sizes_must_match_whole(tmp_path: Path) -> None:
    with pytest.raises(DriveError, match="invalid guest path"):
        drives.check_guest_path("/data\n")
    with pytest.raises(DriveError, match="malformed size"):
        drives.parse_size("1G\nx")
    with pytest.raises(DriveError, match="unsupported file name"):
        drives.scan_dir(_with_file(tmp_path, 'q"uote'), "config")


def _with_file(d: Path, name: str) -> Path:
    (d / name).write_text("")
    return d
