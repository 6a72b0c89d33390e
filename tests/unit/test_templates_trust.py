"""Signed templates over the local-directory registry: keys, trust sources, and
forged revisions (re-signed, unsigned, signature copied from another revision
or template) refused when trust is configured, accepted but reported when not."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mvm import paths
from mvm.errors import ConfigError, ConflictError, NotFoundError, TrustError
from mvm.templates import build as tbuild
from mvm.templates import integrity, signing, store, sync, trust
from mvm.templates.registry.local import LocalRegistry
from mvm.templates.store import Settings

if TYPE_CHECKING:
    from tests.unit.template_fakes import FakeBuilder

pytest_plugins = ["tests.unit.template_fakes"]

MakeProject = Callable[..., Path]


@pytest.fixture
def reg(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry")


@pytest.fixture
def published(make_project: MakeProject, fake_builder: FakeBuilder, reg: LocalRegistry) -> str:
    """Template ``app`` built and pushed by the "publisher" (home1); returns its key."""
    store.create("app", Settings(flake=str(make_project())))
    tbuild.build("app")
    sync.push("app", reg)
    key = signing.own_public_key(create=False)
    assert key is not None
    return key


def consumer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "home2") -> None:
    monkeypatch.setenv("MVM_HOME", str(tmp_path / name))


def revdir(reg: LocalRegistry, name: str, rev: str) -> Path:
    return reg.base / f"templates/{name}/revisions/{rev}"


def current(reg: LocalRegistry, name: str = "app") -> str:
    return (reg.base / f"templates/{name}/current").read_text().strip()


def nothing_installed() -> bool:
    return store.list_all() == [] and list(paths.templates_dir().glob(".tmp-*")) == []


# -- keys ------------------------------------------------------------------------------------


def test_key_is_made_on_first_use_private_and_printed_as_one_line() -> None:
    assert signing.own_public_key(create=False) is None
    key = signing.own_public_key(create=True)
    assert key is not None and signing.PUBLIC_KEY_RE.fullmatch(key)
    for p in (signing.private_key_path(), signing.public_key_path(), signing.keys_dir() / ".lock"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(signing.keys_dir().stat().st_mode) == 0o700
    assert signing.own_public_key(create=True) == key  # stable
    signing.public_key_path().unlink()  # derived again from the private key
    assert signing.own_public_key(create=False) == key
    with pytest.raises(ConflictError, match="already exists"):
        signing.generate()
    assert signing.generate(force=True) != key


def test_a_private_key_readable_by_others_is_refused() -> None:
    signing.own_public_key(create=True)
    os.chmod(signing.private_key_path(), 0o644)
    with pytest.raises(ConfigError, match="mode 0600"):
        signing.sign("app", "r1-00000000", {f: "0" * 64 for f in integrity.REVISION_FILES})


def test_signature_binds_name_revision_and_checksums() -> None:
    sums = {f: "1" * 64 for f in integrity.REVISION_FILES}
    raw = signing.sign("app", "r1-aaaaaaaa", sums).encode()
    assert signing.check(raw, "app", "r1-aaaaaaaa", sums, "w").signer
    other = {**sums, "kernel": "2" * 64}
    for args in (("app", "r2-aaaaaaaa", sums), ("web", "r1-aaaaaaaa", sums),
                 ("app", "r1-aaaaaaaa", other)):  # fmt: skip
        assert signing.check(raw, *args, where="w").signer is None
    data = json.loads(raw)
    data["template"], data["revision"] = "web", "r2-aaaaaaaa"  # relabelled, same bytes signed
    assert signing.check(json.dumps(data).encode(), "web", "r2-aaaaaaaa", sums, "w").signer is None
    assert (
        signing.check(b"{}", "app", "r1-aaaaaaaa", sums, "w").problem
        == "signature.json is malformed"
    )


# -- trust sources ---------------------------------------------------------------------------


def test_trust_sources_env_keys_files_comments_and_trust_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not trust.load_policy().configured  # own key alone does not count
    a = signing.generate()
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "b"))
    b = signing.generate()
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "c"))
    keyfile = tmp_path / "team.keys"
    keyfile.write_text(f"# the team\n\n{b}   # bob\n")
    monkeypatch.setenv("MVM_TEMPLATE_TRUSTED_KEYS", f" {a} , {keyfile}")
    policy = trust.load_policy()
    assert policy.configured and policy.keys == {a: trust.ENV, b: str(keyfile)}
    monkeypatch.delenv("MVM_TEMPLATE_TRUSTED_KEYS")
    assert trust.add(a, "alice")[1] and not trust.add(a)[1]
    assert trust.load_policy().keys == {a: trust.FILE_SOURCE}
    assert stat.S_IMODE(trust.trust_file().stat().st_mode) == 0o600
    assert trust.file_entries() == [(a, "alice")]
    trust.remove(a)
    assert not trust.load_policy().configured
    with pytest.raises(NotFoundError):
        trust.remove(a)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("mvm-ed25519:short", "is not a public key"),
        ("ssh-ed25519 AAAA", "no such file"),
        ("/nonexistent/keys", "no such file"),
    ],
)
def test_bad_trusted_keys_are_config_errors(
    value: str, needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MVM_TEMPLATE_TRUSTED_KEYS", value)
    with pytest.raises(ConfigError, match=needle):
        trust.load_policy()


def test_bad_line_in_a_key_file_names_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "keys"
    f.write_text("# ok\nnot-a-key\n")
    monkeypatch.setenv("MVM_TEMPLATE_TRUSTED_KEYS", str(f))
    with pytest.raises(ConfigError, match=f"{f}:2: 'not-a-key' is not a public key"):
        trust.load_policy()


# -- builds and pushes sign ------------------------------------------------------------------


def test_build_signs_and_push_uploads_the_signature_before_current(
    published: str, reg: LocalRegistry
) -> None:
    rev = store.current_revision("app")
    assert rev is not None and store.provenance(rev).signer == published
    remote = revdir(reg, "app", rev.id) / signing.SIGNATURE
    assert remote.read_bytes() == (rev.path / signing.SIGNATURE).read_bytes()


def test_push_signs_an_unsigned_revision(published: str, reg: LocalRegistry) -> None:
    rev = store.current_revision("app")
    assert rev is not None
    (rev.path / signing.SIGNATURE).unlink()
    (revdir(reg, "app", rev.id) / signing.SIGNATURE).unlink()
    assert store.provenance(rev).signer is None
    assert sync.push("app", reg).signer == published
    assert store.provenance(rev).signer == published
    assert (revdir(reg, "app", rev.id) / signing.SIGNATURE).is_file()


# -- pull under trust ------------------------------------------------------------------------


def test_good_signed_revision_pulls_and_verifies_when_trusted(
    published: str, reg: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer(tmp_path, monkeypatch)
    monkeypatch.setenv("MVM_TEMPLATE_TRUSTED_KEYS", published)
    r = sync.pull("app", reg)
    assert r.signer == published
    store.current_image("app")  # what `up --template` calls: accepted
    rev = store.verify("app")
    assert trust.load_policy().describe(store.provenance(rev)) == (
        f"signed by {published} (trusted: {trust.ENV})"
    )


def _forge(reg: LocalRegistry, name: str, src_rev: str, mutate: bytes) -> tuple[str, Path]:
    """A self-consistent new revision: changed rootfs, fresh checksums and id."""
    src = revdir(reg, name, src_rev)
    sums = json.loads((src / "checksums.json").read_text())
    rootfs = (src / "rootfs.ext4").read_bytes() + mutate
    import hashlib

    sums["rootfs.ext4"] = hashlib.sha256(rootfs).hexdigest()
    meta = json.loads((src / "revision.json").read_text())
    meta["sizes"]["rootfs.ext4"] = len(rootfs)
    meta_raw = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    sums["revision.json"] = hashlib.sha256(meta_raw).hexdigest()
    rev_id = f"r9-{integrity.digest(sums)[:8]}"
    dest = revdir(reg, name, rev_id)
    dest.mkdir(parents=True)
    for f in ("kernel", "initramfs.cpio"):
        (dest / f).write_bytes((src / f).read_bytes())
    (dest / "rootfs.ext4").write_bytes(rootfs)
    (dest / "revision.json").write_bytes(meta_raw)
    (dest / "checksums.json").write_bytes(integrity.encode_checksums(sums))
    (reg.base / f"templates/{name}/current").write_text(rev_id + "\n")
    return rev_id, dest


def test_forged_revisions_are_refused_when_trust_is_configured(
    published: str,
    reg: LocalRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = current(reg)
    rev_id, forged = _forge(reg, "app", good, b"evil")
    consumer(tmp_path, monkeypatch, "attacker")
    attacker = signing.own_public_key(create=True)
    consumer(tmp_path, monkeypatch)
    monkeypatch.setenv("MVM_TEMPLATE_TRUSTED_KEYS", published)

    # 1. unsigned
    with pytest.raises(TrustError, match=f"app {rev_id}: unsigned, and trust is configured"):
        sync.pull("app", reg)
    assert nothing_installed()
    # 2. the good revision's signature copied onto the forgery
    (forged / signing.SIGNATURE).write_bytes(
        (revdir(reg, "app", good) / signing.SIGNATURE).read_bytes()
    )
    with pytest.raises(TrustError, match=f"the signature is for app {good}"):
        sync.pull("app", reg)
    # 3. the same, relabelled to claim this revision
    data = json.loads((forged / signing.SIGNATURE).read_text())
    data["revision"] = rev_id
    (forged / signing.SIGNATURE).write_text(json.dumps(data))
    with pytest.raises(TrustError, match=re.escape(f"signature by {published} does not match")):
        sync.pull("app", reg)
    # 4. validly signed, by a key nobody trusts: the error names the signer
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "attacker"))
    sums = json.loads((forged / "checksums.json").read_text())
    (forged / signing.SIGNATURE).write_bytes(signing.sign("app", rev_id, sums).encode())
    consumer(tmp_path, monkeypatch)
    with pytest.raises(
        TrustError, match=re.escape(f"signed by {attacker}, which is not a trusted key")
    ):
        sync.pull("app", reg)
    assert nothing_installed()
    # the trusted publisher's revision still pulls
    assert sync.pull("app", reg, revision=good).signer == published


def test_signature_copied_from_another_template_is_refused(
    published: str,
    reg: LocalRegistry,
    make_project: MakeProject,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store.create("web", Settings(flake=str(make_project("web", dirname="web"))))
    tbuild.build("web")
    sync.push("web", reg)
    web_rev = current(reg, "web")
    app_rev = current(reg)
    # serve web's (validly signed) revision under the name app
    (revdir(reg, "app", app_rev) / signing.SIGNATURE).write_bytes(
        (revdir(reg, "web", web_rev) / signing.SIGNATURE).read_bytes()
    )
    consumer(tmp_path, monkeypatch)
    monkeypatch.setenv("MVM_TEMPLATE_TRUSTED_KEYS", published)
    with pytest.raises(TrustError, match=f"the signature is for web {web_rev}"):
        sync.pull("app", reg)
    assert nothing_installed()


def test_without_trust_nothing_is_refused_but_verify_says_unsigned(
    published: str, reg: LocalRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rev_id, _ = _forge(reg, "app", current(reg), b"evil")
    consumer(tmp_path, monkeypatch)
    assert sync.pull("app", reg).signer is None
    rev = store.verify("app")
    assert rev.id == rev_id and not trust.load_policy().configured
    assert trust.load_policy().describe(store.provenance(rev)) == "unsigned"
    store.current_image("app")
    # configuring trust afterwards makes `up --template` refuse what is already here
    trust.add(published)
    with pytest.raises(TrustError, match="unsigned"):
        store.current_image("app")


def test_up_refuses_a_local_revision_whose_signature_was_replaced(
    published: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rev = store.current_revision("app")
    assert rev is not None
    home = os.environ["MVM_HOME"]
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "other"))
    stranger = signing.own_public_key(create=True)
    forged = signing.sign("app", rev.id, rev.checksums).encode()
    monkeypatch.setenv("MVM_HOME", home)
    signing.write_local(rev.path, forged)
    store.current_image("app")  # no trust configured: accepted
    trust.add(published)
    with pytest.raises(
        TrustError, match=re.escape(f"signed by {stranger}, which is not a trusted key")
    ):
        store.current_image("app")
