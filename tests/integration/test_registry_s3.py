"""Push/pull against a real S3 server process (moto in server mode on
127.0.0.1): round trip into an empty home and boot, no-op transfers, tamper,
a server killed mid-push and mid-pull, wrong credentials, missing bucket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mvm.errors import RegistryError
from mvm.templates import store, sync
from mvm.templates.registry import from_env
from tests.conftest import REPO, fails, ok

if TYPE_CHECKING:
    from tests.integration.conftest_registry import S3Server

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.integration.conftest_registry"]

HELLO = REPO / "examples" / "hello"


def build_hello(mem: str = "256") -> str:
    ok("template", "create", "hello", "--flake", str(HELLO), "--cpus", "1", "--mem", mem)
    return ok("template", "build", "hello").split()[-2]


def key(env: dict[str, str], rest: str) -> str:
    return f"{env['MVM_TEMPLATE_REGISTRY_PREFIX']}/templates/hello/{rest}"


class KillAfter:
    """A progress hook that kills a process once ``limit`` bytes have gone by."""

    def __init__(self, proc: Any, limit: int):
        self.proc, self.limit, self.seen = proc, limit, 0

    def begin(self, label: str, total: int) -> None:
        assert total > self.limit

    def advance(self, n: int) -> None:
        self.seen += n
        if self.seen >= self.limit and self.proc.poll() is None:
            self.proc.kill()

    def end(self) -> None:
        pass


def test_push_pull_into_an_empty_home_and_boot(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    rev = build_hello()
    out = ok("template", "push", "hello")
    assert f"pushed {rev}" in out and "MB/s" in out
    assert s3_server.get(key(s3_env, "current")) == f"{rev}\n".encode()
    assert "nothing transferred" in ok("template", "push", "hello")

    home2 = {"MVM_HOME": str(tmp_path / "home2")}
    assert json.loads(ok("template", "list", "--json", env=home2)) == []
    assert f"pulled {rev}" in ok("template", "pull", "hello", env=home2)
    assert "nothing transferred" in ok("template", "pull", "hello", env=home2)
    assert "ok" in ok("template", "verify", "hello", env=home2)
    ok("up", "--template", "hello", "--name", "pulled", env=home2)
    ok("wait", "pulled", "--timeout", "60", env=home2, timeout=90)
    assert "hello from" in ok("logs", "pulled", env=home2) and "as uid 1000" in ok(
        "logs", "pulled", env=home2
    )
    ok("down", "pulled", env=home2)
    for f in (tmp_path / "home2").rglob("*.json"):  # credentials are never stored
        assert s3_server.secret_access_key not in f.read_text()


def test_noop_push_and_pull_transfer_nothing(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_hello()
    reg = from_env()
    first = sync.push("hello", reg)
    # the whole revision moves: kernel (~19 MB for the mvm kernel) + rootfs + metadata
    assert first.bytes > 20_000_000 and first.files == 4
    again = sync.push("hello", reg)
    assert (again.bytes, again.files, again.moved_current) == (0, 0, False)
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "home2"))
    assert sync.pull("hello", reg).bytes == first.bytes
    assert sync.pull("hello", reg).bytes == 0


def test_tampered_remote_object_fails_pull_and_installs_nothing(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    rev = build_hello()
    ok("template", "push", "hello")
    k = key(s3_env, f"revisions/{rev}/rootfs.ext4")
    body = bytearray(s3_server.get(k) or b"")
    body[1000] ^= 0xFF
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=k, Body=bytes(body))
    home2 = {"MVM_HOME": str(tmp_path / "home2")}
    assert "rootfs.ext4 does not match" in fails("template", "pull", "hello", env=home2)
    assert json.loads(ok("template", "list", "--json", env=home2)) == []
    assert list((tmp_path / "home2" / "templates").glob(".tmp-*")) == []
    assert "no template named 'hello'" in fails("up", "--template", "hello", env=home2)


def test_tampered_local_copy_fails_verify_and_up_refuses(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    rev = build_hello()
    ok("template", "push", "hello")
    home2 = {"MVM_HOME": str(tmp_path / "home2")}
    ok("template", "pull", "hello", env=home2)
    initramfs = tmp_path / "home2" / "templates" / "hello" / "revisions" / rev / "initramfs.cpio"
    with open(initramfs, "r+b") as f:  # a pulled file is this home's own copy
        f.seek(100)
        f.write(b"\0tampered\0")
    assert "initramfs.cpio" in fails("template", "verify", "hello", env=home2)
    assert "initramfs.cpio does not match" in fails(
        "up", "--template", "hello", "--name", "x", env=home2
    )
    assert json.loads(ok("ls", "--json", env=home2)) == []
    assert "pulled" in ok("template", "pull", "hello", env=home2)  # a pull repairs it
    assert "ok" in ok("template", "verify", "hello", env=home2)


def test_server_killed_mid_push_gives_a_clear_error(
    private_s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in private_s3_server.env("kill").items():
        monkeypatch.setenv(k, v)
    build_hello()
    with pytest.raises(RegistryError) as exc:
        sync.push("hello", from_env(), progress=KillAfter(private_s3_server.proc, 20_000_000))
    msg = str(exc.value)
    assert "unreachable or connection lost" in msg and private_s3_server.endpoint in msg
    assert private_s3_server.secret_access_key not in msg
    assert "\n" not in msg
    store.verify("hello")  # the local template is untouched


def test_connection_lost_mid_push_leaves_registry_current_unchanged(
    s3_server: S3Server, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    r1 = build_hello()
    ok("template", "push", "hello")
    ok("template", "edit", "hello", "--mem", "320")
    r2 = ok("template", "build", "hello").split()[-2]
    port, proxy = s3_server.proxy()  # the "server" the client sees; killing it drops the link
    monkeypatch.setenv("MVM_TEMPLATE_REGISTRY_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(RegistryError, match="unreachable or connection lost"):
        sync.push("hello", from_env(), progress=KillAfter(proxy, 20_000_000))
    assert s3_server.get(key(s3_env, "current")) == f"{r1}\n".encode()
    assert s3_server.get(key(s3_env, f"revisions/{r2}/checksums.json")) is None
    monkeypatch.setenv("MVM_TEMPLATE_REGISTRY_ENDPOINT", s3_server.endpoint)
    assert f"pushed {r2}" in ok("template", "push", "hello")
    assert s3_server.get(key(s3_env, "current")) == f"{r2}\n".encode()


def test_server_killed_mid_pull_leaves_no_usable_template(
    private_s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for k, v in private_s3_server.env("kill").items():
        monkeypatch.setenv(k, v)
    build_hello()
    ok("template", "push", "hello")
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "home2"))
    with pytest.raises(RegistryError, match="unreachable or connection lost"):
        sync.pull("hello", from_env(), progress=KillAfter(private_s3_server.proc, 20_000_000))
    assert store.list_templates() == [] and not store.exists("hello")
    assert list((tmp_path / "home2" / "templates").glob(".tmp-*")) == []
    assert "no template named 'hello'" in fails("up", "--template", "hello")


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("MVM_TEMPLATE_REGISTRY_SECRET_ACCESS_KEY", "wrong-secret-123", "SignatureDoesNotMatch"),
        ("MVM_TEMPLATE_REGISTRY_ACCESS_KEY_ID", "AKIAWRONGWRONG", "InvalidAccessKeyId"),
    ],
)
def test_wrong_credentials_are_a_clear_error(
    s3_server: S3Server, s3_env: dict[str, str], var: str, value: str, needle: str
) -> None:
    build_hello()
    for verb in ("push", "pull"):
        err = fails("template", verb, "hello", env={var: value})
        assert "rejected the credentials" in err and needle in err
        for secret in (value, s3_server.secret_access_key):
            assert secret not in err
    assert s3_server.get(key(s3_env, "current")) is None


def test_missing_bucket_and_unknown_template(s3_env: dict[str, str]) -> None:
    build_hello()
    env = {"MVM_TEMPLATE_REGISTRY_BUCKET": "no-such-bucket"}
    assert "bucket 'no-such-bucket' does not exist" in fails("template", "push", "hello", env=env)
    assert "not in the registry" in fails("template", "pull", "ghost")
    assert "no template named 'ghost'" in fails("template", "push", "ghost")


def test_pull_a_specific_revision(s3_env: dict[str, str], tmp_path: Path) -> None:
    r1 = build_hello()
    ok("template", "push", "hello")
    ok("template", "edit", "hello", "--mem", "320")
    r2 = ok("template", "build", "hello").split()[-2]
    ok("template", "push", "hello")
    home2 = {"MVM_HOME": str(tmp_path / "home2")}
    assert f"pulled {r1}" in ok("template", "pull", "hello", "--revision", "r1", env=home2)
    assert f"pulled {r2}" in ok("template", "pull", "hello", env=home2)
    info = json.loads(ok("template", "info", "hello", "--json", env=home2))
    assert info["current"] == r2 and {r["id"] for r in info["revisions"]} == {r1, r2}
