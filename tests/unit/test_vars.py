"""Vars: the mvm.toml schema, the generator sandbox, the encrypted store, bundles.

Real scripts run under /bin/sh (these are host processes, no VM needed)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mvm.config.loader import parse_spec
from mvm.config.schema import GeneratorSpec, VarCredentialSpec, VarFileSpec
from mvm.errors import ConfigError, VarsError
from mvm.secrets import vars as vars_mod
from mvm.secrets import varstore
from tests.conftest import mvmctl

BASE = {"name": "vt", "entrypoint": {"command": ["/bin/true"]}}


def spec(**extra: object) -> object:
    return parse_spec({**BASE, **extra}, Path("/p/mvm.toml"))


def gen(script: str, *files: str, inputs: tuple[str, ...] = ("coreutils",),
        public: tuple[str, ...] = ()) -> GeneratorSpec:  # fmt: skip
    fs = tuple(VarFileSpec(f, True, 0o400) for f in files)
    fs += tuple(VarFileSpec(f, False, 0o444) for f in public)
    return GeneratorSpec("g", fs, script, inputs)


# -- schema ------------------------------------------------------------------------------


def test_schema_parses_the_issue_example() -> None:
    s = spec(
        vars={"generators": {"app-secrets": {
            "files": {"api-key": {"secret": True, "mode": "0400"}, "public-id": {"secret": False}},
            "runtime_inputs": ["openssl", "coreutils"],
            "script": "openssl rand -base64 32 > \"$out/api-key\"; echo id > \"$out/public-id\"",
        }}},
        credentials={"API_KEY": {"var": "app-secrets/api-key"}},
    )  # fmt: skip
    g = s.generators[0]  # type: ignore[attr-defined]
    assert g.name == "app-secrets" and g.runtime_inputs == ("openssl", "coreutils")
    assert [(f.name, f.secret, f.mode) for f in g.files] == [
        ("api-key", True, 0o400), ("public-id", False, 0o444)]  # fmt: skip
    assert s.var_credentials == (VarCredentialSpec("API_KEY", "app-secrets", "api-key"),)  # type: ignore[attr-defined]
    assert s.credentials == ()  # type: ignore[attr-defined]


GOOD_GEN = {"files": {"k": {}}, "script": "true"}
BAD_SCHEMA = [
    ({"vars": {"generators": {"a/b": GOOD_GEN}}}, "generator names"),
    ({"vars": {"generators": {"g": {**GOOD_GEN, "files": {"../x": {}}}}}}, "file names"),
    ({"vars": {"generators": {"g": {**GOOD_GEN, "files": {".hidden": {}}}}}}, "file names"),
    ({"vars": {"generators": {"g": {**GOOD_GEN, "files": {"meta.json": {}}}}}}, "file names"),
    ({"vars": {"generators": {"g": {**GOOD_GEN, "files": {"k.age": {}}}}}}, "file names"),
    ({"vars": {"generators": {"g": {**GOOD_GEN, "files": {}}}}}, "at least one file"),
    ({"vars": {"generators": {"g": {"files": {"k": {}}}}}}, "script: is required"),
    ({"vars": {"generators": {"g": {**GOOD_GEN, "extra": 1}}}}, "unknown key"),
    ({"vars": {"generators": {"g": {**GOOD_GEN, "runtime_inputs": ["a b"]}}}}, "not a command"),
    ({"vars": {"generators": {"g": {**GOOD_GEN, "runtime_inputs": "openssl"}}}}, "must be a list"),
    ({"vars": {"generators": {"g": {**GOOD_GEN, "files": {"k": {"mode": "777x"}}}}}}, "octal"),
    ({"vars": {"generators": {"g": {**GOOD_GEN, "files": {"k": {"secret": "yes"}}}}}}, "true or false"),
    ({"vars": {"other": {}}}, "unknown key"),
    ({"credentials": {"A": {"var": "nope/k"}}}, "is not a file of any"),
    ({"vars": {"generators": {"g": GOOD_GEN}}, "credentials": {"A": {"var": "g/other"}}},
     "is not a file of any"),
    ({"credentials": {"A": {"var": "g"}}}, "GENERATOR/FILE"),
    ({"credentials": {"A": {"var": "g/k", "file": "x"}}}, "exactly one of"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), BAD_SCHEMA, ids=[m for _e, m in BAD_SCHEMA])
def test_schema_refuses(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec(**extra)


# -- the generator sandbox -----------------------------------------------------------------


def test_script_runs_in_an_empty_dir_with_a_minimal_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_HOST_SECRET", "hunter2")
    g = gen('ls -A > "$out/ls"; env > "$out/env"; pwd > "$out/pwd"', "ls", "env", "pwd")
    files = vars_mod.run_generator(g)
    assert files["ls"].value == b""  # nothing in the working directory
    env = dict(
        line.split("=", 1) for line in files["env"].value.decode().splitlines() if "=" in line
    )
    assert "SOME_HOST_SECRET" not in env and "MVM_HOME" not in env
    path_dirs = env["PATH"].split(":")
    assert len(path_dirs) == 1 and os.path.basename(path_dirs[0]) == "bin"
    assert set(env) <= {"PATH", "out", "TMPDIR", "HOME", "LC_ALL", "PWD", "OLDPWD", "SHLVL", "_"}
    # the scratch directory is gone afterwards
    assert not Path(files["pwd"].value.decode().strip()).exists()


def test_path_holds_only_the_runtime_inputs() -> None:
    g = gen('for c in openssl tr wc base64 python3 curl; do command -v $c >/dev/null && echo $c; done > "$out/found"; true',
            "found", inputs=("openssl",))  # fmt: skip
    # "tr" etc. are coreutils: not declared, not there; only openssl resolves
    assert vars_mod.run_generator(g)["found"].value.split() == [b"openssl"]
    g2 = gen('command -v tr > "$out/found"', "found", inputs=("coreutils",))
    assert vars_mod.run_generator(g2)["found"].value.strip().endswith(b"/tr")


def test_missing_runtime_input_is_a_clear_error() -> None:
    with pytest.raises(VarsError, match="runtime input no-such-tool-xyz not found on this host"):
        vars_mod.run_generator(gen('echo > "$out/k"', "k", inputs=("no-such-tool-xyz",)))


HOSTILE = [
    ('echo a > "$out/k"; echo b > "$out/extra"', "undeclared file 'extra'"),
    ('true', "did not write k"),
    ('ln -s /etc/passwd "$out/k"', "is a symlink"),
    ('mkdir "$out/k"', "not a regular file"),
    ('mkfifo "$out/k"', "not a regular file"),
    ('head -c 1048577 /dev/zero > "$out/k"', "over the 1 MiB limit"),
    ('echo a > "$out/k"; touch "$out/$(printf "\\377\\376")"', "not UTF-8"),
    ('echo a > "$out/k"; exit 3', "exit status 3"),
    ('mkdir "$TMPDIR/o"; echo a > "$TMPDIR/o/k"; rmdir "$out"; ln -s "$TMPDIR/o" "$out"',
     "replaced \\$out itself"),
    ('echo "boom: cannot do it" >&2; false', "boom: cannot do it"),
]  # fmt: skip


@pytest.mark.parametrize(("script", "message"), HOSTILE, ids=[m for _s, m in HOSTILE])
def test_hostile_output_is_refused(script: str, message: str) -> None:
    with pytest.raises(VarsError, match=message):
        vars_mod.run_generator(gen(script, "k"))


def test_script_timeout_kills_the_whole_group() -> None:
    g = gen('sleep 30 & sleep 30; echo > "$out/k"', "k")
    with pytest.raises(VarsError, match="timed out"):
        vars_mod.run_generator(g, timeout=1)


# -- the store -----------------------------------------------------------------------------

SECRET_SCRIPT = 'head -c 24 /dev/urandom | base64 > "$out/k"; echo public-value > "$out/p"'


def test_store_encrypts_secrets_and_keeps_public_files_plain() -> None:
    g = gen(SECRET_SCRIPT, "k", public=("p",))
    vars_mod.generate("vm1", [g])
    secret = varstore.read("vm1", "g", "k").value
    assert len(secret) == 33 and varstore.read("vm1", "g", "p").value == b"public-value\n"
    home = Path(os.environ["MVM_HOME"])
    leaks = [p for p in home.rglob("*") if p.is_file() and secret.strip() in p.read_bytes()]
    assert leaks == []
    assert (home / "vars/vm1/g/p").read_bytes() == b"public-value\n"
    for p in [home, *home.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, (p, oct(mode))


def test_generate_skips_existing_and_regenerate_replaces() -> None:
    g = gen(SECRET_SCRIPT, "k", public=("p",))
    assert [o.action for o in vars_mod.generate("vm1", [g])] == ["generated"]
    first = varstore.read("vm1", "g", "k").value
    assert [o.action for o in vars_mod.generate("vm1", [g])] == ["kept"]
    assert varstore.read("vm1", "g", "k").value == first
    assert [o.action for o in vars_mod.generate("vm1", [g], regenerate=True)] == ["regenerated"]
    assert varstore.read("vm1", "g", "k").value != first
    # the old directory is gone: only one generator directory, no staging left
    base = Path(os.environ["MVM_HOME"]) / "vars/vm1"
    assert sorted(p.name for p in base.iterdir()) == ["g"]


def test_a_failing_generator_keeps_every_old_value() -> None:
    good = gen(SECRET_SCRIPT, "k", public=("p",))
    other = GeneratorSpec("h", (VarFileSpec("x", True, 0o400),), 'echo 1 > "$out/x"', ())
    vars_mod.generate("vm1", [good, other])
    before = (varstore.read("vm1", "g", "k").value, varstore.read("vm1", "h", "x").value)
    broken = GeneratorSpec("h", other.files, 'echo 2 > "$out/x"; exit 1', ())
    with pytest.raises(VarsError, match="generator h: script failed"):
        vars_mod.generate("vm1", [good, broken], regenerate=True)
    # g ran fine but was not committed either: all or nothing
    assert (varstore.read("vm1", "g", "k").value, varstore.read("vm1", "h", "x").value) == before
    base = Path(os.environ["MVM_HOME"]) / "vars/vm1"
    assert sorted(p.name for p in base.iterdir()) == ["g", "h"]


def test_changed_declaration_regenerates_that_generator() -> None:
    g = gen(SECRET_SCRIPT, "k", public=("p",))
    vars_mod.generate("vm1", [g])
    g2 = gen(SECRET_SCRIPT + '; echo > "$out/n"', "k", "n", public=("p",))
    assert vars_mod.state("vm1", [g2]) == {"g": "changed"}
    assert [o.action for o in vars_mod.generate("vm1", [g2])] == ["generated"]


def test_missing_vars_name_the_seed_command() -> None:
    decl = (VarCredentialSpec("API_KEY", "g", "k"),)
    with pytest.raises(VarsError, match=r"Run 'mvmctl vars generate vm1' first"):
        vars_mod.credentials_for("vm1", decl)
    vars_mod.generate("vm1", [gen(SECRET_SCRIPT, "k", public=("p",))])
    (cred,) = vars_mod.credentials_for("vm1", decl)
    assert cred.name == "API_KEY" and len(cred.value) == 33 and cred.source == "var"
    assert "value" not in repr(cred) or cred.value.decode() not in repr(cred)


def test_store_from_another_identity_is_a_clear_error(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    vars_mod.generate("vm1", [gen(SECRET_SCRIPT, "k", public=("p",))])
    ident = Path(os.environ["MVM_HOME"]) / "vars/identity"
    ident.unlink()
    with pytest.raises(VarsError, match="cannot be decrypted with this host's identity"):
        varstore.read("vm1", "g", "k")


def test_identity_readable_by_others_is_refused() -> None:
    varstore.host_identity()
    ident = Path(os.environ["MVM_HOME"]) / "vars/identity"
    os.chmod(ident, 0o644)
    with pytest.raises(VarsError, match="readable by others"):
        varstore.host_identity()


# -- bundles -------------------------------------------------------------------------------


def test_export_import_with_passphrase_and_recipient(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    vars_mod.generate("vm1", [gen(SECRET_SCRIPT, "k", public=("p",))])
    secret = varstore.read("vm1", "g", "k").value
    by_pw = varstore.export_bundle("vm1", passphrase="correct horse")
    assert secret not in by_pw and varstore.needs_passphrase(by_pw)
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "home2"))
    with pytest.raises(VarsError, match="passphrase-encrypted"):
        varstore.import_bundle("vm1", by_pw)
    with pytest.raises(VarsError, match="cannot decrypt"):
        varstore.import_bundle("vm1", by_pw, passphrase="wrong")
    assert varstore.import_bundle("copy", by_pw, passphrase="correct horse") == ["g"]
    assert varstore.read("copy", "g", "k").value == secret
    # to a recipient: the second home's host identity
    recipient = varstore.host_recipient()
    monkeypatch.setenv("MVM_HOME", str(Path(os.environ["MVM_HOME"]).parent / "mvm-home"))
    to_host = varstore.export_bundle("vm1", recipient=recipient)
    monkeypatch.setenv("MVM_HOME", str(tmp_path / "home2"))
    varstore.import_bundle("vm2", to_host)
    assert varstore.read("vm2", "g", "k").value == secret


def _bundle_to_self(doc: object) -> bytes:
    import pyrage

    return bytes(pyrage.encrypt(json.dumps(doc).encode(),
                                [varstore.host_identity().to_public()]))  # fmt: skip


BAD_BUNDLES = [
    ({"kind": "other"}, "not an mvm vars bundle"),
    ({"kind": "mvm-vars", "schema": 9, "generators": {}}, "schema 9"),
    ({"kind": "mvm-vars", "schema": 1, "generators": {"../x": {}}}, "invalid generator name"),
    ({"kind": "mvm-vars", "schema": 1, "generators": {"g": {"files": {"../../etc/x": {}}}}},
     "invalid file name"),
    ({"kind": "mvm-vars", "schema": 1, "generators": {"g": {"files": {"k": {
        "secret": True, "mode": "0400", "value": "!!"}}}}}, "malformed value"),
    ({"kind": "mvm-vars", "schema": 1, "generators": {"g": {"files": {"k": {
        "secret": True, "mode": "0400", "value": "QUFB" * 400000}}}}}, "over the 1 MiB limit"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "message"), BAD_BUNDLES, ids=[m for _d, m in BAD_BUNDLES])
def test_hostile_bundles_are_refused_without_writing(doc: object, message: str) -> None:
    with pytest.raises(VarsError, match=message):
        varstore.import_bundle("vm1", _bundle_to_self(doc))
    assert varstore.generators("vm1") == {}
    assert not any(Path(os.environ["MVM_HOME"], "vars").glob("vm1/*"))


def test_not_age_is_refused() -> None:
    with pytest.raises(VarsError, match="not an age-encrypted"):
        varstore.import_bundle("vm1", b"{}")


# -- the CLI -------------------------------------------------------------------------------


def test_cli_generate_list_get_and_secret_needs_reveal(tmp_path: Path) -> None:
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "mvm.toml").write_text(
        'name = "vt"\n[entrypoint]\ncommand = ["/bin/true"]\n'
        "[vars.generators.s]\nfiles.k = { secret = true }\nfiles.pub = { secret = false }\n"
        'runtime_inputs = ["coreutils"]\n'
        'script = "printf topsecret > \\"$out/k\\"; printf hello > \\"$out/pub\\""\n'
        '[credentials]\nK = { var = "s/k" }\n'
    )
    r = mvmctl("vars", "generate", "vt", "--flake", str(proj))
    assert r.returncode == 0 and "s: generated" in r.stdout, r.stderr
    r = mvmctl("vars", "list", "vt", "--flake", str(proj))
    assert "s/k" in r.stdout and "ok" in r.stdout and "topsecret" not in r.stdout
    r = mvmctl("vars", "get", "vt", "s/k")
    assert r.returncode != 0 and "--reveal" in r.stderr and "topsecret" not in r.stderr
    assert mvmctl("vars", "get", "vt", "s/k", "--reveal").stdout == "topsecret"
    assert mvmctl("vars", "get", "vt", "s/pub").stdout == "hello"
    r = mvmctl("vars", "get", "vt", "s/none")
    assert r.returncode != 0 and "Run 'mvmctl vars generate vt' first" in r.stderr
    r = mvmctl("vars", "export", "vt")
    assert r.returncode != 0 and r.stderr.startswith("mvmctl: error: give exactly one")
    import subprocess

    from tests.conftest import MVMCTL

    env = dict(os.environ, MVM_VARS_PASSPHRASE="pw")
    out = subprocess.run([MVMCTL, "vars", "export", "vt", "--passphrase"], env=env,
                         capture_output=True, timeout=60, check=True).stdout  # fmt: skip
    assert out.startswith(b"age-encryption.org/v1\n") and b"topsecret" not in out
    env["MVM_HOME"] = str(tmp_path / "home2")
    r2 = subprocess.run([MVMCTL, "vars", "import", "vt"], input=out, env=env,
                        capture_output=True, timeout=60)  # fmt: skip
    assert r2.returncode == 0, r2.stderr
    r3 = subprocess.run([MVMCTL, "vars", "get", "vt", "s/k", "--reveal"], env=env,
                        capture_output=True, timeout=60)  # fmt: skip
    assert r3.stdout == b"topsecret"


def test_cli_hostile_inputs_are_one_line_errors(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import MVMCTL

    for stdin in (b"", b"not age at all", b"age-encryption.org/v1\n-> X25519 garbage\n---\n"):
        r = subprocess.run([MVMCTL, "vars", "import", "vm1"], input=stdin, capture_output=True,
                           timeout=60)  # fmt: skip
        err = r.stderr.decode()
        assert r.returncode != 0 and err.startswith("mvmctl: error: "), err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    for args in (["vars", "get", "../x", "g/k"], ["vars", "list", "Bad"],
                 ["vars", "generate", "x", "--flake", str(tmp_path / "nothing")],
                 ["vars", "get", "vm1", "nofile"]):  # fmt: skip
        r = mvmctl(*args)
        assert r.returncode != 0 and r.stderr.startswith("mvmctl: error: "), (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (Path(os.environ["MVM_HOME"]) / "vars" / "vm1").exists()


def test_resolve_reads_vars_of_the_vm_name_and_a_cli_credential_wins(tmp_path: Path) -> None:
    from mvm.runtime.config import RunConfig
    from mvm.runtime.resolve import RuntimeDefaults, resolve
    from mvm.secrets.credentials import Credential

    class FakeImage:
        class meta:  # the attributes resolve() reads
            name = "img"
            backend = "qemu"

    decl = (VarCredentialSpec("API_KEY", "g", "k"),)
    defaults = RuntimeDefaults(origin="mvm.toml", var_credentials=decl)
    with pytest.raises(VarsError, match="Run 'mvmctl vars generate web' first"):
        resolve(FakeImage(), RunConfig(name="web"), defaults, source="x")  # type: ignore[arg-type]
    given = RunConfig(name="web", credentials=[Credential("API_KEY", b"from-cli")])
    r = resolve(FakeImage(), given, defaults, source="x")  # type: ignore[arg-type]
    assert [c.value for c in r.credentials] == [b"from-cli"]
    vars_mod.generate("web", [gen(SECRET_SCRIPT, "k", public=("p",))])
    r = resolve(FakeImage(), RunConfig(name="web"), defaults, source="x")  # type: ignore[arg-type]
    assert r.credentials[0].source == "var" and r.sources["credentials"] == "var"
    assert r.credentials[0].value == varstore.read("web", "g", "k").value
