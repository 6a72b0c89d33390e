"""The cluster layer's pure parts: ports, sealed secrets, worker answers, names, the
local cluster's state file, and the CLI without the Ray extra."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mvm.cluster import local
from mvm.cluster.controller import vm_name
from mvm.cluster.worker import Sealed, answer, check_ports, resolve_ports, unwrap
from mvm.errors import ClusterError, ConfigError, NotFoundError
from tests.conftest import MVMCTL


def test_zero_host_ports_get_a_free_port_each() -> None:
    got = resolve_ports(["0:8080", "127.0.0.1:0:53/udp", "9000:90"])
    host, guest = got[0].split(":")
    assert guest == "8080" and 1 <= int(host) <= 65535
    assert got[1].startswith("127.0.0.1:") and got[1].endswith(":53/udp")
    assert got[2] == "9000:90"
    check_ports(["0:8080", "0.0.0.0:0:80", "8080:80"])
    for bad in ("0:99999", "x:80", "0:0", "127.0.0.1:0:70000/udp"):
        with pytest.raises(ConfigError, match=f"invalid port '{bad}'"):  # as typed
            check_ports([bad])


def test_cluster_down_needs_exactly_one_of_name_and_template() -> None:
    from mvm.cluster import client

    with pytest.raises(ConfigError, match=r"^give a VM name or --template$"):
        client.down()
    with pytest.raises(ConfigError, match="not both"):
        client.down("cl-web-1", template="web")


def test_sealed_secrets_never_print_but_survive_pickling() -> None:
    s = Sealed(["TOKEN=hunter2:api.example.com"])
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{[s]}"
    back = pickle.loads(pickle.dumps(s))
    assert back.reveal() == ["TOKEN=hunter2:api.example.com"] and bool(back)
    assert not Sealed()


def test_worker_answers_carry_errors_as_one_line() -> None:
    @answer
    def boom(kind: str) -> int:
        if kind == "missing":
            raise NotFoundError("no template 'x'", hint="push it")
        if kind == "os":
            raise PermissionError(13, "Permission denied")
        return 7

    assert unwrap(boom("ok"), "host a") == 7
    with pytest.raises(NotFoundError, match=r"^host a: no template 'x'$") as e:
        unwrap(boom("missing"), "host a")
    assert e.value.hint == "push it"
    with pytest.raises(ClusterError, match="host b: Permission denied"):
        unwrap(boom("os"), "host b")


def test_vm_names_stay_valid() -> None:
    from mvm import paths

    assert vm_name("web", 3) == "cl-web-3"
    long = vm_name("t" * 63, 12345)
    assert len(long) == 63 and long.endswith("-12345")
    paths.validate_name(long, "VM name")


def test_a_hostile_state_file_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_HOME", str(tmp_path))
    (tmp_path / "cluster").mkdir()
    state = tmp_path / "cluster" / "local.json"
    assert local.load_state() is None and local.address() is None
    good = {
        "address": "127.0.0.1:1",
        "nodes": [
            {"id": "node-0", "home": str(tmp_path / "cluster" / "node-0"), "pid": os.getpid()}
        ],
    }
    state.write_text(json.dumps(good))
    assert local.load_state() == good
    assert local.address() is None  # pid is not a `ray start` we made: never trusted
    for bad in ({"address": 1, "nodes": []}, {"address": "a", "nodes": [{"id": "x"}]},
                {"address": "a", "nodes": [{"id": "x", "home": "/etc", "pid": 1}]},
                {"address": "a", "nodes": [{"id": "x", "home": str(tmp_path / "cluster/n"),
                                            "pid": "1"}]}):  # fmt: skip
        state.write_text(json.dumps(bad))
        assert local.load_state() is None
    state.write_text("{not json")
    assert local.load_state() is None
    with pytest.raises(ClusterError, match="no local cluster to stop"):
        local.stop()


def test_end_nodes_signals_only_our_ray_processes() -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                         start_new_session=True)  # fmt: skip
    try:
        local.end_nodes([p.pid], grace=0.5)
        local.kill_session(p.pid)
        assert p.poll() is None  # not a `ray start --block`, not Ray: left alone
    finally:
        p.kill()
        p.wait()


def test_a_recorded_pid_running_another_clusters_node_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pid in local.json that now belongs to a node of another MVM_HOME (pid reuse,
    a copied state file) is neither taken as our cluster nor signalled by stop."""
    monkeypatch.setenv("MVM_HOME", str(tmp_path))
    ours, theirs = str(tmp_path / "cluster" / "node-0"), str(tmp_path / "other" / "node-0")
    fake = [sys.executable, "-c", "import time; time.sleep(60)", "ray.scripts.scripts",
            "start", "--block"]  # fmt: skip
    p = subprocess.Popen(fake, start_new_session=True, env={**os.environ, "MVM_HOME": theirs})
    try:
        deadline = time.monotonic() + 10
        while not local.is_node(p.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert local.is_node(p.pid) and local.is_node(p.pid, theirs)
        assert not local.is_node(p.pid, ours)
        st = {"address": "127.0.0.1:1", "nodes": [{"id": "node-0", "home": ours, "pid": p.pid}]}
        (tmp_path / "cluster").mkdir()
        (tmp_path / "cluster" / "local.json").write_text(json.dumps(st))
        assert local.load_state() == st and local.address() is None
        local._end_nodes(st)
        assert p.poll() is None  # not ours: not signalled
        # as its own cluster's stop sees it: ended
        local._end_nodes({**st, "nodes": [{"id": "node-0", "home": theirs, "pid": p.pid}]})
        assert p.wait(timeout=30) is not None
    finally:
        p.kill()
        p.wait()


def test_start_ends_what_an_unstopped_cluster_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its head died, another node of it still runs: the next start ends that node
    (and its session dir) before recording a new cluster over it."""
    monkeypatch.setenv("MVM_HOME", str(tmp_path))
    home = str(local.node_home(1))
    fake = [sys.executable, "-c", "import time; time.sleep(60)", "ray.scripts.scripts",
            "start", "--block"]  # fmt: skip
    p = subprocess.Popen(fake, start_new_session=True, env={**os.environ, "MVM_HOME": home})
    tmp = local._temp_dir()
    try:
        deadline = time.monotonic() + 10
        while not local.is_node(p.pid, home) and time.monotonic() < deadline:
            time.sleep(0.05)
        nodes = [{"id": "node-0", "home": str(local.node_home(0)), "pid": 2**22 + 1},
                 {"id": "node-1", "home": home, "pid": p.pid}]  # fmt: skip
        local.cluster_dir().mkdir()
        (local.cluster_dir() / "local.json").write_text(
            json.dumps({"address": "127.0.0.1:1", "nodes": nodes, "temp_dir": str(tmp)})
        )
        assert local.address() is None  # the head is gone
        local._end_previous()
        assert p.wait(timeout=30) is not None and not tmp.exists()
    finally:
        p.kill()
        p.wait()
        if tmp.exists():
            tmp.rmdir()


def test_local_start_checks_its_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_HOME", str(tmp_path))
    with pytest.raises(ConfigError):
        local.start(0, node_mem_mib=1024, node_cpus=1)
    with pytest.raises(ConfigError):
        local.start(3, node_mem_mib=10, node_cpus=1)


BLOCK_RAY = """
import sys
import time
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("no ray")
sys.meta_path.insert(0, NoRay())
from mvm.cli.entry import main
sys.argv = ["mvmctl", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("args", [["cluster", "ls"], ["cluster", "start", "--nodes", "1"]])
def test_without_the_extra_one_line_says_how_to_install(args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-c", BLOCK_RAY, *args], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("mvmctl: error: the cluster commands need Ray: "
                               "pip install 'mvmctl[cluster]'"), r.stderr  # fmt: skip


def test_no_cluster_to_connect_to_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "MVM_HOME": str(tmp_path)}
    env.pop("MVM_CLUSTER_ADDRESS", None)
    r = subprocess.run([MVMCTL, "cluster", "ls"], capture_output=True, text=True, env=env,
                       timeout=60)  # fmt: skip
    assert r.returncode == 1 and r.stderr.startswith("mvmctl: error: no cluster to connect to")


@pytest.mark.parametrize(("address", "says"), [
    ("127.0.0.1:1", "mvmctl: error: cannot reach the cluster at 127.0.0.1:1"),
    ("nonsense", "mvmctl: error: invalid cluster address 'nonsense'"),
])  # fmt: skip
def test_an_unreachable_or_bad_address_fails_fast(tmp_path: Path, address: str,
                                                  says: str) -> None:  # fmt: skip
    env = {**os.environ, "MVM_HOME": str(tmp_path), "MVM_CLUSTER_ADDRESS": address}
    t = time.monotonic()
    r = subprocess.run([MVMCTL, "cluster", "hosts"], capture_output=True, text=True, env=env,
                       timeout=60)  # fmt: skip
    assert r.returncode != 0 and r.stderr.startswith(says), r.stderr
    assert time.monotonic() - t < 20 and "Traceback" not in r.stderr


def test_help_and_the_cluster_commands_module_do_not_import_ray() -> None:
    code = ("import sys; import mvm.cli.main, mvm.cli.cluster_cmds, mvm.cluster, "
            "mvm.cluster.placement, mvm.cluster.client; "
            "print('ray' in sys.modules)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
    r = subprocess.run([MVMCTL, "cluster", "up", "--help"], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0 and "--spread" in r.stdout and "--replicas" in r.stdout


def test_local_nodes_run_with_ray_token_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray listens on every interface and runs whatever it is sent: the local cluster's
    nodes require a token, named by path (never by value) in their environment."""
    monkeypatch.setenv("MVM_HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "callers-own")
    (tmp_path / "cluster").mkdir(mode=0o700)
    path = local._write_token()
    token = path.read_text()
    assert path == local.token_path() and len(token) == 64 and int(token, 16) >= 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert local._write_token().read_text() != token  # a new cluster, a new token
    env = local._node_env(local.node_home(0))
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(path)
    assert "RAY_AUTH_TOKEN" not in env
    assert path.read_text() not in json.dumps(env)
    # a driver gets the token path for the local cluster's address only
    assert local.auth_env("127.0.0.1:5") == {}
    home = str(tmp_path / "cluster" / "node-0")
    (tmp_path / "cluster" / "local.json").write_text(
        json.dumps({"address": "127.0.0.1:5", "nodes": [{"id": "node-0", "home": home, "pid": 1}]})
    )
    assert local.auth_env("127.0.0.1:5") == {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(path),
    }
    assert local.auth_env("10.0.0.1:5") == {}


def test_rays_session_dir_is_private_and_unguessable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray makes its --temp-dir world-writable: it sits in a fresh 0700 mkdtemp dir,
    and a stale one is removed only if it is this user's under /tmp."""
    monkeypatch.setenv("MVM_HOME", str(tmp_path))
    a, b = local._temp_dir(), local._temp_dir()
    try:
        assert a != b and a.parent == Path("/tmp")
        assert a.name.startswith(f"mvm-ray-{os.getuid()}-") and len(str(a)) < 40
        assert a.stat().st_mode & 0o777 == 0o700
        (tmp_path / "cluster").mkdir()
        state = tmp_path / "cluster" / "local.json"
        victim = tmp_path / f"mvm-ray-{os.getuid()}-x"  # not under /tmp: never removed
        victim.mkdir()
        link = Path(f"{a}-link")
        link.symlink_to(victim)
        try:
            for temp, stale in ((str(a), a), ("/etc", None), (str(victim), None), (1, None),
                                (f"/tmp/mvm-ray-{os.getuid()}-gone", None),
                                (str(link), None)):  # fmt: skip
                st = {"address": "x:1", "nodes": [], "temp_dir": temp}
                state.write_text(json.dumps(st))
                assert local._own_temp_dir(st["temp_dir"]) == stale
                if stale is None:
                    local._end_nodes(st)  # removes only a session dir it made
            assert victim.is_dir() and link.is_symlink()
        finally:
            link.unlink()
    finally:
        a.rmdir()
        b.rmdir()


def test_sealed_secrets_reach_the_worker_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker parses the sealed text again: what it gets is what the caller bound,
    and a value that would split elsewhere (part of it to another host) is refused."""
    from mvm.cluster.client import seal_secrets
    from mvm.network.bindings import parse

    monkeypatch.setenv("K", "a:b.example")
    for arg, host, header in (("K:api.example.com", "api.example.com", None),
                              ("K:api.example.com:x-key", "api.example.com", "x-key"),
                              ("K=a:b.example:api.example.com", "api.example.com", None)):  # fmt: skip
        sealed = seal_secrets([arg])
        assert sealed is not None
        b = parse(sealed.reveal()[0], {})
        assert (b.value, b.hosts, b.header) == ("a:b.example", (host,), header)
    with pytest.raises(ConfigError, match="secret K: its value contains ':'") as e:
        seal_secrets(["K:localhost"])
    assert "b.example" not in str(e.value) and "b.example" not in (e.value.hint or "")


class _FakeRay:
    """``ray.init`` as a cluster that refuses the token behaves: C++ warnings on fd 2,
    then an exception."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse

    def init(self, **kw: object) -> None:
        os.write(2, b"[W gcs_client.cc:210] Unauthenticated: InvalidAuthToken\n" * 3
                 if self.refuse else b"a warning of Ray's\n")  # fmt: skip
        if self.refuse:
            raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:1")


def test_a_cluster_that_refuses_our_token_is_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    from mvm.cluster import engine

    with pytest.raises(ClusterError, match=r"^the cluster at h:1 refused this process") as e:
        engine._init(_FakeRay(refuse=True), "h:1")
    assert "RAY_AUTH_TOKEN_PATH" in (e.value.hint or "")
    assert "InvalidAuthToken" not in capfd.readouterr().err  # Ray's noise held back
    engine._init(_FakeRay(refuse=False), "h:1")
    assert capfd.readouterr().err == "a warning of Ray's\n"  # on success: passed on


def _listener(reply: bytes | None) -> socket.socket:
    """A TCP server on 127.0.0.1 that answers a connection with ``reply`` (None: says
    nothing, holds it open)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            conn.recv(64)
            if reply is not None:
                conn.sendall(reply)
            time.sleep(3)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv


@pytest.mark.parametrize(("reply", "says"), [
    (None, "answered as a Ray cluster within 1s"),  # Ray would retry for minutes
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "is not a Ray cluster"),
    (b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x64", None),  # gRPC
])  # fmt: skip
def test_the_address_must_answer_as_grpc_within_the_timeout(reply: bytes | None,
                                                             says: str | None) -> None:  # fmt: skip
    from mvm.cluster import engine

    srv = _listener(reply)
    addr = f"127.0.0.1:{srv.getsockname()[1]}"
    try:
        began = time.monotonic()
        if says is None:
            engine._reachable(addr, timeout=1)
        else:
            with pytest.raises(ClusterError, match=says):
                engine._reachable(addr, timeout=1)
        assert time.monotonic() - began < 3
    finally:
        srv.close()


def test_a_second_cluster_address_in_one_process_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process (the SDK) connected to one cluster that asks for another gets an error,
    not the first cluster's answers."""
    from mvm.cluster import engine

    class Connected:
        @staticmethod
        def is_initialized() -> bool:
            return True

    monkeypatch.setattr(engine, "ray_module", lambda: Connected)
    monkeypatch.setattr(engine, "_connected", "10.0.0.1:6379")
    monkeypatch.delenv("MVM_CLUSTER_ADDRESS", raising=False)
    assert engine.connect() is Connected and engine.connect("10.0.0.1:6379") is Connected
    with pytest.raises(ConfigError, match=r"connected to the cluster at 10\.0\.0\.1:6379, not"):
        engine.connect("10.0.0.2:6379")
    monkeypatch.setenv("MVM_CLUSTER_ADDRESS", "10.0.0.3:6379")
    with pytest.raises(ConfigError, match=r"not 10\.0\.0\.3:6379"):
        engine.connect()
