"""Issue 9 for templates over the local-directory registry: registry metadata
validated before install, downloads capped, corrupted registry objects
repaired by push, project defaults not overridden, broken records visible,
full-match names, and one-line errors for bad registry settings."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mvm import paths
from mvm.cli.main import main
from mvm.errors import ConfigError, MetadataError, MvmError, RegistryError, StateError
from mvm.templates import build as tbuild
from mvm.templates import integrity, store, sync
from mvm.templates.registry.base import SMALL_OBJECT_MAX
from mvm.templates.registry.local import LocalRegistry
from mvm.templates.store import Settings

if TYPE_CHECKING:
    from tests.unit.template_fakes import FakeBuilder

pytest_plugins = ["tests.unit.template_fakes"]

MakeProject = Callable[..., Path]
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def reg(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry")


@pytest.fixture
def pushed(make_project: MakeProject, fake_builder: FakeBuilder, reg: LocalRegistry) -> str:
    store.create("app", Settings(flake=str(make_project())))
    rev = tbuild.build("app").revision
    sync.push("app", reg)
    return rev


def obj(reg: LocalRegistry, rev: str, f: str) -> Path:
    return reg.base / f"templates/app/revisions/{rev}/{f}"


def home2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "home2"))


def one_line_error(err: str, needle: str) -> None:
    first = err.splitlines()[0]
    assert first.startswith("mvmctl: error: ") and needle in first, err
    assert "Traceback" not in err and len(err.splitlines()) <= 2


# -- 1. registry metadata validated before install -------------------------------------------


def _republish_meta(reg: LocalRegistry, rev: str, change: Callable[[dict[str, Any]], None]) -> str:
    """Rewrite revision.json, with checksums and id made consistent again (a forger's
    revision under a new id); returns the new id, which becomes current."""
    src = obj(reg, rev, "")
    meta = json.loads((src / "revision.json").read_text())
    change(meta)
    raw = json.dumps(meta).encode()
    sums = json.loads((src / "checksums.json").read_text())
    sums["revision.json"] = hashlib.sha256(raw).hexdigest()
    new = f"r5-{integrity.digest(sums)[:8]}"
    dest = obj(reg, new, "")
    dest.mkdir(parents=True)
    for f in ("kernel", "initramfs.cpio", "rootfs.ext4"):
        (dest / f).write_bytes((src / f).read_bytes())
    (dest / "revision.json").write_bytes(raw)
    (dest / "checksums.json").write_bytes(integrity.encode_checksums(sums))
    (reg.base / "templates/app/current").write_text(new + "\n")
    return new


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda m: m["defaults"].update(vcpus="2"), "defaults.vcpus"),
        (lambda m: m.update(uids={"agent": 990, "entrypoint": "root"}), "uids.entrypoint"),
        (lambda m: m.update(hypervisor=["qemu"]), "hypervisor"),
        (lambda m: m.update(schema=7), "unsupported schema 7"),
        (lambda m: m["template"]["settings"].update(cpus=0), "--cpus"),
        (lambda m: m["template"].update(name="other"), "belongs to template 'other'"),
        (lambda m: m.pop("template"), "no template section"),
    ],
)
def test_registry_metadata_of_bad_types_is_refused_before_install(
    pushed: str,
    reg: LocalRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[dict[str, Any]], None],
    needle: str,
) -> None:
    new = _republish_meta(reg, pushed, change)
    home2(tmp_path, monkeypatch)
    with pytest.raises(MetadataError, match=f"app {new}: .*{needle}"):
        sync.pull("app", reg)
    assert store.list_all() == [] and list(paths.templates_dir().glob(".tmp-*")) == []
    sync.pull("app", reg, revision=pushed)  # a good revision still installs
    assert store.verify("app").id == pushed


def test_local_revision_json_of_bad_types_is_a_clear_error_not_a_crash(pushed: str) -> None:
    rev = store.current_revision("app")
    assert rev is not None
    meta = json.loads((rev.path / "revision.json").read_text())
    meta["defaults"]["memory_mib"] = "lots"
    (rev.path / "revision.json").write_text(json.dumps(meta))
    with pytest.raises(MetadataError, match=r"defaults\.memory_mib"):
        store.current_image("app")


# -- 2. downloads capped ---------------------------------------------------------------------


def test_an_object_larger_than_recorded_is_cut_off(
    pushed: str, reg: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rootfs = obj(reg, pushed, "rootfs.ext4")
    recorded = rootfs.stat().st_size
    with open(rootfs, "ab") as f:
        f.write(b"\0" * (5 << 20))
    home2(tmp_path, monkeypatch)
    with pytest.raises(RegistryError, match=f"rootfs.ext4 is larger than the {recorded} bytes"):
        sync.pull("app", reg)
    assert store.list_all() == [] and list(paths.templates_dir().glob(".tmp-*")) == []


@pytest.mark.parametrize("small", ["current", "checksums.json", "revision.json", "signature.json"])
def test_small_objects_are_capped_at_one_mib(
    pushed: str, reg: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: str
) -> None:
    path = reg.base / "templates/app/current" if small == "current" else obj(reg, pushed, small)
    path.write_bytes(b" " * (SMALL_OBJECT_MAX + 1))
    home2(tmp_path, monkeypatch)
    with pytest.raises(RegistryError, match=f"{small} is larger than the {SMALL_OBJECT_MAX} bytes"):
        sync.pull("app", reg, revision=None if small == "current" else pushed)


def test_local_registry_never_reads_fifos_or_devices(pushed: str, reg: LocalRegistry) -> None:
    cur = reg.base / "templates/app/current"
    cur.unlink()
    os.mkfifo(cur)
    with pytest.raises(RegistryError, match="not a regular file"):  # and no hang
        reg.get_bytes("templates/app/current")
    rootfs = obj(reg, pushed, "rootfs.ext4")
    rootfs.unlink()
    rootfs.symlink_to("/dev/zero")
    with pytest.raises(RegistryError):
        reg.download("templates/app/revisions/x/y", Path(os.devnull), lambda n: None, max_bytes=1)
    with pytest.raises(RegistryError):
        reg.get_bytes(f"templates/app/revisions/{pushed}/rootfs.ext4")


# -- 4. a corrupted registry object is repaired by push -------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_push_repairs_a_corrupted_registry_object(
    pushed: str,
    reg: LocalRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Cli,
    damage: str,
) -> None:
    path = obj(reg, pushed, "initramfs.cpio")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[5] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-1]))
    else:
        path.unlink()
    monkeypatch.setenv("MVM_TEMPLATE_REGISTRY", str(reg.root))
    code, out, err = cli("template", "push", "app")
    assert code == 0 and f"{pushed} repaired" in out and "1 damaged or missing file" in out, err
    home = os.environ["MVM_HOME"]
    home2(tmp_path, monkeypatch)
    assert sync.pull("app", reg).revision == pushed
    store.verify("app")
    monkeypatch.setenv("MVM_HOME", home)
    code, out, _ = cli("template", "push", "app")
    assert "nothing transferred" in out


def test_lock_files_are_private(pushed: str) -> None:
    lock = paths.templates_dir() / ".app.lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_push_force_uploads_everything(pushed: str, reg: LocalRegistry) -> None:
    again = sync.push("app", reg, force=True)
    assert again.files == len(integrity.REVISION_FILES) and again.bytes > 0
    assert sync.push("app", reg).files == 0


# -- 5. template defaults do not override the project ----------------------------------------


def test_project_values_win_unless_set_explicitly(
    make_project: MakeProject, fake_builder: FakeBuilder, cli: Cli
) -> None:
    proj = make_project()  # vcpus = 1, memory_mib = 256; [profiles.big] memory_mib = 512
    assert cli("template", "create", "app", "--flake", str(proj))[0] == 0
    assert cli("template", "build", "app")[0] == 0
    image, _ = store.current_image("app")
    assert image.revision["defaults"] == {"vcpus": 1, "memory_mib": 256}
    _, out, _ = cli("template", "info", "app")
    assert "cpus:          1 (project)" in out and "memory_mib:    256 (project)" in out
    data = json.loads(cli("template", "list", "--json")[1])[0]
    assert data["settings"]["cpus"] is None
    assert data["effective"]["memory_mib"] == {"value": 256, "source": "project"}

    (proj / "mvm.toml").write_text(
        (proj / "mvm.toml").read_text().replace("vcpus = 1", "vcpus = 3")
    )
    assert "built revision r2-" in cli("template", "build", "app")[1]  # the project changed
    assert store.template_defaults("app") == (3, 256)

    assert cli("template", "edit", "app", "--mem", "2048")[0] == 0
    cli("template", "build", "app")
    assert store.current_image("app")[0].revision["defaults"] == {"vcpus": 3, "memory_mib": 2048}
    _, out, _ = cli("template", "list")
    assert "3 (project)" in out and "2048 (template)" in out
    assert cli("template", "edit", "app", "--mem", "project")[0] == 0
    assert store.load("app").settings.memory_mib is None
    code, _, err = cli("template", "edit", "app", "--cpus", "many")
    assert code == 2 and "invalid --cpus 'many'" in err


def test_profiles_supply_their_own_values(
    make_project: MakeProject, fake_builder: FakeBuilder
) -> None:
    store.create("big", Settings(flake=str(make_project()), profile="big"))
    tbuild.build("big")
    assert store.template_defaults("big") == (1, 512)


def test_old_records_with_explicit_numbers_keep_them_and_their_revision_key(
    make_project: MakeProject, fake_builder: FakeBuilder
) -> None:
    flake = str(make_project())
    store.create("app", Settings(flake=flake))
    path = paths.templates_dir() / "app" / "template.json"
    rec = json.loads(path.read_text())
    rec["settings"].update(cpus=2, memory_mib=1024)  # as written before item 17
    path.write_text(json.dumps(rec))
    t = store.load("app")
    assert (t.settings.cpus, t.settings.memory_mib) == (2, 1024)
    rev = store.load_revision("app", tbuild.build("app").revision)
    assert (rev.meta.defaults.vcpus, rev.meta.defaults.memory_mib) == (2, 1024)
    old_key = hashlib.sha256(
        json.dumps(
            {"image": rev.meta.input_hash, "settings": t.settings.to_json()}, sort_keys=True
        ).encode()
    ).hexdigest()
    assert rev.key == old_key


# -- 6. broken records stay visible; names fully matched; registry settings ------------------


def test_a_corrupt_record_is_listed_as_broken_and_delete_force_removes_it(
    make_project: MakeProject, cli: Cli
) -> None:
    flake = str(make_project())
    cli("template", "create", "app", "--flake", flake)
    cli("template", "create", "ok", "--flake", flake)
    (paths.templates_dir() / "app" / "template.json").write_text('{"schema": 1, "name": ')
    code, out, _ = cli("template", "list")
    assert code == 0 and [ln.split()[0] for ln in out.splitlines()[1:]] == ["app", "ok"]
    assert "broken" in out.splitlines()[1]
    [broken, _] = json.loads(cli("template", "list", "--json")[1])
    assert broken["status"] == "broken" and "not valid JSON" in broken["reason"]
    code, out, _ = cli("template", "info", "app")
    assert "status:        broken" in out and "reason:" in out and "--force" in out
    one_line_error(cli("template", "create", "app", "--flake", flake)[2], "already exists")
    code, _, err = cli("template", "delete", "app")
    assert code != 0
    one_line_error(err, "is broken")
    assert cli("template", "delete", "app", "--force")[0] == 0
    assert [t.name for t in store.list_all()] == ["ok"]


@pytest.mark.parametrize(
    "record",
    [
        '{"schema": 1, "name": "app", "settings": {"flake": "/x", "cpus": "2"}}',
        '{"schema": 1, "name": "other", "settings": {"flake": "/x"}}',
        '{"schema": 1, "name": "app", "settings": {"flake": "/x"}, "needs_rebuild": "no"}',
        "[" * 50_000 + "]" * 50_000,
        "",
    ],
)
def test_records_of_bad_types_are_broken_not_crashes(
    record: str, make_project: MakeProject
) -> None:
    store.create("app", Settings(flake=str(make_project())))
    (paths.templates_dir() / "app" / "template.json").write_text(record)
    with pytest.raises(StateError):
        store.load("app")
    [entry] = store.list_all()
    assert isinstance(entry, store.BrokenTemplate) and entry.name == "app"


def test_a_record_that_is_a_fifo_does_not_hang(make_project: MakeProject) -> None:
    store.create("app", Settings(flake=str(make_project())))
    rec = paths.templates_dir() / "app" / "template.json"
    rec.unlink()
    os.mkfifo(rec)
    with pytest.raises(StateError, match="not a regular file"):
        store.load("app")


@pytest.mark.parametrize("bad", ["app\n", "app\r", " app", "r1-aaaaaaaa\n"])
def test_names_and_revisions_must_match_in_full(bad: str, make_project: MakeProject) -> None:
    with pytest.raises(ConfigError, match="invalid template name"):
        store.create(bad, Settings(flake=str(make_project())))
    with pytest.raises(ConfigError):
        store.validate_name(bad)
    with pytest.raises(store.TemplateError):
        store.validate_revision_id(bad if bad.startswith("r1") else "r1-aaaaaaaa\n")
    assert not any(paths.templates_dir().glob("app*")) if paths.templates_dir().exists() else True


def test_registry_current_with_a_trailing_newline_inside_is_refused(
    pushed: str, reg: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (reg.base / "templates/app/current").write_bytes(f"{pushed}\n\n{pushed}".encode())
    home2(tmp_path, monkeypatch)
    with pytest.raises(RegistryError, match="current of app is invalid"):
        sync.pull("app", reg)


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("MVM_TEMPLATE_REGISTRY_REGION", "bad region!", "invalid MVM_TEMPLATE_REGISTRY_REGION"),
        ("MVM_TEMPLATE_REGISTRY_ENDPOINT", "http://x y", "invalid MVM_TEMPLATE_REGISTRY_ENDPOINT"),
    ],
)
def test_bad_s3_settings_are_one_line_errors(
    pushed: str, cli: Cli, monkeypatch: pytest.MonkeyPatch, var: str, value: str, needle: str
) -> None:
    for k, v in {
        "MVM_TEMPLATE_REGISTRY_ENDPOINT": "http://127.0.0.1:9",
        "MVM_TEMPLATE_REGISTRY_BUCKET": "b",
        "MVM_TEMPLATE_REGISTRY_ACCESS_KEY_ID": "AKIDSECRETID",
        "MVM_TEMPLATE_REGISTRY_SECRET_ACCESS_KEY": "s3cr3t-value",
        var: value,
    }.items():
        monkeypatch.setenv(k, v)
    for verb in ("push", "pull"):
        code, out, err = cli("template", verb, "app")
        assert code == 2
        one_line_error(err, needle)
        assert "s3cr3t" not in out + err


def test_botocore_configuration_errors_at_client_creation_are_config_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from botocore.exceptions import InvalidRegionError

    from mvm.templates.registry.s3 import S3Config, S3Registry

    def refuse(*a: Any, **k: Any) -> Any:
        raise InvalidRegionError(region_name="x")

    monkeypatch.setattr("boto3.session.Session.client", refuse)
    with pytest.raises(ConfigError, match="invalid S3 registry configuration"):
        S3Registry(S3Config("http://127.0.0.1:9", "b", "AKIDSECRETID", "s3cr3t-value"))


def test_messages_print_names_as_given(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("template", "init", "my-service")
    assert code == 0 and out.startswith("my-service: created")
    one_line_error(cli("template", "init", "My-service")[2], "invalid template name 'My-service'")


@pytest.mark.parametrize("name", ["rootfs.ext4", "checksums.json", "revision.json"])
def test_a_fifo_or_symlink_in_a_revision_fails_verify_without_hanging(
    pushed: str, name: str
) -> None:
    rev = store.current_revision("app")
    assert rev is not None
    (rev.path / name).unlink()
    os.mkfifo(rev.path / name)
    with pytest.raises(MvmError, match="not a regular file"):
        store.verify("app")
    (rev.path / name).unlink()
    (rev.path / name).symlink_to("/dev/zero")
    with pytest.raises(MvmError):
        store.verify("app")
