"""Pure parts of imperative management: contents manifests and their diff, VM
definitions as untrusted files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mvm.errors import StateError
from mvm.image import contents
from mvm.runtime import defs
from tests.conftest import mvmctl


def test_scan_and_diff_like_a_closure_diff(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/a.conf").write_text("one")
    (root / "etc/gone").write_text("x")
    os.symlink("a.conf", root / "etc/link")
    old = contents.scan(root, [("python3", "3.11.2-1"), ("wget", "1.21")])
    assert old["files"]["/etc/link"] == {"link": "a.conf"}
    assert old["files"]["/etc/a.conf"]["size"] == 3
    (root / "etc/a.conf").write_text("two")
    (root / "etc/gone").unlink()
    (root / "etc/new").write_text("n")
    new = contents.scan(root, [("python3", "3.11.2-2"), ("curl", "7.88")])
    d = contents.diff(old, new)
    assert d.packages_changed == {"python3": ("3.11.2-1", "3.11.2-2")}
    assert d.packages_added == {"curl": "7.88"} and d.packages_removed == {"wget": "1.21"}
    assert (d.files_added, d.files_removed, d.files_changed) == (["/etc/new"], ["/etc/gone"],
                                                                 ["/etc/a.conf"])  # fmt: skip
    text = "\n".join(d.lines())
    assert "python3: 3.11.2-1 → 3.11.2-2" in text and "curl: ∅ → 7.88" in text
    assert "+ /etc/new" in text and "- /etc/gone" in text and "~ /etc/a.conf" in text
    assert contents.diff(old, old).empty
    assert not contents.diff(None, new).known


def test_manifest_is_deterministic_and_bad_ones_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_text("x")
    contents.write(tmp_path, contents.scan(root, []))
    first = (tmp_path / contents.CONTENTS).read_bytes()
    contents.write(tmp_path, contents.scan(root, []))
    assert (tmp_path / contents.CONTENTS).read_bytes() == first
    for bad in (b"not json", b'{"schema": 2}', b'{"schema": 1, "packages": [], "files": {}}'):
        (tmp_path / contents.CONTENTS).write_bytes(bad)
        assert contents.load(tmp_path) is None


BAD_DEFS = [
    ({"schema": 1, "name": "x"}, "exactly one of flake or template"),
    ({"schema": 1, "name": "x", "flake": "rel/path"}, "absolute"),
    ({"schema": 1, "name": "x", "flake": "/p", "cpus": "2"}, "wrong type"),
    ({"schema": 1, "name": "x", "flake": "/p", "cpus": True}, "wrong type"),
    ({"schema": 1, "name": "other", "flake": "/p"}, "names VM 'other'"),
    ({"schema": 7, "name": "x", "flake": "/p"}, "schema"),
    ([], "schema"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "message"), BAD_DEFS, ids=[m for _r, m in BAD_DEFS])
def test_hostile_definitions_are_state_errors(raw: object, message: str) -> None:
    path = defs.def_path("x")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw))
    with pytest.raises(StateError, match=message):
        defs.load("x")
    r = mvmctl("start", "x")
    assert r.returncode != 0 and r.stderr.startswith("mvmctl: error: ")
    assert "Traceback" not in r.stderr


def test_definition_round_trip() -> None:
    d = defs.VmDef(name="x", flake="/p", cpus=2, ports=["8080:80"], image_hash="ab")
    defs.save(d)
    assert defs.load("x") == d
    assert [e.name for e in defs.list_defs()] == ["x"]
    assert oct(defs.def_path("x").stat().st_mode & 0o777) == "0o600"
    assert defs.remove("x") and not defs.exists("x")
