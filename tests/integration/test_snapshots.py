"""Snapshots, restore and fork against real QEMU (TCG here).

One template with an HTTP service and a readiness check (``ready = { tcp =
8080 }``) is built with ``--snapshot`` once per module; every test restores
from it.  The service shows what the workload
sees: ``/`` is the config file as read when the service started (so it
changes only if the guest remounted the fresh drive *and* restarted the
service), ``/secret`` the same for the secrets drive, ``/cgi-bin/rand``
16 fresh bytes of the guest's /dev/urandom, ``/counter`` a number a shell
loop increments every second in a tmpfs (state that only lives in memory).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fails, mvmctl, ok, write_project

pytestmark = pytest.mark.integration

SERVICE = r"""name = "snapsvc"
ports = ["{port}:8080"]
[entrypoint.services.web]
ready = {{ tcp = 8080 }}
command = ["/bin/sh", "-c", "mkdir -p /tmp/w/cgi-bin; cat /mnt/config/value > /tmp/w/index.html 2>/dev/null || echo none > /tmp/w/index.html; cat /mnt/secrets/token > /tmp/w/secret 2>/dev/null || echo none > /tmp/w/secret; cat /run/credentials/@system/TOKEN > /tmp/w/cred 2>/dev/null || echo none > /tmp/w/cred; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nhead -c16 /dev/urandom | od -An -tx1 | tr -d \" \\\\n\"\\n' > /tmp/w/cgi-bin/rand; chmod 755 /tmp/w/cgi-bin/rand; (n=0; while :; do n=$((n+1)); echo $n > /tmp/w/counter; sleep 1; done) & exec httpd -f -p 8080 -h /tmp/w"]
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str = "/", timeout: float = 60) -> str:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return str(r.read().decode()).strip()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def snaphome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """MVM_HOME with template `snapsvc` built with --snapshot (one boot for the module)."""
    home = tmp_path_factory.mktemp("snap-home")
    env = {"MVM_HOME": str(home)}
    proj = write_project(tmp_path_factory.mktemp("snap") / "p", SERVICE.format(port=free_port()))
    ok("template", "create", "snapsvc", "--flake", str(proj), env=env)
    out = ok("template", "build", "snapsvc", "--snapshot", env=env, timeout=900)
    assert "built revision r1-" in out
    yield home
    vms = home / "vms"
    for d in vms.glob("*") if vms.exists() else []:
        if d.is_dir():
            mvmctl("down", d.name, env=env)


@pytest.fixture
def home(snaphome: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("MVM_HOME", str(snaphome))
    yield snaphome
    vms = snaphome / "vms"
    for d in vms.glob("*") if vms.exists() else []:
        if d.is_dir():
            mvmctl("down", d.name)


def revision_dir(home: Path) -> Path:
    cur = json.loads(ok("template", "list", "--json"))[0]["current"]
    return home / "templates" / "snapsvc" / "revisions" / str(cur)


def drive(tmp: Path, name: str, file: str, value: str) -> str:
    d = tmp / name
    d.mkdir()
    (d / file).write_text(value + "\n")
    return str(d)


def test_snapshot_is_part_of_the_revision(home: Path) -> None:
    rev = revision_dir(home)
    sums = json.loads((rev / "checksums.json").read_text())
    assert {"snapshot.json", "snapshot.state", "snapshot.ram"} <= set(sums)
    meta = json.loads((rev / "snapshot.json").read_text())
    assert meta["sharedRam"] and meta["hypervisor"] == "qemu"
    assert meta["topology"]["memoryMib"] == 256 and meta["kernelSha256"] == sums["kernel"]
    # the RAM is in its own file, so the state stream holds only devices
    assert (rev / "snapshot.state").stat().st_size < 4 << 20
    assert "7 files verified" in ok("template", "verify", "snapsvc")
    for p in rev.iterdir():  # private like everything under MVM_HOME
        assert p.stat().st_mode & 0o077 == 0, p


def test_three_restores_at_once_each_with_its_own_config_secrets_and_rng(
    home: Path, tmp_path: Path
) -> None:
    cfg_a = drive(tmp_path, "a", "value", "config-A")
    cfg_b = drive(tmp_path, "b", "value", "config-B")
    sec_a = drive(tmp_path, "s", "token", "secret-A")
    pa, pb, pc = free_port(), free_port(), free_port()
    t0 = time.monotonic()
    out = ok("up", "--template", "snapsvc", "--name", "ra", "-p", f"{pa}:8080",
             "-v", f"{cfg_a}:/mnt/config", "-v", f"{sec_a}:/mnt/secrets",
             "--credential", "TOKEN=cred-A")  # fmt: skip
    assert "restored from snapshot" in out
    ok("up", "--template", "snapsvc", "--name", "rb", "-p", f"{pb}:8080",
       "-v", f"{cfg_b}:/mnt/config")  # fmt: skip
    ok("up", "--template", "snapsvc", "--name", "rc", "-p", f"{pc}:8080")
    assert (get(pa), get(pa, "/secret")) == ("config-A", "secret-A")
    assert (get(pb), get(pb, "/secret")) == ("config-B", "none")  # only its own
    assert (get(pc), get(pc, "/secret")) == ("none", "none")  # the snapshot had none
    # a credential given at restore reaches the restored guest (fw_cfg re-read), only A's
    assert (get(pa, "/cred"), get(pb, "/cred"), get(pc, "/cred")) == ("cred-A", "none", "none")
    elapsed = time.monotonic() - t0
    rands = {get(p, "/cgi-bin/rand") for p in (pa, pb, pc)}
    assert len(rands) == 3 and all(len(r) == 32 for r in rands), rands
    for vm in ("ra", "rb", "rc"):
        info = json.loads(ok("status", vm, "--json"))
        assert info["boot"] == "restored" and info["state"] == "running"
    # the guest agent answers in a clone, and the restarted service passes its check again
    end = time.monotonic() + 60
    while "ready" not in (out := ok("status", "rc")) and time.monotonic() < end:
        time.sleep(0.5)
    assert "web" in out and "ready" in out, out
    assert "boot:" in ok("status", "ra")
    names = {i["name"] for i in json.loads(ok("ls", "--json"))}
    assert {"ra", "rb", "rc"} <= names
    print(f"three restores answered within {elapsed:.1f}s")
    # a new VM with new config after the others: only its own again
    ok("down", "ra")
    cfg_d = drive(tmp_path, "d", "value", "config-D")
    pd = free_port()
    ok("up", "--template", "snapsvc", "--name", "rd", "-p", f"{pd}:8080",
       "-v", f"{cfg_d}:/mnt/config")  # fmt: skip
    assert get(pd) == "config-D" and get(pb) == "config-B"


def test_cold_boots_even_with_a_snapshot(home: Path) -> None:
    port = free_port()
    ok("up", "--template", "snapsvc", "--name", "cold1", "--cold", "-p", f"{port}:8080",
       timeout=300)  # fmt: skip
    assert get(port, timeout=120) == "none"
    assert json.loads(ok("status", "cold1", "--json"))["boot"] == "cold"


def test_mismatched_snapshot_is_refused_with_a_cold_hint(home: Path) -> None:
    err = fails("up", "--template", "snapsvc", "--name", "big", "--mem", "320")
    assert "snapshot" in err and "--cold" in err, err
    assert "big" not in {i["name"] for i in json.loads(ok("ls", "--json"))}


def test_fork_keeps_memory_state_and_gets_its_own_identity(home: Path) -> None:
    p1, p2 = free_port(), free_port()
    ok("up", "--template", "snapsvc", "--name", "orig", "-p", f"{p1}:8080")
    get(p1)
    time.sleep(4)  # let the in-memory counter move away from where the snapshot was
    before = int(get(p1, "/counter"))
    assert before >= 3
    out = ok("fork", "orig", "forked", "-p", f"{p2}:8080", timeout=300)
    assert "forked from orig" in out
    in_fork = int(get(p2, "/counter"))
    assert in_fork >= before  # the fork continued from the original's memory
    assert int(get(p1, "/counter")) >= before  # and the original keeps running
    assert get(p1, "/cgi-bin/rand") != get(p2, "/cgi-bin/rand")
    info = json.loads(ok("status", "forked", "--json"))
    assert info["boot"] == "restored" and info["source"] == "fork:orig"
    snaps = home / "snapshots"
    assert len(list(snaps.iterdir())) == 1
    ok("down", "forked")
    assert list(snaps.iterdir()) == []  # its private snapshot went with it
    assert json.loads(ok("status", "orig", "--json"))["state"] == "running"


def test_registry_round_trip_carries_the_snapshot(home: Path, tmp_path: Path) -> None:
    reg = {"MVM_TEMPLATE_REGISTRY": f"file://{tmp_path}/registry"}
    assert "pushed r1-" in ok("template", "push", "snapsvc", env=reg, timeout=300)
    home2 = {**reg, "MVM_HOME": str(tmp_path / "home2")}
    assert "verified" in ok("template", "pull", "snapsvc", env=home2, timeout=300)
    assert "7 files verified" in ok("template", "verify", "snapsvc", env=home2)


def test_corrupted_snapshot_fails_verify_and_up_refuses(home: Path) -> None:
    # last in this module: it damages the module's template
    state = revision_dir(home) / "snapshot.state"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(state, 0o600)
    state.write_bytes(bytes(data))
    assert "snapshot.state" in fails("template", "verify", "snapsvc")
    err = fails("up", "--template", "snapsvc", "--name", "bad")
    assert "snapshot.state does not match" in err
    assert "bad" not in {i["name"] for i in json.loads(ok("ls", "--json"))}
