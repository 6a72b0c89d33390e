"""Config, secrets and data drives in real guests (TCG boots).

One instrumented `up` (config + secrets + data volume + credentials) and its
attached re-run are shared with test_credentials.py through
``conftest_drives``; the Python API gets a boot of its own.  Everything
checked inside the guest is printed by the image's ``check`` entrypoint as
modes, owners and sha256 sums, never values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import mvmctl
from tests.integration.drives_support import (
    BINARY,
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


def stats(groups: dict[str, list[str]]) -> dict[str, tuple[str, str, str, str]]:
    """path → (mode, uid, gid, d|f) from ``stat`` lines."""
    out = {}
    for line in groups.get("stat", []):
        mode, uid, gid, kind, path = line.split()
        out[path] = (mode, uid, gid, kind)
    return out


def sums(groups: dict[str, list[str]]) -> dict[str, str]:
    return {path: digest for digest, path in (line.split() for line in groups.get("sum", []))}


def test_config_drive_read_only_0444_with_subdirectories(boot: Boot, inputs: Inputs) -> None:
    g = parse(boot.console)
    st = stats(g)
    files = [p for p, v in st.items() if p.startswith("/mnt/config/") and v[3] == "f"]
    assert sorted(files) == [
        "/mnt/config/app.json",
        "/mnt/config/env.sh",
        "/mnt/config/hold",
        "/mnt/config/sub/deeper/n.toml",
    ]  # fmt: skip  (exactly the host directory: no lost+found)
    assert all(st[p][:3] == ("444", "0", "0") for p in files)
    assert st["/mnt/config/sub"] == ("555", "0", "0", "d")
    assert sums(g)["/mnt/config/app.json"] == sha((inputs.config / "app.json").read_bytes())
    assert sums(g)["/mnt/config/sub/deeper/n.toml"] == sha("k = 1\n")
    assert g["config-ro"] == ["yes"]  # writing to the config drive fails
    mounts = " ".join(g["mount"])
    assert "/dev/vdb /mnt/config ext4 ro,nosuid,nodev,noexec" in mounts


def test_secrets_drive_0400_owned_by_entrypoint(boot: Boot) -> None:
    g = parse(boot.console)
    st = stats(g)
    assert st["/mnt/secrets/app.env"] == ("400", "1000", "1000", "f")
    assert st["/mnt/secrets/tls/key.pem"] == ("400", "1000", "1000", "f")
    assert st["/mnt/secrets"][:3] == ("500", "1000", "1000")
    assert sums(g)["/mnt/secrets/tls/key.pem"] == sha(BINARY)
    assert "/dev/vdc /mnt/secrets ext4 ro,nosuid,nodev,noexec" in " ".join(g["mount"])


def test_env_files_sourced_into_the_entrypoint(boot: Boot) -> None:
    env = dict(line.split("=", 1) for line in parse(boot.console)["env"])
    assert env["GREETING"] == "hello from config"  # /mnt/config/env.sh
    assert env["API_KEY_SHA"] == sha(SECRET)  # /mnt/secrets/app.env
    assert env["QUOTED_SHA"] == sha(SECRET + "$x")  # read literally: no expansion


def test_data_volume_persists_across_down_and_up(boot: Boot) -> None:
    g = parse(boot.console)
    assert g["data"] == ["boots=1 seed=seeded 1000"]
    assert "/dev/vdd /data ext4 rw,nosuid,nodev" in " ".join(g["mount"])
    assert boot.volume_kept  # `down` removed the VM, not its volume
    second = boot.second
    assert second.returncode == 0, second.stderr
    g2 = parse(second.stdout)
    assert g2["data"] == ["boots=2 seed=seeded 1000"]
    # only a data volume: placeholders keep it at vdd, nothing else is mounted
    assert [m.split()[:2] for m in g2["mount"] if "/dev/vd" in m] == [["/dev/vdd", "/data"]]


def test_run_dir_private_and_drive_images_gone(boot: Boot) -> None:
    assert boot.run_dir_mode == 0o700
    assert not [f for f in boot.run_dir_files if f.startswith(("drives", "creds"))]
    assert not boot.after_down  # down removed the run directory


def test_python_api_with_drive_files(
    inputs: Inputs, drives_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mvm
    from mvm.image.builder import build  # `mvm.image` is also the subpackage's name
    from mvm.runtime import vm as vm_mod

    monkeypatch.setenv("MVM_HOME", str(drives_home))
    image = build(mvm.load_project(inputs.project))
    run = mvm.RunConfig(
        name="drv-api",
        config_files=[
            mvm.DriveFile("settings.yaml", "port: 8080\n"),
            mvm.DriveFile("env.sh", "GREETING=from-api\n"),
            mvm.DriveFile("certs/ca.pem", b"\x00binary-ca\n", mode=0o644),
        ],
        secret_files=[mvm.DriveFile("api.env", f"API_KEY={SECRET}\n")],
        credentials=[mvm.Credential("API", SECRET.encode())],
    )
    assert SECRET not in repr(run)
    handle = mvm.up(image, run, source="python-api")
    try:
        assert vm_mod.wait(handle.name, timeout=90) == 0
        console = vm_mod.log_path(handle.name).read_text(errors="replace")
        record = (drives_home / "vms" / handle.name / "vm.json").read_text()
    finally:
        mvm.down(handle.name)
    g = parse(console)
    st = stats(g)
    assert st["/mnt/config/settings.yaml"][:3] == ("444", "0", "0")
    assert st["/mnt/config/certs/ca.pem"][:3] == ("644", "0", "0")  # explicit mode kept
    assert st["/mnt/secrets/api.env"][:3] == ("400", "1000", "1000")
    assert sums(g)["/mnt/config/certs/ca.pem"] == sha(b"\x00binary-ca\n")
    env = dict(line.split("=", 1) for line in g["env"])
    assert env["GREETING"] == "from-api" and env["API_KEY_SHA"] == sha(SECRET)
    assert creds_of(g)["API"] == ("400", "1000", len(SECRET), sha(SECRET))
    assert SECRET not in console and SECRET not in record
    # mvm.up() applies mvm.toml's [credentials] like `mvmctl up` does (issue 10)
    assert json.loads(record)["credentials"] == ["API", "TOML_CRED"]


BAD_VOLUMES = [
    (["-v", "{root}/missing:/mnt/config"], "no such directory"),
    (["-v", "{root}/afile:/mnt/config"], "is a file, not a directory"),
    (["-v", "{root}/config:/srv/app"], "needs a size"),
    (["-v", "{root}/config:/srv/app:12Q"], "malformed size"),
    (["-v", "{root}/config:/srv/app:lots"], "malformed size"),
    (["-v", "{root}/bigsecrets:/mnt/secrets"], "larger than the drive"),
    (["-v", "{root}/config:/etc/app:1G"], "system directory"),
    (["-v", "{root}/config"], "HOST_DIR:/guest/path"),
    (["-v", "{root}/config:/mnt/config", "-v", "{root}/secrets:/mnt/config"], "two volumes"),
    (["-v", "{root}/config:/srv/notinimage:64M"], "no such directory in the sealed image"),
]


@pytest.mark.parametrize(("args", "message"), BAD_VOLUMES, ids=[m for _a, m in BAD_VOLUMES])
def test_bad_volume_fails_cleanly(
    args: list[str], message: str, inputs: Inputs, drives_home: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (inputs.root / "afile").write_text("x")
    big = inputs.root / "bigsecrets"
    big.mkdir(exist_ok=True)
    with open(big / "huge.bin", "wb") as f:  # sparse, but 20 MiB on a 16 MiB drive
        f.truncate(20 << 20)
    argv = [a.format(root=inputs.root) for a in args]
    argv += ["--credential", f"TOKEN={SECRET}"]
    res = mvmctl("run", "--attached", str(inputs.project), *argv, env=env_for(home), timeout=300)
    assert res.returncode != 0
    err = res.stderr.strip().splitlines()
    assert err[0].startswith("mvmctl: error:") and message in err[0], res.stderr
    assert len([line for line in err if line.startswith("mvmctl:")]) == 1
    assert SECRET not in res.stderr + res.stdout
    assert not (home / "vms").exists() or not any((home / "vms").iterdir())
    assert not (home / "volumes").exists()
