"""Registry configuration, the push/pull protocol over the local-directory
registry, and the S3 error seam (no network: errors are fabricated)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mvm import paths
from mvm.errors import (
    ConfigError,
    IntegrityError,
    NotFoundError,
    RegistryError,
)
from mvm.templates import build as tbuild
from mvm.templates import store, sync
from mvm.templates.registry import base, from_env
from mvm.templates.registry.local import LocalRegistry
from mvm.templates.store import Settings

if TYPE_CHECKING:
    from tests.unit.template_fakes import FakeBuilder

pytest_plugins = ["tests.unit.template_fakes"]

MakeProject = Callable[..., Path]
S3_VARS = {
    "MVM_TEMPLATE_REGISTRY_ENDPOINT": "http://127.0.0.1:9",
    "MVM_TEMPLATE_REGISTRY_BUCKET": "bkt",
    "MVM_TEMPLATE_REGISTRY_ACCESS_KEY_ID": "AKIDSECRETID",
    "MVM_TEMPLATE_REGISTRY_SECRET_ACCESS_KEY": "s3cr3t-value",
}


# -- configuration ---------------------------------------------------------------------------


def test_default_registry_is_a_local_directory_in_mvm_home() -> None:
    reg = from_env({})
    assert isinstance(reg, LocalRegistry) and reg.root == paths.registry_dir()


@pytest.mark.parametrize("url", ["file:///srv/reg", "/srv/reg", "file://localhost/srv/reg"])
def test_local_registry_locations(url: str) -> None:
    reg = from_env({"MVM_TEMPLATE_REGISTRY": url, "MVM_TEMPLATE_REGISTRY_PREFIX": "team/a"})
    assert isinstance(reg, LocalRegistry)
    assert reg.base == Path("/srv/reg/team/a")


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"MVM_TEMPLATE_REGISTRY": "relative/dir"}, "must be absolute"),
        ({"MVM_TEMPLATE_REGISTRY": "ftp://host/x"}, "unsupported"),
        ({"MVM_TEMPLATE_REGISTRY": "file://otherhost/x"}, "file:///"),
        ({"MVM_TEMPLATE_REGISTRY_ENDPOINT": "http://x"}, "_BUCKET, .*_ACCESS_KEY_ID, .*_SECRET"),
        ({**S3_VARS, "MVM_TEMPLATE_REGISTRY_SECRET_ACCESS_KEY": ""}, "SECRET_ACCESS_KEY not set"),
        ({"MVM_TEMPLATE_REGISTRY_REGION": "eu-west-1"}, "incomplete"),
        ({**S3_VARS, "MVM_TEMPLATE_REGISTRY": "/srv/reg"}, "configure one registry"),
        ({"MVM_TEMPLATE_REGISTRY_PREFIX": "../up"}, "PREFIX"),
    ],
)
def test_bad_registry_configuration(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error) as exc:
        from_env(env)
    assert "s3cr3t" not in str(exc.value) and "AKIDSECRETID" not in str(exc.value)


def test_s3_config_never_shows_credentials() -> None:
    from mvm.templates.registry.s3 import S3Registry

    reg = from_env(S3_VARS)
    assert isinstance(reg, S3Registry)
    for text in (repr(reg.cfg), reg.description, str(vars(reg.cfg).get("endpoint"))):
        assert "s3cr3t" not in text and "AKIDSECRETID" not in text


def _client_error(code: str, status: int, message: str = "") -> Exception:
    from botocore.exceptions import ClientError

    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")


@pytest.mark.parametrize(
    ("exc", "expect"),
    [
        (_client_error("NoSuchBucket", 404), "bucket 'bkt' does not exist at http://127.0.0.1:9"),
        (_client_error("InvalidAccessKeyId", 403), "rejected the credentials"),
        (_client_error("SignatureDoesNotMatch", 403), "rejected the credentials"),
        (_client_error("AccessDenied", 403), "denied"),
        (_client_error("SlowDown", 503, "key s3cr3t-value AKIDSECRETID"), "SlowDown"),
    ],
)
def test_s3_errors_are_translated_once_and_redacted(exc: Exception, expect: str) -> None:
    reg: Any = from_env(S3_VARS)
    with pytest.raises(RegistryError, match=expect) as got, reg._errors("reading", "k/current"):
        raise exc
    assert "s3cr3t" not in str(got.value) and "AKIDSECRETID" not in str(got.value)


def test_s3_endpoint_and_bucket_are_validated() -> None:
    with pytest.raises(ConfigError, match="invalid MVM_TEMPLATE_REGISTRY_ENDPOINT"):
        from_env({**S3_VARS, "MVM_TEMPLATE_REGISTRY_ENDPOINT": "localhost:9000"})
    reg = from_env({**S3_VARS, "MVM_TEMPLATE_REGISTRY_BUCKET": "Bad Bucket!"})
    with pytest.raises(ConfigError, match=r'^invalid registry setting: Invalid bucket name "Bad'):
        reg.get_bytes("templates/x/current")


def test_s3_connection_errors_are_clear() -> None:
    from botocore.exceptions import EndpointConnectionError

    reg: Any = from_env(S3_VARS)
    with pytest.raises(RegistryError, match="unreachable") as got, reg._errors("uploading", "k"):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    assert got.value.hint and "ENDPOINT" in got.value.hint


# -- push / pull over a local registry -------------------------------------------------------


def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    home = tmp_path / name
    monkeypatch.setenv("MVM_HOME", str(home))
    return home


@pytest.fixture
def reg(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry", "p")


@pytest.fixture
def built(make_project: MakeProject, fake_builder: FakeBuilder) -> str:
    store.create("app", Settings(flake=str(make_project()), cpus=3))
    return tbuild.build("app").revision


def test_push_then_pull_into_an_empty_home(
    built: str, reg: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = sync.push("app", reg)
    assert r.revision == built and r.bytes > 0 and r.moved_current
    assert reg.get_bytes("templates/app/current") == (built + "\n").encode()
    again = sync.push("app", reg)
    assert again.bytes == 0 and again.files == 0 and not again.moved_current

    _home(tmp_path, monkeypatch, "home2")
    assert store.list_templates() == []
    p = sync.pull("app", reg)
    assert p.revision == built and p.bytes == r.bytes
    t = store.load("app")
    assert t.origin == "registry" and t.settings.cpus == 3 and not t.needs_rebuild
    image, rev = store.current_image("app")
    assert rev == built and image.revision["defaults"]["vcpus"] == 3
    assert sync.pull("app", reg).bytes == 0  # unchanged → nothing transferred


def test_pull_specific_revision_and_current_moves(
    built: str, reg: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync.push("app", reg)
    store.edit("app", memory_mib=512)
    r2 = tbuild.build("app").revision
    sync.push("app", reg)
    _home(tmp_path, monkeypatch, "home2")
    assert sync.pull("app", reg, revision="r1").revision == built
    assert store.current_id("app") == built
    assert sync.pull("app", reg).revision == r2
    assert store.current_id("app") == r2 and store.template_defaults("app") == (3, 512)
    back = sync.pull("app", reg, revision=built)
    assert back.bytes == 0 and back.moved_current and store.current_id("app") == built
    with pytest.raises(NotFoundError):
        sync.pull("app", reg, revision="r9")
    with pytest.raises(NotFoundError, match="not in the registry"):
        sync.pull("ghost", reg)


def test_corrupted_object_fails_pull_and_installs_nothing(
    built: str, reg: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync.push("app", reg)
    obj = reg.base / f"templates/app/revisions/{built}/rootfs.ext4"
    data = bytearray(obj.read_bytes())
    data[10] ^= 0xFF
    obj.write_bytes(bytes(data))
    home2 = _home(tmp_path, monkeypatch, "home2")
    with pytest.raises(IntegrityError, match=r"rootfs\.ext4 does not match"):
        sync.pull("app", reg)
    assert store.list_templates() == []
    assert not (home2 / "templates" / "app").exists()
    assert list((home2 / "templates").glob(".tmp-*")) == []


class Flaky(LocalRegistry):
    """Fails the Nth upload/download, like a server dying mid-transfer."""

    def __init__(self, inner: LocalRegistry, fail_at: int):
        super().__init__(inner.root, "p")
        self.fail_at, self.count = fail_at, 0

    def _tick(self) -> None:
        self.count += 1
        if self.count == self.fail_at:
            raise RegistryError("connection lost (simulated)")

    def upload(self, key: str, src: Path, sha256: str, progress: base.Callback) -> None:
        self._tick()
        super().upload(key, src, sha256, progress)

    def download(self, key: str, dest: Path, progress: base.Callback, *, max_bytes: int) -> None:
        super().download(key, dest, progress, max_bytes=max_bytes)
        self._tick()


def test_interrupted_pull_leaves_no_usable_template(
    built: str, reg: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync.push("app", reg)
    home2 = _home(tmp_path, monkeypatch, "home2")
    with pytest.raises(RegistryError, match="simulated"):
        sync.pull("app", Flaky(reg, fail_at=3))
    assert store.list_templates() == [] and not store.exists("app")
    assert list((home2 / "templates").glob(".tmp-*")) == []
    assert sync.pull("app", reg).revision == built


def test_interrupted_push_keeps_remote_current(built: str, reg: LocalRegistry) -> None:
    sync.push("app", reg)
    store.edit("app", memory_mib=512)
    r2 = tbuild.build("app").revision
    with pytest.raises(RegistryError, match="simulated"):
        sync.push("app", Flaky(reg, fail_at=2))
    assert reg.get_bytes("templates/app/current") == (built + "\n").encode()
    assert reg.get_bytes(f"templates/app/revisions/{r2}/checksums.json") is None
    assert sync.push("app", reg).revision == r2
    assert reg.get_bytes("templates/app/current") == (r2 + "\n").encode()


def test_a_damaged_local_revision_is_never_pushed(built: str, reg: LocalRegistry) -> None:
    rev = store.current_revision("app")
    assert rev is not None
    (rev.path / "kernel").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="kernel"):
        sync.push("app", reg)
    assert reg.get_bytes("templates/app/current") is None


def test_pull_repairs_a_damaged_local_copy(
    built: str, reg: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync.push("app", reg)
    _home(tmp_path, monkeypatch, "home2")
    sync.pull("app", reg)
    rev = store.current_revision("app")
    assert rev is not None
    with open(rev.path / "rootfs.ext4", "r+b") as f:
        f.write(b"!")
    with pytest.raises(IntegrityError):
        store.current_image("app")
    assert sync.pull("app", reg).bytes > 0
    store.verify("app")


def test_registry_manifest_is_validated(
    built: str, reg: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync.push("app", reg)
    reg.put_bytes(f"templates/app/revisions/{built}/checksums.json", b'{"kernel": "nope"}')
    _home(tmp_path, monkeypatch, "home2")
    with pytest.raises(IntegrityError, match="malformed"):
        sync.pull("app", reg)
    reg.put_bytes("templates/app/current", b"../../etc\n")
    with pytest.raises(RegistryError, match="invalid"):
        sync.pull("app", reg)
    assert store.list_templates() == []


def test_keys_cannot_escape_the_registry(reg: LocalRegistry) -> None:
    for key in ("../x", "/abs", "a/../b", ""):
        with pytest.raises(ConfigError):
            reg.get_bytes(key)


def test_progress_sees_every_byte(built: str, reg: LocalRegistry) -> None:
    seen: list[tuple[str, int]] = []

    class Rec:
        def begin(self, label: str, total: int) -> None:
            seen.append(("begin", total))

        def advance(self, n: int) -> None:
            seen.append(("adv", n))

        def end(self) -> None:
            seen.append(("end", 0))

    r = sync.push("app", reg, progress=Rec())
    assert seen[0] == ("begin", r.bytes) and seen[-1] == ("end", 0)
    assert sum(n for k, n in seen if k == "adv") == r.bytes
    assert os.environ["MVM_HOME"]
