"""Egress through the real proxy from a real guest (busybox wget, nc, httpd).

One image, two boots: a VM with the dev preset, servers on the host's
loopback mapped with ``--add-host`` and explicitly allowed, and a secret
bound to ``api.test``; and a VM with the default preset (none).  The first
stays up after its checks so the host can dump its memory through QMP and
add and remove a forward to its ``httpd``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import MVMCTL, mvmctl, write_project
from tests.integration.drives_support import env_for, parse
from tests.integration.network_support import digest, echo_server

pytestmark = pytest.mark.integration
LIT = "\x27" * 3  # a TOML literal string: the script's backslashes stay as they are
SECRET = "sk-live-7f3a9c1e-not-for-the-guest"

CHECK = r"""#!/bin/sh
echo BEGIN-CHECK
echo "env-token $TOKEN"
echo "bound $(timeout 20 wget -q -O - http://api.test:{hp}/bound 2>&1)"
echo "unbound $(timeout 20 wget -q -O - http://plain.test:{hp}/unbound 2>&1)"
timeout 20 wget -q -O - http://evil.test:{hp}/ >/dev/null 2>&1; echo "denied-rc $?"
echo "direct $(timeout 20 wget -q -Y off -O - http://plain.test:{hp}/direct 2>&1)"
timeout 20 wget -q -Y off -O - http://evil.test:{hp}/ >/dev/null 2>&1; echo "direct-denied-rc $?"
timeout 5 wget -q -Y off -O - http://10.0.2.2:{hp}/ >/dev/null 2>&1; echo "raw-ip-rc $?"
echo "nc $(printf 'GET /nc HTTP/1.1\r\nHost: plain.test:{hp}\r\nConnection: close\r\n\r\n' | timeout 20 nc 10.0.2.100 {hp} | tail -n 1)"
tls() {{ printf 'GET /tls HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$1:{hps}" |
    timeout 30 openssl s_client -quiet -verify_return_error -servername "$1" -connect "$1:{hps}" 2>&1; }}
echo "tls $(tls api.test | tail -n 1)"
echo "tls-tunnel $(tls plain.test | grep -c 'verify error')"
timeout 20 wget -q -O - http://plain.test:{hp}/stream | while read -r l; do
    [ -n "$l" ] && {{ read -r up _ < /proc/uptime; echo "stream $up $l"; }}
done
for f in /proc/[0-9]*/environ; do tr '\0' '\n' < "$f" 2>/dev/null | grep '^TOKEN='; done | sort -u | sed 's/^/environ /'
echo "drive-secret $(sha256sum < /mnt/secrets/mvm-secrets/TOKEN 2>/dev/null | cut -c1-64)"
echo "manifest $(cat /mnt/config/secrets-manifest.json 2>/dev/null | tr -d ' \n')"
mkdir -p /tmp/www && echo "hello from the guest" > /tmp/www/index.html
httpd -p 8080 -h /tmp/www
echo END-CHECK
[ -n "$http_proxy" ] && exec sleep 600
exit 0
"""


@dataclass
class World:
    home: Path
    http: int
    https: int
    upstream_ca: Path
    name: str = "net1"
    up: object = None
    console: str = ""
    none_run: object = None
    dump: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict)


def _console(home: Path, name: str, marker: str, timeout: float = 240) -> str:
    log = home / "vms" / name / "console.log"
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if marker in text:
            return text
        time.sleep(0.3)
    raise AssertionError(f"no {marker} in console:\n{text[-3000:]}")


def _qmp(sock: Path, *commands: dict[str, object]) -> list[dict[str, object]]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(120)
    s.connect(str(sock))
    f = s.makefile("rwb")
    f.readline()  # greeting
    out = []
    for cmd in ({"execute": "qmp_capabilities"}, *commands):
        f.write(json.dumps(cmd).encode() + b"\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                out.append(msg)
                break
    s.close()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("netvm")
    home = root / "home"
    with echo_server() as (hp, _), echo_server(root / "upstream") as (hps, upstream_ca):
        assert upstream_ca is not None
        w = World(home, hp, hps, upstream_ca)
        toml = (
            'name = "netcheck"\npackages = ["openssl"]\n'
            '[entrypoint]\ncommand = ["/usr/local/bin/check"]\n'
            '[files."/usr/local/bin/check"]\nmode = "0755"\n'
            f"content = {LIT}{CHECK.format(hp=hp, hps=hps)}{LIT}\n"
        )
        project = write_project(root / "proj", toml)
        env = env_for(home)
        token = root / "token"
        token.write_text(SECRET + "\n")
        os.chmod(token, 0o600)
        r = mvmctl("build", str(project), env=env, timeout=900)
        assert r.returncode == 0, r.stderr
        w.up = r = mvmctl(
            "up", "--flake", str(project), "--name", w.name, "--network-preset", "dev",
            "--add-host", "api.test:127.0.0.1", "--add-host", "plain.test:127.0.0.1",
            "--add-host", "evil.test:127.0.0.1",
            "--network-allow", f"api.test:{hp}", "--network-allow", f"api.test:{hps}",
            "--network-allow", f"plain.test:{hp}", "--network-allow", f"plain.test:{hps}",
            "--secret", f"TOKEN@{token}:api.test", "--add-ca", str(upstream_ca),
            env=env, timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        try:
            w.console = _console(home, w.name, "END-CHECK")
            vdir = home / "vms" / w.name
            dump = root / "guest.mem"
            res = _qmp(vdir / "qmp-ctl.sock", {"execute": "dump-guest-memory", "arguments": {
                "paging": False, "protocol": f"file:{dump}"}})  # fmt: skip
            assert "return" in res[-1], res
            w.dump = dump.read_bytes()
            dump.unlink()
            for p in vdir.rglob("*"):
                if (
                    p.is_file()
                    and not p.is_socket()
                    and p.name not in ("control.in", "control.out")
                ):
                    w.files[str(p.relative_to(vdir))] = p.read_bytes()
            yield w
        finally:
            mvmctl("down", w.name, env=env, timeout=120)


def test_bound_host_gets_the_secret_others_do_not(world: World) -> None:
    g = parse(world.console)
    bound = json.loads(g["bound"][0])
    assert bound["headers"]["authorization"] == digest(f"Bearer {SECRET}")
    unbound = json.loads(g["unbound"][0])
    assert "authorization" not in unbound["headers"]
    assert g["denied-rc"] == ["1"]  # the proxy answered 403


def test_programs_ignoring_proxy_variables_are_policed(world: World) -> None:
    g = parse(world.console)
    assert json.loads(g["direct"][0])["path"] == "/direct"  # through DNS/hosts + the proxy
    assert g["direct-denied-rc"] != ["0"]  # not allowed: refused by the proxy
    assert g["raw-ip-rc"] != ["0"]  # nothing but the proxy leaves the guest
    assert json.loads(g["nc"][0])["path"] == "/nc"  # raw TCP to the proxy's address


def test_tls_to_bound_host_is_terminated_and_injected(world: World) -> None:
    g = parse(world.console)
    # openssl verified the leaf against the VM's CA (SSL_CERT_FILE) and the proxy
    # verified the upstream against --add-ca
    tls = json.loads(g["tls"][0])
    assert tls["path"] == "/tls"
    assert tls["headers"]["authorization"] == digest(f"Bearer {SECRET}")
    # an allowed host without bindings is tunnelled: the guest sees the upstream's own
    # certificate, which its trust store does not know
    assert g["tls-tunnel"] != ["0"]


def test_streamed_response_arrives_incrementally(world: World) -> None:
    lines = parse(world.console)["stream"]
    assert len(lines) == 5, lines
    times = [float(x.split()[0]) for x in lines]
    assert times[-1] - times[0] > 0.8, times


def test_the_value_never_enters_the_guest(world: World) -> None:
    g = parse(world.console)
    placeholder = g["env-token"][0]
    assert placeholder.startswith("mvm-managed:TOKEN:") and SECRET not in world.console
    assert g["environ"] == [f"TOKEN={placeholder}"]
    assert g["drive-secret"] == [""]  # proxy mode: nothing on any drive
    assert SECRET.encode() not in world.dump
    assert placeholder.encode() in world.dump  # the dump does cover the guest's memory
    leaks = [name for name, data in world.files.items() if SECRET.encode() in data]
    assert leaks == []  # drives, records, audit log, proxy log, console, qemu.log
    audit = [json.loads(x) for x in world.files["egress.log"].decode().splitlines()]
    assert any(e["host"] == "api.test" and e.get("injected") == ["TOKEN"] for e in audit)
    assert any(e["host"] == "evil.test" and not e["allowed"] for e in audit)
    env = env_for(world.home)
    out = mvmctl("logs", world.name, "--audit", env=env).stdout
    assert "evil.test" in out and SECRET not in out


def test_status_shows_network_and_proxy(world: World) -> None:
    env = env_for(world.home)
    st = json.loads(mvmctl("status", world.name, "--json", env=env).stdout)
    assert st["proxy"].startswith("running")
    assert "preset dev (egress proxy)" in st["network"]
    assert any(line.startswith("secret TOKEN -> api.test") for line in st["network"])
    assert st["settings"]["network"] == "cli" and SECRET not in json.dumps(st)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_forward_added_to_a_running_vm(world: World) -> None:
    env = env_for(world.home)
    port = _free_port()
    r = mvmctl("forward", world.name, f"{port}:8080", "--detach", env=env)
    assert r.returncode == 0, r.stderr
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read()
    assert body == b"hello from the guest\n"
    st = json.loads(mvmctl("status", world.name, "--json", env=env).stdout)
    assert st["forwards"] == [f"{port}:8080"]
    again = mvmctl("forward", world.name, f"{port}:8080", "--detach", env=env)
    assert again.returncode != 0 and "already forwarded" in again.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = mvmctl("forward", world.name, f"{busy.getsockname()[1]}:8080", "--detach", env=env)
        assert r.returncode != 0 and r.stderr.startswith("mvmctl: error: ")
        assert "in use" in r.stderr
    r = mvmctl("forward", world.name, f"{port}:8080", "--rm", env=env)
    assert r.returncode == 0, r.stderr
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
    st = json.loads(mvmctl("status", world.name, "--json", env=env).stdout)
    assert st["forwards"] == []


def test_forward_until_ctrl_c(world: World) -> None:
    env = dict(os.environ, **env_for(world.home))
    port = _free_port()
    p = subprocess.Popen([MVMCTL, "forward", world.name, f"{port}:8080"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert "Ctrl-C to stop" in line, line + (p.stderr.read() if p.stderr else "")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read()
        assert body == b"hello from the guest\n"
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0
    finally:
        p.kill()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
    # started with SIGINT ignored (as a background shell hands it down), Ctrl-C still
    # removes the forward; so does a plain kill (SIGTERM)
    for sig in (signal.SIGINT, signal.SIGTERM):
        p = subprocess.Popen([MVMCTL, "forward", world.name, f"{port}:8080"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_ignore_sigint)  # fmt: skip
        try:
            assert p.stdout is not None
            assert "Ctrl-C to stop" in p.stdout.readline()
            assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read()
            p.send_signal(sig)
            assert p.wait(30) == 0
        finally:
            p.kill()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_preset_none_has_no_egress_at_all(world: World, tmp_path: Path) -> None:
    env = env_for(world.home)
    project = world.home.parent / "proj"
    r = mvmctl("run", "--attached", str(project), "--name", "net-none", env=env, timeout=300)
    out = r.stdout
    assert "END-CHECK" in out, out[-2000:] + r.stderr
    g = parse(out)
    assert g["bound"] == [] or all("path" not in x for x in g["bound"])
    assert g["denied-rc"] != ["0"] and g["direct-denied-rc"] != ["0"]
    assert g["raw-ip-rc"] != ["0"]
    assert "direct" not in g or all("path" not in x for x in g["direct"])
    assert not (world.home / "vms" / "net-none" / "egress.log").exists()
    mvmctl("down", "net-none", env=env)


def test_drive_mode_puts_the_value_on_the_secrets_drive(world: World) -> None:
    """--secret-mode drive (the seed's approach): the value is on the secrets drive,
    the guest's env holds mvm-managed:KEY, and the proxy injects nothing."""
    env = env_for(world.home)
    project = world.home.parent / "proj"
    token = world.home.parent / "token"
    r = mvmctl("up", "--flake", str(project), "--name", "net-drive", "--network-preset", "dev",
               "--add-host", "api.test:127.0.0.1", "--network-allow", f"api.test:{world.http}",
               "--secret", f"TOKEN@{token}:api.test", "--secret-mode", "drive",
               env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    try:
        g = parse(_console(world.home, "net-drive", "END-CHECK"))
    finally:
        mvmctl("down", "net-drive", env=env, timeout=120)
    assert g["env-token"] == ["mvm-managed:TOKEN"]
    assert g["drive-secret"] == [hashlib.sha256(SECRET.encode()).hexdigest()]
    manifest = json.loads(g["manifest"][0])
    assert manifest["secrets"][0]["key"] == "TOKEN" and "value" not in g["manifest"][0]
    assert "authorization" not in json.loads(g["bound"][0])["headers"]  # no injection


@pytest.mark.parametrize(
    "args",
    [
        ["--secret", "KEY:"],
        ["--secret", ":api.test"],
        ["--secret", "K=v:api.test:"],
        ["--secret", "MVM_SURELY_UNSET_VAR:api.test"],
        ["--network-preset", "dev", "--secret", "K=v:notallowed.test"],
        ["--network-preset", "dev", "--network-allow", "*.com"],
        ["--network-preset", "dev", "--network-allow", "10.0.0.0/8"],
        ["--network-allow-cidr", "10.0.0.0/99"],
        ["--add-host", "nocolon"],
        ["-p", "18080:80", "-p", "18080:81"],
        ["--net", "--network-preset", "dev"],
    ],
)
def test_bad_network_input_starts_nothing(world: World, args: list[str]) -> None:
    env = env_for(world.home)
    project = world.home.parent / "proj"
    r = mvmctl("up", "--flake", str(project), "--name", "bad-net", *args, env=env, timeout=120)
    assert r.returncode != 0
    assert r.stderr.startswith("mvmctl: error: ") and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # the error, maybe a hint
    assert not (world.home / "vms" / "bad-net").exists()


def test_proxy_restarts_and_fails_closed(world: World) -> None:
    """Killing the proxy's worker: its supervisor restarts it (status counts it);
    killing the supervisor too: status says egress fails closed."""
    env = env_for(world.home)
    net = world.home / "vms" / world.name / "net"
    state = json.loads((net / "proxyd.json").read_text())
    os.kill(state["worker"], 9)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = json.loads(mvmctl("status", world.name, "--json", env=env).stdout)
        if st["proxy"] == "running (restarts: 1)":
            break
        time.sleep(0.3)
    assert st["proxy"] == "running (restarts: 1)", st["proxy"]
    # the restarted worker serves: a request through its socket is policed as before
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(str(net / "http.sock"))
    s.sendall(f"GET http://evil.test:{world.http}/ HTTP/1.1\r\nHost: evil.test\r\n\r\n".encode())
    assert s.recv(100).startswith(b"HTTP/1.1 403")
    s.close()
    state = json.loads((net / "proxyd.json").read_text())
    os.kill(state["pid"], 9)
    os.kill(state["worker"], 9)
    time.sleep(0.5)
    st = json.loads(mvmctl("status", world.name, "--json", env=env).stdout)
    assert st["proxy"] == "down (egress fails closed)"
