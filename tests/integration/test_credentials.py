"""Credentials in real guests, and the secret leaking nowhere on the host.

Uses the instrumented boot of ``conftest_drives``: credentials from
``--credential NAME=VALUE``, ``--credential NAME@FILE`` (a binary value and a
100 KiB value), a name too long for fw_cfg, mvm.toml ``[credentials]`` and a
forwarded ``$CREDENTIALS_DIRECTORY``; the guest prints sizes and sha256 sums.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import mvmctl
from tests.integration.drives_support import (
    BINARY,
    K100,
    LONG_NAME,
    SECRET,
    Boot,
    Inputs,
    creds_of,
    env_for,
    parse,
    sha,
)

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.integration.conftest_drives"]


def test_credentials_exact_bytes_modes_and_owner(boot: Boot) -> None:
    g = parse(boot.console)
    creds = creds_of(g)
    expected = {
        "TOKEN": SECRET.encode(),  # --credential NAME=VALUE
        "BIN": BINARY,  # --credential NAME@FILE, binary
        "K100": K100,  # 100 KiB
        LONG_NAME: (SECRET + "-long").encode(),  # > 28 bytes: the cpio bundle
        "TOML_CRED": (SECRET + "-toml").encode(),  # mvm.toml [credentials]
        "HOSTFWD": (SECRET + "-host").encode(),  # $CREDENTIALS_DIRECTORY on the host
    }
    assert set(creds) == set(expected)
    for name, value in expected.items():
        assert creds[name] == ("400", "1000", len(value), sha(value)), name
    assert g["creddir"] == ["700 1000"]
    assert g["creds-ro"] == ["yes"]  # the credentials tmpfs is read-only
    env = dict(line.split("=", 1) for line in g["env"])
    assert env["CREDENTIALS_DIRECTORY"] == "/run/credentials/@system"
    assert any(" /run/credentials/@system tmpfs ro," in m for m in g["mount"])


def test_credentials_reach_qemu_by_file_only(boot: Boot) -> None:
    argv = boot.cmdline.split(b"\0")
    fw = [argv[i + 1] for i, a in enumerate(argv) if a == b"-fw_cfg"]
    assert b"name=opt/io.systemd.credentials/TOKEN,file=" in b" ".join(fw)
    assert all(b",file=" in f and b"string=" not in f for f in fw)
    assert any(f.startswith(b"name=opt/mvm/credentials/00,") for f in fw)  # long name, 100 KiB


def test_secret_appears_nowhere_on_the_host(boot: Boot) -> None:
    secret = SECRET
    assert secret.encode() not in boot.cmdline  # /proc/PID/cmdline of QEMU
    assert "END-CHECK" in boot.console and secret not in boot.console
    assert secret not in boot.qemu_log
    assert secret not in boot.vm_json and secret not in boot.status_json
    assert secret not in boot.ls_json
    assert boot.home_leaks == []  # no file anywhere under MVM_HOME while it ran
    up = boot.up
    assert secret not in up.stdout + up.stderr
    second = boot.second
    assert secret not in second.stdout + second.stderr
    import json

    status = json.loads(boot.status_json)
    assert sorted(status["credentials"]) == sorted(
        ["TOKEN", "BIN", "K100", LONG_NAME, "TOML_CRED", "HOSTFWD"]
    )


def test_cli_credential_overrides_and_second_boot(boot: Boot) -> None:
    # the re-run passed TOKEN@bin.cred: a new value for the same name, mvm.toml's still there
    creds = creds_of(parse(boot.second.stdout))
    assert creds["TOKEN"][3] == sha(BINARY)
    assert creds["TOML_CRED"][3] == sha(SECRET + "-toml")
    assert "HOSTFWD" not in creds  # not forwarded: no $CREDENTIALS_DIRECTORY this time


BAD_CREDENTIALS = [
    (["--credential", "A={s}", "--credential", "A=other"], "given twice"),
    (["--credential", "BAD/NAME={s}"], "invalid credential name"),
    (["--credential", "{s}"], "expected NAME=VALUE or NAME@FILE"),
    (["--credential", "TOOLONG" + "x" * 260 + "={s}"], "invalid credential name"),
    (["--credential", "A@{root}/does-not-exist"], "cannot read"),
    (["--credential", "A@{root}"], "is a directory"),
    (["--credential", "A@{root}/big.cred"], "over the 1 MiB limit"),
    (["--credential", "A@{root}/k100.cred"] * 1 + ["--credential", "B@{root}/big-ish.cred"],
     "over the 1 MiB limit for all credentials"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD_CREDENTIALS, ids=[m for _a, m in BAD_CREDENTIALS])
def test_bad_credential_fails_cleanly(
    args: list[str], message: str, inputs: Inputs, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (inputs.root / "big.cred").write_bytes(b"x" * ((1 << 20) + 1))
    (inputs.root / "big-ish.cred").write_bytes(b"y" * ((1 << 20) - 1000))
    argv = [a.format(s=SECRET, root=inputs.root) for a in args]
    res = mvmctl("run", "--attached", str(inputs.project), *argv, env=env_for(home))
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mvmctl: error:") and message in err[0], err
    assert SECRET not in res.stderr + res.stdout
    assert not (home / "vms").exists()
