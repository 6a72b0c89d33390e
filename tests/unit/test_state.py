"""VM records: atomic writes and truthful live state."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from mvm import paths
from mvm.errors import ConfigError
from mvm.state.atomic import read_json, write_json
from mvm.state.procs import proc_start_time
from mvm.state.records import Phase, VmRecord, VmState, list_records


def test_atomic_write_is_private(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    write_json(target, {"a": 1})
    assert read_json(target) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.parametrize("bad", ["../x", "A", "", "-a", "a/b", "x" * 64])
def test_names_are_never_paths(bad: str) -> None:
    with pytest.raises(ConfigError):
        paths.vm_dir(bad)


def test_states_from_pid_and_status(tmp_path: Path) -> None:
    paths.ensure_private_dir(paths.vm_dir("t"))
    rec = VmRecord(name="t")
    rec.save()
    assert rec.state() is VmState.CRASHED  # nobody owns it, no QEMU
    rec.own()
    assert rec.state() is VmState.CREATING
    rec.phase = Phase.RUNNING.value  # the start finished
    child = subprocess.Popen(["sleep", "30"])
    try:
        rec.pid, rec.pid_start = child.pid, proc_start_time(child.pid)
        assert rec.state() is VmState.RUNNING
        rec.pid_start = (rec.pid_start or 0) + 1  # a recycled pid is not our VM
        assert rec.state() is not VmState.RUNNING
        rec.pid_start = proc_start_time(child.pid)
    finally:
        child.kill()
        child.wait()
    assert rec.state() is VmState.CRASHED
    (rec.dir / "status").write_text("exit 7\n")
    assert rec.state() is VmState.EXITED and rec.exit_code() == 7
    rec.phase = Phase.STOPPING.value  # down / Ctrl-C
    assert rec.state() is VmState.STOPPED
    assert [r.name for r in list_records()] == ["t"]
    assert stat.S_IMODE(os.stat(rec.dir).st_mode) == 0o700


def test_a_trailing_newline_is_not_a_name() -> None:
    with pytest.raises(ConfigError):
        paths.validate_name("x\n")
    assert paths.NAME_RE.match("x\n") is None  # even for callers that use .match


def test_every_record_field_is_type_checked() -> None:
    from dataclasses import fields

    from mvm.state.records import _FIELD_TYPES

    assert set(_FIELD_TYPES) == {f.name for f in fields(VmRecord)}


@pytest.mark.parametrize(
    "edit",
    [
        {"pid": "12"},
        {"pid": -1},
        {"vcpus": True},
        {"ports": [1]},
        {"name": "other"},
        {"schema": 99},
        {"phase": "bogus"},
    ],
)
def test_edited_records_are_broken_not_trusted(edit: dict[str, object]) -> None:
    from mvm.state.records import BrokenRecord, list_entries, load_entry

    paths.ensure_private_dir(paths.vm_dir("t"))
    rec = VmRecord(name="t")
    rec.save()
    data = read_json(rec.dir / "vm.json")
    data.update(edit)
    write_json(rec.dir / "vm.json", data)
    entry = load_entry("t")
    assert isinstance(entry, BrokenRecord) and entry.state() is VmState.BROKEN
    (rec.dir / "vm.json").write_text("{ not json")
    assert isinstance(load_entry("t"), BrokenRecord)
    assert [e.name for e in list_entries()] == ["t"]  # still listed, never hidden


def test_lock_waits_are_bounded(tmp_path: Path) -> None:
    import fcntl

    from mvm.errors import StateError
    from mvm.state.atomic import locked

    lock = tmp_path / "l"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(StateError, match="locked by another mvmctl"), locked(lock, timeout=0.2):
            pass


def test_private_dirs_make_private_parents(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    paths.ensure_private_dir(deep)
    for d in (tmp_path / "a", tmp_path / "a" / "b", deep):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_dead_staging_dirs_are_swept(tmp_path: Path) -> None:
    from mvm.state.atomic import private_tempdir

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".build-{dead.pid}-abc"
    (stale / "ro").mkdir(parents=True)
    os.chmod(stale / "ro", 0o500)  # read-only debris must go too
    mine_alive = tmp_path / f".build-{os.getppid()}-keep"
    mine_alive.mkdir()
    fresh = private_tempdir(tmp_path, ".build-")
    assert not stale.exists() and mine_alive.exists() and fresh.is_dir()
    assert fresh.name.startswith(f".build-{os.getpid()}-")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
