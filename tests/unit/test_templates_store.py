"""Template records, builds into revisions, integrity, delete: pure logic with a
fake builder (tiny artefacts), so every test runs in milliseconds."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from mvm import paths
from mvm.errors import ConfigError, ConflictError, IntegrityError, NotFoundError, TemplateError
from mvm.templates import build as tbuild
from mvm.templates import integrity, store
from mvm.templates.store import Settings

if TYPE_CHECKING:
    from tests.unit.template_fakes import FakeBuilder

pytest_plugins = ["tests.unit.template_fakes"]

MakeProject = Callable[..., Path]


def snapshot() -> dict[str, bytes]:
    """Every file under MVM_HOME/templates (to prove 'nothing changed')."""
    root = paths.templates_dir()
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def test_create_leaves_cpus_and_memory_to_the_project_and_stores_an_absolute_flake(
    make_project: MakeProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj = make_project("app")
    monkeypatch.chdir(proj.parent)
    t = store.create("app", Settings(flake="app"))
    assert t.settings == Settings(flake=str(proj.resolve()))
    assert (t.settings.profile, t.settings.role, t.settings.cpus, t.settings.memory_mib) == (
        "default", "worker", None, None,
    )  # fmt: skip
    assert store.template_defaults("app") == (1, 256)  # mvm.toml's vcpus / memory_mib
    assert store.load("app").settings.flake == str(proj.resolve())
    assert [x.name for x in store.list_templates()] == ["app"]
    assert store.load("app").needs_rebuild


@pytest.mark.parametrize(
    ("name", "settings", "error"),
    [
        ("Bad_Name", {}, "invalid template name"),
        ("../x", {}, "invalid template name"),
        ("ok", {"cpus": 0}, "--cpus"),
        ("ok", {"cpus": 65}, "--cpus"),
        ("ok", {"memory_mib": 1}, "--mem"),
        ("ok", {"role": "boss"}, "--role"),
        ("ok", {"data_disk_mib": -5}, "--data-disk"),
        ("ok", {"profile": "nope"}, "no profile 'nope'"),
        ("ok", {"flake": "/nonexistent/dir"}, "no such file"),
    ],
)
def test_create_rejects_bad_input_and_changes_nothing(
    make_project: MakeProject, name: str, settings: dict[str, object], error: str
) -> None:
    proj = make_project("app")
    args = {"flake": str(proj), **settings}
    with pytest.raises(ConfigError, match=error):
        store.create(name, Settings(**args))  # type: ignore[arg-type]
    assert store.list_templates() == []
    assert not (paths.templates_dir() / "ok").exists()


def test_duplicate_create_is_a_conflict(make_project: MakeProject) -> None:
    store.create("app", Settings(flake=str(make_project())))
    before = snapshot()
    with pytest.raises(ConflictError, match="already exists"):
        store.create("app", Settings(flake=str(make_project())))
    assert snapshot() == before


def test_create_multi_is_all_or_nothing(make_project: MakeProject) -> None:
    flake = str(make_project())
    made = store.create_multi("svc", Settings(flake=flake), ["worker", "gateway"])
    assert [(t.name, t.settings.role) for t in made] == [
        ("svc-worker", "worker"), ("svc-gateway", "gateway"),
    ]  # fmt: skip
    store.create("web-gateway", Settings(flake=flake, role="gateway"))
    before = snapshot()
    with pytest.raises(ConflictError):
        store.create_multi("web", Settings(flake=flake), ["worker", "gateway"])
    with pytest.raises(ConfigError, match="--role"):
        store.create_multi("api", Settings(flake=flake), ["worker", "boss"])
    assert snapshot() == before


def test_edit_validates_marks_rebuild_and_keeps_bad_edits_out(
    make_project: MakeProject, fake_builder: FakeBuilder
) -> None:
    store.create("app", Settings(flake=str(make_project())))
    tbuild.build("app")
    assert not store.load("app").needs_rebuild
    before = snapshot()
    bads: list[tuple[dict[str, Any], str]] = [
        ({"cpus": 0}, "--cpus"), ({"memory_mib": 1}, "--mem"),
        ({"role": "x"}, "--role"), ({"profile": "missing"}, "no profile"),
    ]  # fmt: skip
    for bad, msg in bads:
        with pytest.raises(ConfigError, match=msg):
            store.edit("app", **bad)
    with pytest.raises(ConfigError, match="nothing to change"):
        store.edit("app")
    with pytest.raises(NotFoundError):
        store.edit("ghost", cpus=2)
    assert snapshot() == before
    t = store.edit("app", memory_mib=2048, cpus=4, data_disk_mib=100)
    assert (t.settings.memory_mib, t.settings.cpus, t.settings.data_disk_mib) == (2048, 4, 100)
    assert store.load("app").needs_rebuild
    assert store.edit("app", data_disk_mib=0).settings.data_disk_mib is None


def test_build_makes_a_revision_only_when_inputs_change(
    make_project: MakeProject, fake_builder: FakeBuilder
) -> None:
    proj = make_project("app")
    store.create("app", Settings(flake=str(proj)))
    r1 = tbuild.build("app")
    assert r1.created and r1.revision.startswith("r1-")
    again = tbuild.build("app")
    assert not again.created and again.revision == r1.revision
    assert fake_builder.calls == 1

    store.edit("app", memory_mib=512)  # settings are inputs of a revision
    r2 = tbuild.build("app")
    assert r2.created and r2.revision.startswith("r2-") and store.current_id("app") == r2.revision
    assert store.template_defaults("app") == (1, 512)  # cpus still from the project

    store.edit("app", memory_mib="project")  # back to r1's inputs: reuse r1, no r3
    back = tbuild.build("app")
    assert not back.created and back.revision == r1.revision
    assert store.current_id("app") == r1.revision

    (proj / "mvm.toml").write_text((proj / "mvm.toml").read_text().replace("hello", "changed"))
    r3 = tbuild.build("app")
    assert r3.created and r3.revision.startswith("r3-")
    assert [r.id for r in store.revisions("app")] == [r1.revision, r2.revision, r3.revision]


def test_force_rebuild_new_revision_only_if_bytes_differ(
    make_project: MakeProject, fake_builder: FakeBuilder
) -> None:
    store.create("app", Settings(flake=str(make_project())))
    r1 = tbuild.build("app")
    same = tbuild.build("app", force=True)
    assert fake_builder.calls == 2 and not same.created and same.revision == r1.revision
    fake_builder.reproducible = False
    new = tbuild.build("app", force=True)
    assert new.created and new.revision != r1.revision


def test_profile_selects_a_different_image(
    make_project: MakeProject, fake_builder: FakeBuilder
) -> None:
    flake = str(make_project())
    store.create("small", Settings(flake=flake))
    store.create("big", Settings(flake=flake, profile="big"))
    a, b = tbuild.build("small"), tbuild.build("big")
    ia, _ = store.current_image("small")
    ib, _ = store.current_image("big")
    assert ia.input_hash != ib.input_hash and a.revision != b.revision


def test_revision_records_template_settings_and_defaults(
    make_project: MakeProject, fake_builder: FakeBuilder
) -> None:
    store.create("app", Settings(flake=str(make_project()), cpus=3, memory_mib=768, role="gateway"))
    rev_id = tbuild.build("app").revision
    image, got = store.current_image("app")
    assert got == rev_id
    assert image.revision["defaults"] == {"vcpus": 3, "memory_mib": 768}
    assert image.revision["name"] == "app"
    assert image.revision["template"]["settings"]["role"] == "gateway"
    checks = json.loads((image.path / "checksums.json").read_text())
    assert set(checks) == set(integrity.REVISION_FILES)
    assert rev_id.endswith(integrity.digest(checks)[:8])


def test_tampered_artefact_fails_verify_and_current_image(
    make_project: MakeProject, fake_builder: FakeBuilder
) -> None:
    store.create("app", Settings(flake=str(make_project())))
    tbuild.build("app")
    rev = store.verify("app")
    rootfs = rev.path / "rootfs.ext4"
    st = rootfs.stat()
    with open(rootfs, "r+b") as f:  # same size, same mtime: only the ctime betrays it
        f.write(b"X")
    os.utime(rootfs, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(IntegrityError, match=r"rootfs\.ext4 does not match"):
        store.current_image("app")
    with pytest.raises(IntegrityError, match=r"rootfs\.ext4"):
        store.verify("app")


def test_missing_artefact_and_forged_checksums_are_caught(
    make_project: MakeProject, fake_builder: FakeBuilder
) -> None:
    store.create("app", Settings(flake=str(make_project())))
    rev = store.verify("app", tbuild.build("app").revision)
    (rev.path / "kernel").write_bytes(b"evil")  # forge checksums.json to match the new bytes
    sums = rev.checksums
    sums["kernel"] = integrity.compute(rev.path)["kernel"]
    (rev.path / "checksums.json").write_bytes(integrity.encode_checksums(sums))
    with pytest.raises(IntegrityError, match="does not match the revision id"):
        store.verify("app")
    (rev.path / "initramfs.cpio").unlink()
    with pytest.raises(IntegrityError):
        store.current_image("app")


def test_cached_verify_does_not_rehash_unchanged_files(
    make_project: MakeProject, fake_builder: FakeBuilder
) -> None:
    store.create("app", Settings(flake=str(make_project())))
    rev = store.verify("app", tbuild.build("app").revision)
    sums = rev.checksums
    assert integrity.verify_dir(rev.path, sums, where="t", cached=True) == 0
    assert integrity.verify_dir(rev.path, sums, where="t", cached=False) > 0


def test_unknown_and_unbuilt_templates(make_project: MakeProject) -> None:
    with pytest.raises(NotFoundError, match="no template named 'ghost'"):
        store.current_image("ghost")
    store.create("app", Settings(flake=str(make_project())))
    with pytest.raises(TemplateError, match="no built revision"):
        store.current_image("app")
    with pytest.raises(ConfigError):
        store.load("Not/Valid")


def test_delete_refuses_while_a_vm_uses_it(
    make_project: MakeProject, fake_builder: FakeBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create("app", Settings(flake=str(make_project())))
    tbuild.build("app")
    vms = [
        SimpleNamespace(name="vm1", source="template:app", is_active=lambda: True),
        SimpleNamespace(name="old", source="template:app", is_active=lambda: False),
        SimpleNamespace(name="other", source="template:apple", is_active=lambda: True),
    ]
    monkeypatch.setattr("mvm.state.records.list_records", lambda: vms)
    with pytest.raises(ConflictError, match="in use by VM vm1"):
        store.delete("app")
    assert store.exists("app")
    store.delete("app", force=True)
    assert not store.exists("app") and not (paths.templates_dir() / "app").exists()
    with pytest.raises(NotFoundError):
        store.delete("app")


def test_stale_staging_dirs_of_dead_processes_are_swept() -> None:
    root = paths.ensure_private_dir(paths.templates_dir())
    dead = root / ".tmp-pull-999999999-abc"
    dead.mkdir()
    (dead / "kernel").write_bytes(b"half")
    mine = store.staging_dir("pull")
    assert not dead.exists() and mine.exists()


def test_resolve_local_revision_prefix(
    make_project: MakeProject, fake_builder: FakeBuilder
) -> None:
    store.create("app", Settings(flake=str(make_project())))
    rev = tbuild.build("app").revision
    assert store.resolve_local("app", "r1") == rev
    assert store.resolve_local("app", rev) == rev
    with pytest.raises(NotFoundError):
        store.resolve_local("app", "r7")
    with pytest.raises(TemplateError):
        store.resolve_local("app", "../etc")
