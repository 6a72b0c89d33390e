"""Firecracker's pure parts: the API call plan, the hybrid vsock handshake (against a
tiny fake vsock Unix socket server: the one fake seam here, since no guest can run
on these hosts), the control and agent host ends over vsock, and the automatic
hypervisor choice.  The real binary's side is tests/integration/test_firecracker.py."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvm import channels
from mvm.backends import select
from mvm.backends.firecracker import config
from mvm.backends.firecracker.machine import FirecrackerBackend
from mvm.backends.spec import Disk, GuestCredential, MachineSpec, NetworkSpec, PortForward
from mvm.errors import BackendError
from mvm.runtime.sidecar import Sidecar

SECRET = b"hunter2-not-in-any-call"


def spec(tmp_path: Path, **kw: object) -> MachineSpec:
    args: dict[str, object] = {
        "name": "fc1", "run_dir": tmp_path, "kernel": tmp_path / "vmlinux", "initramfs": None,
        "disks": (Disk(tmp_path / "rootfs.ext4", "rootfs"),
                  Disk(tmp_path / "config.img", "config")),
        "credentials": (GuestCredential("DB_PASS", SECRET),),
        "cmdline": ("mvm.drives=vdb:config:/mnt/config",),
    }  # fmt: skip
    args.update(kw)
    return MachineSpec(**args)  # type: ignore[arg-type]


def opts(tmp_path: Path, **kw: object) -> config.FcOptions:
    return config.FcOptions(vsock_uds=tmp_path / "vsock.sock",
                            guest_data=tmp_path / "guestdata.img", **kw)  # type: ignore[arg-type]  # fmt: skip


def test_plan_order_drives_cmdline_and_no_secret(tmp_path: Path) -> None:
    calls = config.plan(spec(tmp_path), opts(tmp_path, metadata={"name": "fc1"}))
    paths = [c.path for c in calls]
    assert paths == ["/machine-config", "/boot-source", "/drives/vda", "/drives/vdb",
                     "/drives/vdc", "/vsock", "/mmds", "/actions"]  # fmt: skip
    assert calls[-1].body == {"action_type": "InstanceStart"}
    drives = [c.body for c in calls if c.path.startswith("/drives/")]
    assert drives[-1]["path_on_host"] == str(tmp_path / "guestdata.img")
    assert drives[-1]["is_read_only"] is True and not any(d["is_root_device"] for d in drives)
    args = calls[1].body["boot_args"]
    for part in ("console=ttyS0", "reboot=k", "panic=1", "pci=off", "root=/dev/vda", " ro ",
                 "init=/init", "mvm.drives=vdb:config:/mnt/config", "mvm.channels=vsock",
                 "mvm.guestdata=vdc"):  # fmt: skip
        assert part in args, part
    text = json.dumps([c.body for c in calls]) + "".join(map(str, calls))
    assert SECRET.decode() not in text and "DB_PASS" not in text
    # no NIC without a tap, so no MMDS config (Firecracker refuses one without a NIC)
    assert "/mmds/config" not in paths and not any("network-interfaces" in p for p in paths)


def test_plan_with_tap_has_nic_and_mmds(tmp_path: Path) -> None:
    calls = config.plan(spec(tmp_path, network=NetworkSpec(device=True)),
                        opts(tmp_path, tap="tap7"))  # fmt: skip
    by_path = {c.path: c.body for c in calls}
    assert by_path["/network-interfaces/eth0"]["host_dev_name"] == "tap7"
    assert by_path["/mmds/config"] == {"version": "V2", "network_interfaces": ["eth0"]}
    assert "mvm.net=1" in by_path["/boot-source"]["boot_args"]


@pytest.mark.parametrize(("kw", "want"), [
    ({"machine": "q35"}, "no 'q35' machine type"),
    ({"network": NetworkSpec(egress=True)}, "no user-mode networking"),
    ({"network": NetworkSpec(forwards=(PortForward(8080, 80),))}, "no user-mode networking"),
    ({"ram_file": Path("/x")}, "cannot run from a RAM file"),
])  # fmt: skip
def test_plan_refuses_what_firecracker_lacks(tmp_path: Path, kw: dict[str, object],
                                             want: str) -> None:  # fmt: skip
    with pytest.raises(BackendError, match=want):
        config.plan(spec(tmp_path, **kw), opts(tmp_path))


def test_restore_maps_memory_file(tmp_path: Path) -> None:
    (call,) = config.restore_plan(tmp_path / "state", tmp_path / "memory")
    assert call.path == "/snapshot/load" and call.body["resume_vm"] is False
    assert call.body["mem_backend"] == {"backend_type": "File",
                                        "backend_path": str(tmp_path / "memory")}  # fmt: skip


def test_describe_lists_the_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_FIRECRACKER", "/nonexistent/firecracker")
    text = FirecrackerBackend().describe(spec(tmp_path, credentials=()))
    lines = text.splitlines()
    assert lines[0].startswith("firecracker --api-sock ") and "--id fc1" in lines[0]
    assert lines[-1] == 'PUT /actions {"action_type": "InstanceStart"}'


# -- the hybrid vsock handshake, against a fake Firecracker vsock socket ---------------------


class FakeVsock:
    """Accepts on a Unix socket like Firecracker's vsock device: reads ``CONNECT N``,
    answers ``OK <port>`` (ports in ``listening``) or closes, then runs ``serve``."""

    def __init__(self, path: Path, listening: dict[int, object]):
        self.path = path
        self.listening = listening
        self.got: list[bytes] = []
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(4)
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            line = b""
            while not line.endswith(b"\n"):
                b = conn.recv(1)
                if not b:
                    break
                line += b
            port = int(line.split()[1]) if line.startswith(b"CONNECT ") else -1
            behaviour = self.listening.get(port)
            if behaviour is None:
                return  # Firecracker closes when no guest listens
            if behaviour == "garbage":
                conn.sendall(b"NOPE\n")
                return
            if behaviour == "drip":  # a byte at a time, each well within the timeout
                for b in b"OK 10737418240000000000000000\n":
                    time.sleep(0.2)
                    conn.sendall(bytes([b]))
                return
            # the answer and the guest's first bytes in one segment: nothing may be lost
            conn.sendall(b"OK 1073741824\n" + (b"GUEST-HELLO" if behaviour == "agent" else b""))
            data = conn.recv(4096)
            self.got.append(data)
            if behaviour in ("control", "control-err"):  # answer every line: ID ok
                for ln in data.decode().splitlines():
                    words = ln.split()
                    if len(words) >= 2:  # `poweroff` has no id and no answer
                        answer = "ok" if behaviour == "control" else "err \x1b]0;pwned\x07\x1b[2Jno"
                        conn.sendall(f"{words[1]} {answer}\n".encode())
            elif behaviour == "agent" and data:
                conn.sendall(b"echo:" + data)

    def close(self) -> None:
        self.srv.close()


@pytest.fixture
def vsock(tmp_path: Path) -> Iterator[FakeVsock]:
    fake = FakeVsock(tmp_path / "vsock.sock",
                     {1024: "agent", 1025: "control", 7: "garbage", 8: "drip"})  # fmt: skip
    yield fake
    fake.close()


def fc_channels(tmp_path: Path) -> channels.HostChannels:
    return FirecrackerBackend().channels(tmp_path)


def test_handshake_keeps_the_guest_stream(vsock: FakeVsock) -> None:
    with channels.vsock_connect(vsock.path, channels.AGENT_PORT) as s:
        assert s.recv(11) == b"GUEST-HELLO"  # sent with the OK line: not consumed
        s.sendall(b"ping")
        assert s.recv(100) == b"echo:ping"


def test_handshake_refused_or_garbage(vsock: FakeVsock, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="vsock port 1026: no guest listener"):
        channels.vsock_connect(vsock.path, channels.STATUS_PORT)
    with pytest.raises(BackendError, match="vsock port 7: no guest listener"):
        channels.vsock_connect(vsock.path, 7)
    with pytest.raises(BackendError, match="vsock port 1024"):
        channels.vsock_connect(tmp_path / "missing.sock", channels.AGENT_PORT)


def test_handshake_is_bounded_as_a_whole(vsock: FakeVsock) -> None:
    """A peer that answers one byte every 0.2 s: each recv is quick, the handshake
    is not; its timeout bounds the whole (before: up to 64 times the timeout)."""
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"vsock port 8: (timed out|no handshake answer)"):
        channels.vsock_connect(vsock.path, 8, timeout=1.0)
    assert time.monotonic() - t0 < 2.0


def test_poweroff_and_control_over_vsock(vsock: FakeVsock, tmp_path: Path) -> None:
    ch = fc_channels(tmp_path)
    assert ch.transport == "vsock" and ch.control == vsock.path
    assert channels.request_poweroff(ch)
    answered = channels.control_requests(ch, [("ping", ()), ("reseed", ())], timeout=5)
    assert set(answered) == {"ping", "reseed"}
    assert vsock.got[0] == b"poweroff\n"
    assert vsock.got[1].startswith(b"ping ") and b"\nreseed " in vsock.got[1]


def test_guest_control_error_cannot_drive_the_terminal(tmp_path: Path) -> None:
    """The guest's ``ID err REASON`` reaches the user's terminal in the error line:
    its control characters (escape sequences) are replaced, the words kept."""
    fake = FakeVsock(tmp_path / "vsock.sock", {channels.CONTROL_PORT: "control-err"})
    try:
        with pytest.raises(BackendError) as err:
            channels.control_request(fc_channels(tmp_path), "ping", timeout=5)
    finally:
        fake.close()
    assert err.value.message == "guest ping failed: ?]0;pwned??[2Jno"


def test_poweroff_without_listener_is_false(tmp_path: Path) -> None:
    fake = FakeVsock(tmp_path / "vsock.sock", {})
    try:
        assert not channels.request_poweroff(fc_channels(tmp_path))
    finally:
        fake.close()


def test_agent_host_end_over_vsock(vsock: FakeVsock, tmp_path: Path) -> None:
    ch = fc_channels(tmp_path)
    with channels.connect_agent(ch, lambda: True, timeout=2) as s:
        assert s.recv(11) == b"GUEST-HELLO"
    sidecar = Sidecar(tmp_path, ch.agent, None, ch.transport)
    raw = channels.open_agent(sidecar.agent, sidecar.transport)
    assert raw is not None
    assert raw.recv(11) == b"GUEST-HELLO"
    raw.close()


# -- the automatic choice ---------------------------------------------------------------------


def test_auto_without_binary_is_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_FIRECRACKER", "/nonexistent/firecracker")
    name, reason = select.auto(None)
    assert name == "qemu" and "firecracker not found" in reason


def test_auto_with_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fc = tmp_path / "firecracker"
    fc.write_text("#!/bin/sh\n")
    fc.chmod(0o755)
    monkeypatch.setenv("MVM_FIRECRACKER", str(fc))
    monkeypatch.setenv("MVM_ACCEL", "tcg")
    name, reason = select.auto(None)
    assert name == "qemu" and "KVM cannot run guests (MVM_ACCEL=tcg)" in reason
    monkeypatch.delenv("MVM_ACCEL")
    monkeypatch.setenv("MVM_FIRECRACKER_KVM", "unchecked")
    assert select.auto(None)[0] == "firecracker"
    name, reason = select.auto(None, needs_user_net=True)
    assert name == "qemu" and "user-mode networking" in reason


# -- the relay: the host ends that listen (status, console), around a stand-in process ------


def test_relay_status_and_console(tmp_path: Path) -> None:
    """The real relay process, around a ``sleep`` standing in for Firecracker: what the
    guest sends on the status port lands in the status file the runtime reads, the
    first console client gets the console from its first byte, and the relay exits
    (removing its sockets) when the process is gone."""
    import subprocess
    from types import SimpleNamespace

    from mvm.state.procs import proc_start_time

    rd = tmp_path / "vm"
    rd.mkdir()
    (rd / "console.log").write_bytes(b"early boot line\n")
    stand_in = subprocess.Popen(["sleep", "30"])
    console_r, console_w = os.pipe()  # as Firecracker's stdin: the serial console's input
    try:
        m = SimpleNamespace(run_dir=rd, pid=stand_in.pid, pid_start=proc_start_time(stand_in.pid),
                            console_w=console_w)  # fmt: skip
        relay_pid = FirecrackerBackend()._start_relay(m)  # type: ignore[arg-type]
        assert m.console_w is None  # handed to the relay (and closed here)
        status_sock = rd / f"vsock.sock_{channels.STATUS_PORT}"
        with socket.socket(socket.AF_UNIX) as s:  # what Firecracker does for the guest
            s.connect(str(status_sock))
            s.sendall(b"exit 3\n")
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(rd / "console.sock"))
            c.settimeout(5)
            with open(rd / "console.log", "ab") as f:
                f.write(b"later line\n")
            got = b""
            while b"later line\n" not in got:
                got += c.recv(4096)
            assert got == b"early boot line\nlater line\n"
            c.sendall(b"ls /\n")  # typed keys reach the serial input
            os.set_blocking(console_r, True)
            assert os.read(console_r, 100) == b"ls /\n"
        deadline = time.monotonic() + 5
        while channels.exit_code(fc_channels(rd)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert channels.exit_code(fc_channels(rd)) == 3
        assert (rd / "status").stat().st_mode & 0o777 == 0o600
    finally:
        stand_in.kill()
        stand_in.wait()
    deadline = time.monotonic() + 5
    os.set_blocking(console_r, False)
    while Path(f"/proc/{relay_pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(relay_pid, os.WNOHANG)
        time.sleep(0.05)
    assert not status_sock.exists() and not (rd / "console.sock").exists()
    assert os.read(console_r, 10) == b""  # the relay's write end closed with it: EOF
    os.close(console_r)


# -- selection and the jailer setting in mvm.toml ---------------------------------------------


def test_mvm_toml_firecracker_table_and_explicit_hypervisor(tmp_path: Path) -> None:
    from mvm.config import load_project
    from mvm.errors import ConfigError
    from mvm.runtime.resolve import RuntimeDefaults

    def load(body: str) -> RuntimeDefaults:
        (tmp_path / "mvm.toml").write_text(
            'name = "a"\n' + body + '[entrypoint]\ncommand = ["/x"]\n'
        )
        return RuntimeDefaults.from_spec(load_project(tmp_path).spec)

    d = load('hypervisor = "firecracker"\n[firecracker]\njailer = true\n')
    assert d.hypervisor == "firecracker" and d.jailer is True
    d = load("")
    assert d.hypervisor is None and d.jailer is None  # not set: the automatic choice
    assert load('hypervisor = "qemu"\n').hypervisor == "qemu"  # explicit beats auto
    with pytest.raises(ConfigError, match=r"firecracker\.jailer: must be true or false"):
        load('[firecracker]\njailer = "yes"\n')
    with pytest.raises(ConfigError, match=r"firecracker\.uid: unknown key"):
        load("[firecracker]\nuid = 5\n")


def test_jail_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mvm.backends.firecracker import jail

    monkeypatch.delenv("MVM_FIRECRACKER_JAILER", raising=False)
    assert jail.settings(False) is None
    fake = tmp_path / "jailer"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MVM_JAILER", str(fake))
    monkeypatch.setattr(jail.os, "geteuid", lambda: 1000)
    with pytest.raises(BackendError, match="needs root"):
        jail.settings(True)
    monkeypatch.setattr(jail.os, "geteuid", lambda: 0)
    monkeypatch.setenv("MVM_FIRECRACKER_UID", "65534")
    monkeypatch.setenv("MVM_FIRECRACKER_CGROUP", "cpu.shares=512,memory.limit_in_bytes=1G")
    j = jail.settings(True)
    assert j is not None and j.uid == 65534 and j.gid == 0
    argv = j.argv("/fc", "vm1", tmp_path, ["--api-sock", "/run/firecracker.sock"])
    assert argv[:3] == [str(fake), "--id", "vm1"]
    assert argv[argv.index("--chroot-base-dir") + 1] == str(tmp_path / "jail")
    assert argv.count("--cgroup") == 2 and argv[-3:] == [
        "--",
        "--api-sock",
        "/run/firecracker.sock",
    ]
    for bad, what in (("MVM_FIRECRACKER_UID", "x"), ("MVM_FIRECRACKER_CGROUP", "../x")):
        monkeypatch.setenv(bad, what)
        with pytest.raises(BackendError):
            jail.settings(True)
        monkeypatch.delenv(bad)
    monkeypatch.setenv("MVM_FIRECRACKER_SECCOMP", "off")
    assert jail.seccomp_args() == ["--no-seccomp"]
    monkeypatch.setenv("MVM_FIRECRACKER_SECCOMP", "level2")
    with pytest.raises(BackendError, match="use on or off"):
        jail.seccomp_args()


def test_owned_pid_whatever_the_binary_is_called(tmp_path: Path) -> None:
    """A release's binary is "firecracker-v1.12.1-x86_64": the sidecar must still find
    it (owned_pid None makes it exit at once, and `exec`/`cp` never connect)."""
    import subprocess

    from mvm.backends.firecracker.machine import PIDFILE

    backend = FirecrackerBackend()
    # own sessions: the shell forks its sleep, and the test ends both with the group
    other = subprocess.Popen(["firecracker", "-c", "sleep 30"], executable="/bin/sh",
                             cwd=tmp_path, start_new_session=True)  # fmt: skip
    fc = subprocess.Popen(["firecracker-v1.12.1-x86_64", "-c", "sleep 30", "--api-sock"],
                          executable="/bin/sh", cwd=tmp_path, start_new_session=True)  # fmt: skip
    try:
        (tmp_path / PIDFILE).write_text(f"{other.pid}\n")  # no --api-sock: not Firecracker
        assert backend.owned_pid(tmp_path) == fc.pid  # found by the scan
        (tmp_path / PIDFILE).write_text(f"{fc.pid}\n")
        assert backend.owned_pid(tmp_path) == fc.pid
    finally:
        for p in (other, fc):
            os.killpg(p.pid, 9)
            p.wait()
    assert backend.owned_pid(tmp_path) is None


class SlowApi:
    """A Unix socket HTTP server: a valid ``GET /`` reply, or (``drip``) one header
    line every 0.3 s, forever: each read is quick, the call never ends."""

    def __init__(self, path: Path, drip: bool, reply: bytes | None = None) -> None:
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(4)
        self.drip = drip
        self.reply = reply  # a canned raw HTTP reply instead of the valid one
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self) -> None:
        body = json.dumps({"id": "x", "state": "Paused", "vmm_version": "1.12.1",
                           "app_name": "Firecracker"}).encode()  # fmt: skip
        with contextlib.suppress(OSError):
            while not self.stop.is_set():
                c, _ = self.srv.accept()
                with c:
                    while not self.stop.is_set() and c.recv(65536):
                        if self.reply is not None:
                            c.sendall(self.reply)
                            continue
                        if not self.drip:
                            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
                            continue
                        c.sendall(b"HTTP/1.1 200 OK\r\n")
                        while not self.stop.wait(0.3):
                            c.sendall(b"X-Drip: 1\r\n")

    def close(self) -> None:
        self.stop.set()
        self.srv.close()


@pytest.mark.timeout(60)  # before the fix a dripping reply held the call for ever
@pytest.mark.parametrize("drip", [False, True])
def test_api_call_is_bounded_as_a_whole(tmp_path: Path, drip: bool) -> None:

    from mvm.backends.firecracker.api import ApiClient

    server = SlowApi(tmp_path / "api.sock", drip)
    api = ApiClient(tmp_path / "api.sock")
    try:
        t0 = time.monotonic()
        if drip:
            with pytest.raises(BackendError, match="did not answer GET / in time"):
                api.instance(1.0)
        else:
            for _ in range(2):  # a kept-alive connection: the deadline is per call
                assert api.instance(1.0).state == "Paused"
        assert time.monotonic() - t0 < 3.0
    finally:
        api.close()
        server.close()


def test_relay_survives_a_guest_hoarding_status_connections(tmp_path: Path) -> None:
    """A guest that opens hundreds of status connections and never closes them: the
    relay keeps at most STATUS_CONNS (no fd exhaustion, no EMFILE busy loop) and the
    latest report still lands in the status file."""
    import subprocess
    from types import SimpleNamespace

    from mvm.backends.firecracker.relay import STATUS_CONNS
    from mvm.state.procs import proc_start_time

    rd = tmp_path / "vm"
    rd.mkdir()
    (rd / "console.log").write_bytes(b"")
    stand_in = subprocess.Popen(["sleep", "30"])
    hoard: list[socket.socket] = []
    try:
        m = SimpleNamespace(run_dir=rd, pid=stand_in.pid, pid_start=proc_start_time(stand_in.pid),
                            console_w=None)  # fmt: skip
        relay_pid = FirecrackerBackend()._start_relay(m)  # type: ignore[arg-type]
        status_sock = str(rd / f"vsock.sock_{channels.STATUS_PORT}")
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX)
            s.connect(status_sock)
            hoard.append(s)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(status_sock)
            s.sendall(b"exit 7\n")
            deadline = time.monotonic() + 10
            while channels.exit_code(fc_channels(rd)) is None and time.monotonic() < deadline:
                time.sleep(0.05)
        assert channels.exit_code(fc_channels(rd)) == 7
        fds = len(os.listdir(f"/proc/{relay_pid}/fd"))
        assert fds < 20 + STATUS_CONNS, fds
    finally:
        for s in hoard:
            s.close()
        stand_in.kill()
        stand_in.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{relay_pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(relay_pid, os.WNOHANG)
        time.sleep(0.05)


def test_kill_takes_a_wrapper_scripts_child(tmp_path: Path) -> None:
    """MVM_FIRECRACKER may be a wrapper that runs Firecracker as its child: a failed
    `up` or `down` must not leave that child (a running VM) behind."""

    from mvm import proc
    from mvm.backends.firecracker.machine import FirecrackerMachine
    from mvm.state.procs import pid_alive, proc_start_time

    child = tmp_path / "child.pid"
    popen = proc.spawn(["/bin/sh", "-c", f"sleep 30 & echo $! > {child}; wait"])
    deadline = time.monotonic() + 5
    while not child.exists() or not child.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pid = int(child.read_text())
    m = FirecrackerMachine(FirecrackerBackend(), tmp_path, popen.pid,
                           proc_start_time(popen.pid), popen=popen)  # fmt: skip
    m.kill()
    deadline = time.monotonic() + 5
    while pid_alive(pid, None) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(pid, None)


def test_launch_refuses_socket_paths_too_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:  # fmt: skip
    """A long MVM_HOME: Firecracker would exit at once ("path must be shorter than
    SUN_LEN") with a bare "exited before its API socket was ready"; mvm says why first."""
    monkeypatch.setenv("MVM_FIRECRACKER", "/bin/true")
    monkeypatch.setenv("MVM_FIRECRACKER_KVM", "unchecked")
    rd = tmp_path / ("x" * (110 - len(str(tmp_path))))
    rd.mkdir()
    with pytest.raises(BackendError, match="too long for a Unix socket") as err:
        FirecrackerBackend().launch(spec(rd))
    assert err.value.hint == "use a shorter MVM_HOME or VM name"
    assert list(rd.iterdir()) == []  # refused before anything was written


def test_launch_says_why_firecracker_exited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:  # fmt: skip
    """Firecracker's own reason (its log, which gets its stderr too) is in the one line."""
    fake = tmp_path / "firecracker"
    fake.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do [ "$1" = --log-path ] && exec >>"$2"; shift; done\n'
        "echo '2026-12-04T22:53:51.964302640 [fc1:main] RunWithApiError error: Failed to bind"
        " and run the HTTP server: IO error: path must be shorter than SUN_LEN'\n"
        "echo '2026-12-04T22:53:51.964382639 [fc1:main] Firecracker exiting with error."
        " exit_code=1'\n"
        "echo 'Error: RunWithApi(FailedToBindAndRunHttpServer(IOError(Error { kind: "
        "InvalidInput })))' >&2\n"
        "exit 1\n"
    )  # fmt: skip
    fake.chmod(0o700)
    monkeypatch.setenv("MVM_FIRECRACKER", str(fake))
    monkeypatch.setenv("MVM_FIRECRACKER_KVM", "unchecked")
    rd = tmp_path / "vm"
    rd.mkdir()
    with pytest.raises(BackendError) as err:
        FirecrackerBackend().launch(spec(rd))
    assert err.value.message == (
        "Firecracker exited before its API socket was ready: RunWithApiError error: Failed to "
        "bind and run the HTTP server: IO error: path must be shorter than SUN_LEN"
    )


def test_exit_reason_falls_back_to_stderr() -> None:
    from mvm.backends.firecracker.machine import _exit_reason

    assert _exit_reason("Error: LoggerInitialization(x)\n") == "Error: LoggerInitialization(x)"
    assert _exit_reason("2026-12-04T22:53:51.9 [a:main] Firecracker exiting with error.") is None
    assert _exit_reason(None) is None


def test_relative_binary_paths_are_made_absolute(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Firecracker starts in the run directory: MVM_FIRECRACKER=./firecracker (relative to
    where mvmctl runs) gave "starting Firecracker: No such file or directory"."""
    from mvm.backends.firecracker.machine import firecracker_binary, jailer_binary

    for name in ("firecracker", "jailer"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o700)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MVM_FIRECRACKER", "./firecracker")
    monkeypatch.setenv("MVM_JAILER", "jailer")
    assert firecracker_binary() == str(tmp_path / "firecracker")
    assert jailer_binary() == str(tmp_path / "jailer")


def _http(status: str, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), len(body), body)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("reply", "message"), [
    (_http("200 OK", b"[1, 2]"), "Firecracker: GET / did not answer a JSON object"),
    (_http("200 OK", b'{"id": "x", "state": "Exploded", "vmm_version": "1", "app_name": "F"}'),
     "Firecracker: GET / answered an unexpected instance description"),
    (_http("200 OK", b'{"id": 3}'), "Firecracker: GET / answered an unexpected instance description"),
    (_http("200 OK", b"\xff\xfe not json"), "Firecracker answered GET / with invalid JSON"),
    (_http("400 Bad Request", b'{"fault_message": "bad\\nthing\\there\\u001b[2J"}'),
     "Firecracker refused GET /: bad thing here?[2J"),
    (_http("500 Internal Server Error", b"<html>"),
     "Firecracker refused GET /: HTTP 500 Internal Server Error"),
    (b"SSH-2.0-OpenSSH\r\n", None),  # not HTTP at all
])  # fmt: skip
def test_garbage_api_replies_are_one_clean_error(tmp_path: Path, reply: bytes,
                                                 message: str | None) -> None:  # fmt: skip
    """Whatever answers on the API socket, a call ends in one BackendError (one line),
    never a KeyError/ValueError/traceback."""
    from mvm.backends.firecracker.api import ApiClient

    server = SlowApi(tmp_path / "api.sock", False, reply)
    api = ApiClient(tmp_path / "api.sock")
    try:
        with pytest.raises(BackendError) as err:
            api.instance(2.0)
        assert "\n" not in err.value.message
        if message is not None:
            assert err.value.message == message
    finally:
        api.close()
        server.close()
