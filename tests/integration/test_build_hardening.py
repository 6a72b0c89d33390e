"""Hostile projects against real builds (issue 9): nothing is written or read
outside the project and the image, bad input is one clear line, and the same
inputs give the same bytes in private files.

Each build here has no Debian package unless it says so (≈0.5 s each); the
reproducibility test installs ``hello`` (libc6 included).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvm import drives
from mvm.config import load_project
from mvm.errors import BuildError
from mvm.image import builder, debian
from mvm.image.staging import Staging
from tests.conftest import REPO, mvmctl, write_project

pytestmark = pytest.mark.integration

EP = '[entrypoint]\ncommand = ["/bin/true"]\n'


def image_stat(image: Path, path: str) -> str:
    """``debugfs stat`` of ``path`` inside the ext4 ``image`` ("" when missing)."""
    res = subprocess.run(["debugfs", "-R", f'stat "{path}"', str(image)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    return "" if "not found" in res.stderr else res.stdout


def one_line_error(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode != 0, res.stdout
    assert res.stderr.startswith("mvmctl: error: ") and "Traceback" not in res.stderr, res.stderr
    first = res.stderr.splitlines()[0]
    assert needle in first, res.stderr
    assert all(line.startswith(("mvmctl: error:", "hint:")) for line in res.stderr.splitlines())


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory on the host that no build may touch.  Not under /tmp: in the
    image that path would be refused as hidden by the guest's /tmp tmpfs."""
    d = Path(tempfile.mkdtemp(prefix="mvm-host-target-", dir="/var/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def untouched(d: Path) -> bool:
    return not any(d.iterdir())


# -- 1. writes through symlinks ------------------------------------------------------


def test_writes_through_copied_symlinks_stay_in_the_image(tmp_path: Path, host_dir: Path) -> None:
    proj = tmp_path / "p"
    (proj / "app").mkdir(parents=True)
    (proj / "more").mkdir()
    (proj / "more" / "later").write_text("from the second copy")
    os.symlink(host_dir, proj / "app" / "evil")  # absolute host path
    os.symlink("../" * 12 + str(host_dir).lstrip("/"), proj / "app" / "rel")
    write_project(proj, 'name = "symlinks"\n'
                  'copy = [{ from = "app", to = "/opt/app" }, { from = "more", to = "/opt/app/evil" }]\n'
                  + EP + '[files."/opt/app/evil/pwned"]\ncontent = "x"\n'
                  '[files."/opt/app/rel/sub/pwned2"]\ncontent = "y"\n')  # fmt: skip
    image = builder.build(load_project(proj))
    assert untouched(host_dir), sorted(p.name for p in host_dir.iterdir())
    for name in ("pwned", "sub/pwned2", "later"):  # resolved inside the image, as the guest would
        assert "Type: regular" in image_stat(image.rootfs, f"{host_dir}/{name}"), name
    assert f'Fast link dest: "{host_dir}"' in image_stat(image.rootfs, "/opt/app/evil")


def test_drive_files_never_follow_a_symlink_of_the_host_directory(
    tmp_path: Path, host_dir: Path
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    os.symlink(host_dir, conf / "sub")
    plan = drives.plan([drives.parse_volume(f"{conf}:/mnt/config")],
                       config_files=[drives.DriveFile("sub/app.json", "{}")])  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    drives.materialise(plan, run_dir, vm="t", uid=1000)
    assert untouched(host_dir)


def test_debian_packages_never_write_through_each_others_symlinks(
    tmp_path: Path, host_dir: Path
) -> None:
    """Two real .debs: the first ships usr/lib/x -> HOST_DIR, the second usr/lib/x/f
    (``dpkg-deb -x`` of both into one tree writes HOST_DIR/f)."""
    first, second = tmp_path / "a", tmp_path / "b"
    for d, name in ((first, "mvm-test-a"), (second, "mvm-test-b")):
        (d / "DEBIAN").mkdir(parents=True)
        (d / "DEBIAN" / "control").write_text(
            f"Package: {name}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
        )
        (d / "usr" / "lib").mkdir(parents=True)
    os.symlink(host_dir, first / "usr" / "lib" / "x")
    (second / "usr" / "lib" / "x").mkdir()
    (second / "usr" / "lib" / "x" / "f").write_text("package file")
    debs = []
    for d in (first, second):
        subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(d), f"{d}.deb"],
                       check=True, capture_output=True)  # fmt: skip
        debs.append(Path(f"{d}.deb"))
    with Staging(tmp_path / "root") as st:
        debian.extract(debs, st)
    assert untouched(host_dir)
    assert (tmp_path / "root" / str(host_dir).lstrip("/") / "f").read_text() == "package file"
    # a package file name that could inject debugfs commands is refused, naming the file
    bad = tmp_path / "c"
    (bad / "DEBIAN").mkdir(parents=True)
    (bad / "DEBIAN" / "control").write_text(
        "Package: mvm-test-c\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
    )
    (bad / 'x"y').write_text("")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(bad), f"{bad}.deb"],
                   check=True, capture_output=True)  # fmt: skip
    with Staging(tmp_path / "root2") as st, pytest.raises(BuildError, match=r"'/x\"y'"):
        debian.extract([Path(f"{bad}.deb")], st)


# -- 2. copy sources confined, no FIFO or device ----------------------------------------


def test_copy_sources_outside_the_project_are_refused(tmp_path: Path) -> None:
    proj = tmp_path / "p"
    proj.mkdir()
    os.symlink("/etc", proj / "leak")
    for src in ("/etc/hostname", "../..", "leak"):
        write_project(proj, f'name = "x"\ncopy = [{{ from = "{src}", to = "/opt/x" }}]\n' + EP)
        one_line_error(mvmctl("build", str(proj)), "copy[0].from")
    assert not (Path(os.environ["MVM_HOME"]) / "images").exists()


def test_fifo_and_device_in_a_copy_tree_fail_fast_and_a_device_symlink_is_kept(
    tmp_path: Path,
) -> None:
    proj = tmp_path / "p"
    (proj / "app").mkdir(parents=True)
    os.symlink("/dev/zero", proj / "app" / "zero")
    write_project(proj, 'name = "fifo"\ncopy = [{ from = "app", to = "/opt/app" }]\n' + EP)
    image = builder.build(load_project(proj))  # the symlink is copied, never read
    assert 'Fast link dest: "/dev/zero"' in image_stat(image.rootfs, "/opt/app/zero")
    os.mkfifo(proj / "app" / "pipe")
    one_line_error(mvmctl("build", str(proj), timeout=60), "'pipe' is a FIFO")
    os.unlink(proj / "app" / "pipe")
    if os.geteuid() == 0:
        os.mknod(proj / "app" / "dev", 0o020666, os.makedev(1, 5))
        one_line_error(mvmctl("build", str(proj), timeout=60), "'dev' is a character device")


# -- 3. debugfs command injection -------------------------------------------------------


def test_file_names_cannot_inject_debugfs_commands(tmp_path: Path, host_dir: Path) -> None:
    stolen = host_dir / "stolen"
    inject = f'/etc/x\\"\\ndump /etc/hostname {stolen}\\n#'
    proj = write_project(tmp_path / "p", 'name = "inject"\n' + EP +
                         f'[files."{inject}"]\ncontent = "x"\n')  # fmt: skip
    one_line_error(mvmctl("build", str(proj)), "control characters and paths over 4095 bytes")
    assert not stolen.exists()
    # a name in a copy tree (no "/" in a name: dump the image's /init to the cwd)
    (proj / "app").mkdir()
    (proj / "app" / 'x"\ndump init mvm-stolen\n').write_text("")
    write_project(proj, 'name = "inject"\ncopy = [{ from = "app", to = "/opt/app" }]\n' + EP)
    one_line_error(mvmctl("build", str(proj)), "unsupported file name 'x\"\\ndump init")
    assert not Path("mvm-stolen").exists()


# -- 4. reserved guest paths ------------------------------------------------------------


def test_project_files_cannot_land_on_paths_mvm_writes(tmp_path: Path) -> None:
    proj = tmp_path / "p"
    (proj / "app").mkdir(parents=True)
    write_project(proj, 'name = "r"\ncopy = [{ from = "app", to = "/init" }]\n' + EP)
    one_line_error(mvmctl("validate", str(proj)), "'/init' is written by mvm itself")
    # a tree copied to / that holds etc/mvm/spec.sh
    (proj / "root" / "etc" / "mvm").mkdir(parents=True)
    (proj / "root" / "etc" / "mvm" / "spec.sh").write_text("MVM_UID=0\n")
    write_project(proj, 'name = "r"\ncopy = [{ from = "root", to = "/" }]\n' + EP)
    one_line_error(mvmctl("build", str(proj)), "'etc/mvm/spec.sh' is written to '/etc/mvm/spec.sh'")
    # a symlink into /etc/mvm, then [files] through it
    os.symlink("/etc/mvm", proj / "app" / "cfg")
    write_project(proj, 'name = "r"\ncopy = [{ from = "app", to = "/opt" }]\n' + EP +
                  '[files."/opt/cfg/spec.sh"]\ncontent = "MVM_UID=0"\n')  # fmt: skip
    with pytest.raises(BuildError, match=re.escape("'/etc/mvm/spec.sh', which is written by mvm")):
        builder.build(load_project(proj))


# -- 5. validation through the CLI ------------------------------------------------------


def test_validate_reports_config_gaps_in_one_line(tmp_path: Path) -> None:
    proj = write_project(tmp_path / "p", 'name = "v"\nflake = "../web"\n' + EP)
    one_line_error(mvmctl("validate", str(proj)), 'only flake = "." is supported')
    write_project(proj, 'name = "v"\nports = ["99999:80"]\n' + EP)
    one_line_error(mvmctl("validate", str(proj)), "ports are 1-65535")
    (proj / "mvm.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    one_line_error(mvmctl("validate", str(proj)), "nested too deeply")


# -- 6 + 8. reproducible, private ------------------------------------------------------


def digests(image: builder.Image) -> dict[str, str]:
    return {a: hashlib.sha256((image.path / a).read_bytes()).hexdigest() for a in builder.ARTEFACTS}


def group_or_other_bits(home: Path) -> list[str]:
    bad = []
    for dirpath, dirs, files in os.walk(home):
        for p in [dirpath, *(os.path.join(dirpath, n) for n in dirs + files)]:
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                bad.append(f"{stat.S_IMODE(st.st_mode):04o} {p}")
    return bad


def test_two_builds_from_scratch_are_byte_identical_and_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj = tmp_path / "p"
    (proj / "app" / "sub").mkdir(parents=True)
    (proj / "app" / "run.sh").write_text("#!/bin/sh\nhello\n")
    (proj / "app" / "run.sh").chmod(0o755)
    (proj / "app" / "sub" / "data").write_bytes(os.urandom(50_000))
    os.symlink("run.sh", proj / "app" / "link")
    write_project(proj, 'name = "repro"\npackages = ["hello"]\n'
                  'copy = [{ from = "app", to = "/opt/app" }]\n'
                  '[entrypoint]\ncommand = ["/opt/app/run.sh"]\n'
                  '[files."/etc/app.conf"]\ncontent = "secret-ish"\nmode = "0600"\n')  # fmt: skip
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    images = []
    for n in (1, 2):
        home = tmp_path / f"home{n}"
        monkeypatch.setenv("MVM_HOME", str(home))
        images.append(builder.build(load_project(proj), force=True))
        assert group_or_other_bits(home) == []
    a, b = images
    assert a.input_hash == b.input_hash
    assert digests(a) == digests(b)
    # the contents manifest (for `mvmctl update`'s diff) is as reproducible as the image
    assert (a.path / "contents.json").read_bytes() == (b.path / "contents.json").read_bytes()
    assert '"/usr/bin/hello"' in (a.path / "contents.json").read_text()
    volatile = ("createdAt", "buildSeconds")
    assert {k: v for k, v in a.revision.items() if k not in volatile} == {
        k: v for k, v in b.revision.items() if k not in volatile
    }
    assert "Type: regular" in image_stat(a.rootfs, "/usr/bin/hello")
    assert "ctime: 0x00000001:00000000" in image_stat(a.rootfs, "/opt/app/sub/data")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert builder.build(load_project(proj)).input_hash != a.input_hash  # a new input


def test_revision_metadata_is_private_json(tmp_path: Path) -> None:
    proj = write_project(tmp_path / "p", 'name = "meta"\n' + EP)
    image = builder.build(load_project(proj))
    for name in ("revision.json", "checksums.json"):
        assert (image.path / name).stat().st_mode & 0o777 == 0o600
        json.loads((image.path / name).read_text())
    assert group_or_other_bits(Path(os.environ["MVM_HOME"])) == []


# -- 7. the Python example ---------------------------------------------------------------


def test_python_example_builds_and_runs_a_stdlib_script() -> None:
    res = mvmctl("run", "--attached", str(REPO / "examples" / "python"), timeout=600)
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("{"))
    assert json.loads(line)["greeting"] == "hello from python"
    assert json.loads(line)["uid"] == 1000
