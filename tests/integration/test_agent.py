"""The guest agent for real: one accessible VM and one sealed VM per module,
many checks on each — exec (exit codes, separate streams, -e/-w/-i, -t through
a pty), console driven through a pty, cp both ways, and the sealed VM refused
both by the host and by its guest agent."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MVMCTL, mvmctl, ok, write_project

pytestmark = pytest.mark.integration

DEV = """name = "agdev"
dev = true
[uids]
entrypoint = 1000
[entrypoint.services.web]
command = ["/bin/sh", "-c", "mkdir -p /tmp/w; echo up > /tmp/w/index.html; exec httpd -f -p 8080 -h /tmp/w"]
ready = { tcp = 8080, timeout = 120 }
[entrypoint.services.stuck]
command = ["/bin/sleep", "100000"]
ready = { command = ["/bin/sh", "-c", "test -e /tmp/stuck-ready"], timeout = 2 }
"""
SEALED = """name = "agsealed"
[entrypoint.services.web]
command = ["/bin/sh", "-c", "mkdir -p /tmp/w; echo s > /tmp/w/index.html; exec httpd -f -p 8081 -h /tmp/w"]
ready = { tcp = 8081, timeout = 120 }
[entrypoint.services.check]
command = ["/bin/sleep", "100000"]
ready = { command = ["/bin/sh", "-c", "test $(id -u) = 1000"] }
"""


@pytest.fixture(scope="module")
def vms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("agent-home")
    env = {"MVM_HOME": str(home)}
    root = tmp_path_factory.mktemp("agent-projects")
    dev = write_project(root / "dev", DEV)
    sealed = write_project(root / "sealed", SEALED)
    ok("up", "--flake", str(dev), env=env, timeout=600)
    ok("up", "--flake", str(sealed), env=env, timeout=600)
    yield home
    for name in ("agdev", "agsealed"):
        mvmctl("down", name, env=env)


@pytest.fixture
def home(vms: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MVM_HOME", str(vms))
    return vms


def test_exec_exit_code_and_separate_streams(home: Path) -> None:
    r = mvmctl("exec", "agdev", "--", "sh", "-c", "echo out; echo err >&2; exit 7", timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
    r = mvmctl("exec", "agdev", "--", "true")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""


def test_exec_runs_as_entrypoint_uid_without_capabilities(home: Path) -> None:
    out = ok("exec", "agdev", "--", "sh", "-c", "id -u; grep CapEff /proc/self/status; pwd")
    uid, caps, cwd = out.split("\n")[:3]
    assert uid == "1000"
    assert caps.split()[1] == "0000000000000000"
    assert cwd == "/home/app"


def test_exec_env_workdir_and_stdin(home: Path) -> None:
    out = ok(
        "exec", "agdev", "-e", "FOO=bar baz", "-w", "/tmp", "--", "sh", "-c", 'echo "$FOO"; pwd'
    )
    assert out == "bar baz\n/tmp\n"
    r = mvmctl("exec", "agdev", "-i", "--", "sh", "-c", "tr a-z A-Z", input=b"hello\n")
    assert r.returncode == 0 and r.stdout == "HELLO\n"


def test_exec_errors_are_one_line(home: Path) -> None:
    r = mvmctl("exec", "agdev", "--", "/no/such/cmd")
    assert (
        r.returncode == 127
        and r.stderr.startswith("mvmctl: error: ")
        and "Traceback" not in r.stderr
    )
    r = mvmctl("exec", "agdev", "--timeout", "1", "--", "sh", "-c",
               "echo $$ > /tmp/timeout.pid; exec sleep 300")  # fmt: skip
    assert r.returncode == 124 and "timed out" in r.stderr
    # and the command is gone in the guest (the agent, uid 990, may signal uid 1000)
    gone = "kill -0 $(cat /tmp/timeout.pid) 2>/dev/null && echo alive || echo gone"
    end = time.monotonic() + 30
    while (out := ok("exec", "agdev", "--", "sh", "-c", gone)) != "gone\n":
        assert time.monotonic() < end, out
        time.sleep(0.3)
    r = mvmctl("exec", "nosuchvm", "--", "true")
    assert r.returncode != 0 and "no VM named" in r.stderr
    r = mvmctl("exec", "agdev", "-e", "1BAD", "--", "true")
    assert r.returncode == 2 and r.stderr.startswith("mvmctl: error: ")


def test_exec_large_stdin_and_a_command_that_ignores_it(home: Path) -> None:
    data = os.urandom(3_000_000)
    r = subprocess.run([MVMCTL, "exec", "-i", "agdev", "--", "sh", "-c", "sleep 1; md5sum"],
                       input=data, capture_output=True, timeout=300)  # fmt: skip
    import hashlib

    assert r.returncode == 0 and r.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()
    # a command that never reads its stdin does not stall the agent for others
    ignorer = subprocess.Popen([MVMCTL, "exec", "-i", "agdev", "--", "sleep", "20"],
                               stdin=subprocess.PIPE)  # fmt: skip
    assert ignorer.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        ignorer.stdin.write(os.urandom(2_000_000))
        ignorer.stdin.flush()
    try:
        t0 = time.monotonic()
        assert ok("exec", "agdev", "--", "echo", "still") == "still\n"
        assert time.monotonic() - t0 < 30
    finally:
        ignorer.kill()
        ignorer.wait()


def test_library_exec(home: Path) -> None:
    import mvm

    r = mvm.exec("agdev", ["sh", "-c", "printf 'a\\0b'; printf e >&2; exit 4"])
    assert (r.code, r.stdout, r.stderr) == (4, b"a\0b", b"e")


Send = bytes | tuple[int, int] | float | None  # keys to type, a terminal size, or a pause (s)


def _winsz(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _drive_pty(argv: list[str], script: list[tuple[Send, bytes]],
               timeout: float = 90) -> tuple[int, bytes]:  # fmt: skip
    """Run argv on a local 50x132 pty; for each (send, expect) type ``send`` (or
    resize the terminal, which sends SIGWINCH) and read until ``expect`` shows.
    Returns the exit code and everything read."""
    pid, fd = pty.fork()
    if pid == 0:
        _winsz(0, 50, 132)
        os.execvpe(argv[0], argv, dict(os.environ))
    seen = b""
    try:
        for send, expect in script:
            start = len(seen)  # each step waits for output that is new since it began
            if isinstance(send, float):
                time.sleep(send)
            elif isinstance(send, tuple):
                _winsz(fd, *send)
            elif send is not None:
                os.write(fd, send)
            end = time.monotonic() + timeout
            while expect not in seen[start:]:
                left = end - time.monotonic()
                assert left > 0, f"did not see {expect!r} in {seen[-500:]!r}"
                r, _, _ = select.select([fd], [], [], left)
                if r:
                    try:
                        chunk = os.read(fd, 4096)
                    except OSError as exc:
                        assert exc.errno == errno.EIO, exc
                        chunk = b""
                    if not chunk:
                        break
                    seen += chunk
        end = time.monotonic() + timeout
        while True:
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid == pid:
                return os.waitstatus_to_exitcode(status), seen
            assert time.monotonic() < end, "the command did not exit"
            with_data, _, _ = select.select([fd], [], [], 0.2)
            if with_data:
                with contextlib.suppress(OSError):
                    seen += os.read(fd, 4096)
    finally:
        os.close(fd)


def test_exec_tty_resize_and_ctrl_c(home: Path) -> None:
    code, out = _drive_pty(
        [MVMCTL, "exec", "-i", "-t", "agdev", "--", "sh"],
        [(None, b"$ "), (b"tty; stty size\r", b"50 132"),
         ((40, 100), b""), (b"stty size\r", b"40 100"),
         # Ctrl-C reaches the guest: a 600 s sleep ends (the step times out after 90 s).
         # ^C is sent once the command runs ("started" is its output, not the echo of
         # the typed line): typed ahead, the shell's line editor would read it as a byte
         # ("started" comes before the shell has forked sleep: give it a moment)
         (b"echo st''arted; sleep 600\r", b"started"), (1.0, b""), (b"\x03", b"^C"),
         (b"echo after-$((1+1))\r", b"after-2"), (b"exit 3\r", b"exit 3")],
    )  # fmt: skip
    assert code == 3, out
    assert b"/dev/pts/" in out


def test_console_shell_through_a_pty(home: Path) -> None:
    code, out = _drive_pty(
        [MVMCTL, "console", "agdev"],
        [(None, b"$ "), (b"echo con$((6*7))\r", b"con42"), (b"exit\r", b"exit")],
    )  # fmt: skip
    assert code == 0, out


def test_cp_both_ways_binary_and_mode(home: Path, tmp_path: Path) -> None:
    blob = os.urandom(700_000) + b"\0\r\n"
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    src.chmod(0o751)
    ok("cp", str(src), "agdev:/tmp/blob.bin")
    out = ok("exec", "agdev", "--", "sh", "-c", "stat -c '%a %s %u' /tmp/blob.bin")
    assert out.split() == ["751", str(len(blob)), "1000"]
    back = tmp_path / "back.bin"
    ok("cp", "agdev:/tmp/blob.bin", str(back))
    assert back.read_bytes() == blob and back.stat().st_mode & 0o777 == 0o751
    # into a directory keeps the name; errors are one line
    ok("cp", str(src), "agdev:/tmp/")
    assert ok("exec", "agdev", "--", "ls", "/tmp/blob.bin") == "/tmp/blob.bin\n"
    r = mvmctl("cp", "agdev:/etc/shadow", str(tmp_path / "x"))
    assert r.returncode != 0 and "Permission denied" in r.stderr and not (tmp_path / "x").exists()
    r = mvmctl("cp", str(src), "agdev:/etc/blob")  # /etc is root's: the entrypoint cannot write
    assert r.returncode != 0 and r.stderr.startswith("mvmctl: error: ")


def test_sealed_vm_refused_by_host_and_guest(home: Path) -> None:
    for args in (["exec", "agsealed", "--", "true"], ["console", "agsealed"],
                 ["cp", "agsealed:/etc/passwd", "/tmp/x-agent-test"]):  # fmt: skip
        r = mvmctl(*args)
        assert r.returncode != 0 and "sealed" in r.stderr, r.stderr
    # guest side: talk to the sealed guest's agent directly — it has no exec service
    from mvm.errors import AgentError
    from mvm.runtime import guest

    with guest.connect("agsealed", verb="agent") as client:
        assert client.hello.sealed and "exec" not in client.hello.verbs
        for req in ({"op": "exec", "argv": ["/bin/true"]}, {"op": "read", "path": "/etc/passwd"},
                    {"op": "write", "path": "/tmp/x"}, {"op": "list", "path": "/"}):  # fmt: skip
            with pytest.raises(AgentError, match="sealed"):
                client.call(req)
        assert client.ping() < 30


def test_sealed_vm_still_reports_health(home: Path) -> None:
    """Snapshot builds of (usually sealed) templates wait for readiness: the sealed
    agent has no exec service but evaluates the image's own checks, command checks
    as the entrypoint user."""
    end = time.monotonic() + 120
    while (svcs := _services("agsealed"))["web"]["health"] != "ready":
        assert time.monotonic() < end, svcs
        time.sleep(0.5)
    assert svcs["check"]["health"] == "ready"  # ran as uid 1000


def test_many_clients_at_once(home: Path) -> None:
    procs = [subprocess.Popen([MVMCTL, "exec", "agdev", "--", "sh", "-c", f"sleep 1; echo {i}"],
                              stdout=subprocess.PIPE, text=True) for i in range(4)]  # fmt: skip
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert outs == [f"{i}\n" for i in range(4)]
    assert json.loads(ok("status", "agdev", "--json"))["state"] == "running"


def _services(name: str) -> dict[str, dict[str, object]]:
    info = json.loads(ok("status", name, "--json"))
    assert info["agent"] == "connected", info["agent"]
    return {s["name"]: s for s in info["services"]}


def test_status_shows_service_state_and_health(home: Path) -> None:
    end = time.monotonic() + 120
    while (svcs := _services("agdev"))["web"]["health"] != "ready":
        assert time.monotonic() < end, svcs
        time.sleep(0.5)
    assert svcs["web"]["state"] == "running" and svcs["web"]["pid"] > 0
    while (svcs := _services("agdev"))["stuck"]["health"] != "unhealthy":
        assert time.monotonic() < end, svcs
        time.sleep(0.5)
    # the command check runs as the entrypoint user: once it passes, the service is ready
    ok("exec", "agdev", "--", "touch", "/tmp/stuck-ready")
    assert _services("agdev")["stuck"]["health"] == "ready"
    text = ok("status", "agdev")
    assert "HEALTH" in text and "web" in text and "ready" in text


def test_sidecar_restart_resyncs_and_ends_orphaned_commands(home: Path) -> None:
    """A new host connection (here: the sidecar killed and started again by the next
    client) resyncs with the agent, which ends what it ran for the old one."""
    lock = home / "vms" / "agdev" / "agent-mux.lock"
    ok("exec", "agdev", "--", "true")  # a sidecar runs
    orphan = subprocess.Popen([MVMCTL, "exec", "agdev", "--", "sh", "-c",
                               "echo $$ > /tmp/orphan.pid; exec sleep 600"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    end = time.monotonic() + 60
    while mvmctl("exec", "agdev", "--", "test", "-s", "/tmp/orphan.pid").returncode != 0:
        assert time.monotonic() < end
        time.sleep(0.2)
    pid = int(lock.read_text())
    os.kill(pid, 15)  # the sidecar this test's mvmctl started
    _, err = orphan.communicate(timeout=60)
    assert orphan.returncode != 0 and err.startswith("mvmctl: error: ") and "Traceback" not in err
    assert ok("exec", "agdev", "--", "echo", "again", timeout=120) == "again\n"
    assert int(lock.read_text()) != pid
    gone = "kill -0 $(cat /tmp/orphan.pid) 2>/dev/null && echo alive || echo gone"
    end = time.monotonic() + 30
    while (out := ok("exec", "agdev", "--", "sh", "-c", gone)) != "gone\n":
        assert time.monotonic() < end, out
        time.sleep(0.3)


def test_sigint_without_a_pty_is_forwarded(home: Path) -> None:
    p = subprocess.Popen([MVMCTL, "exec", "agdev", "--", "sh", "-c", "echo go; exec sleep 300"],
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout is not None and p.stdout.readline() == "go\n"
    p.send_signal(2)  # Ctrl-C in mvmctl's terminal: the guest command gets SIGINT
    assert p.wait(timeout=60) == 130  # 128 + SIGINT, as a local shell reports it


def test_malformed_requests_get_errors_and_the_agent_lives(home: Path) -> None:
    from mvm.agent import codec
    from mvm.errors import AgentError
    from mvm.runtime import guest

    deep = "[" * 200 + "]" * 200
    with guest.connect("agdev", verb="exec") as client:
        for req in ({"op": "exec", "argv": "sh"}, {"op": "exec", "argv": [1, 2]},
                    {"op": "exec", "argv": []}, {"op": "exec"},
                    {"op": "exec", "argv": ["/bin/true"], "env": {"A=B": "1"}},
                    {"op": "exec", "argv": ["/bin/true"], "env": {"A": 5}},
                    {"op": "exec", "argv": ["/bin/true"], "cwd": "/no/such/dir"},
                    {"op": "read", "path": "relative"}, {"op": "read", "path": "/proc"},
                    {"op": "write", "path": "/no/such/dir/f"}, {"op": "list", "path": "/etc/passwd"},
                    {"op": "nope"}, {"op": 7}, {"op": "remount"}, {"op": "reseed"}):  # fmt: skip
            with pytest.raises(AgentError):
                client.call(req, timeout=60)
        # raw JSON the client would never send: nesting, a NUL in a path, non-objects
        for raw in (b'{"op":"exec","argv":' + deep.encode() + b"}", b'{"op":"read","path":"/e\\u0000"}',
                    b"[]", b"\xff\xfe", b'{"op":"exec","argv":["a"'):  # fmt: skip
            stream = client.next_stream
            client.next_stream += 1
            client._send(codec.encode(codec.JSON, stream, raw))
            with pytest.raises(AgentError):
                client.reply(stream, time.monotonic() + 60)
        assert client.ping() < 30
        assert client.exec(["echo", "fine"]).stdout == b"fine\n"


def test_sidecar_files_are_private(home: Path) -> None:
    import stat

    ok("exec", "agdev", "--", "true")
    run_dir = home / "vms" / "agdev"
    for name in ("agent-mux.sock", "agent-mux.lock", "sidecar.log"):
        assert (run_dir / name).exists(), name
    leaky = [f"{oct(stat.S_IMODE(p.lstat().st_mode))} {p}" for p in run_dir.rglob("*")
             if not p.is_symlink() and p.lstat().st_mode & 0o077]  # fmt: skip
    assert not leaky
