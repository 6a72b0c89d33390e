"""``mvmctl cluster start --nodes N`` / ``cluster stop``: a Ray cluster on this
machine whose nodes behave as separate hosts, as kind does for Kubernetes.

Node K is a ``ray start --block`` process of its own session, with its own
``MVM_HOME`` (``MVM_HOME/cluster/node-K``), its own capacity (custom
resources, :mod:`mvm.cluster.engine`) and the registry settings
(``MVM_TEMPLATE_REGISTRY*``) of the caller; nothing else of the caller's
environment.  Ray has no access control of its own unless asked (its GCS,
raylets and workers listen on every interface, and whoever reaches them runs
code as this user), so the nodes run with Ray's token authentication: a
random token in ``MVM_HOME/cluster/ray-token`` (0600), named to every node
and driver by its path (``RAY_AUTH_TOKEN_PATH``), never by value.  Ray makes
its session directories world-writable; they live inside a private
``mkdtemp`` directory so no other user reaches them (logs, Unix sockets).

``local.json`` records the address and each node's process, so ``stop`` ends
exactly those: it freezes the controller, asks each node to stop (SIGTERM:
Ray drains and ends its raylet, GCS and workers), kills whatever Ray process
is left in the node's session after a grace period, and then stops every VM
the nodes started (QEMU runs in sessions of its own and would outlive Ray;
with the nodes gone nothing can start another).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mvm import paths, proc
from mvm.errors import ClusterError, ConfigError, ConflictError, MvmError

STATE = "local.json"
TOKEN = "ray-token"
OBJECT_STORE_BYTES = 80 << 20  # Ray's minimum is 75 MiB; VMs need the memory more
START_TIMEOUT = 180.0
STOP_GRACE = 8.0  # Ray drains for up to 30 s; the VMs are stopped after anyway
PASS_ENV_PREFIXES = ("MVM_TEMPLATE_REGISTRY", "MVM_ACCEL", "MVM_TRUST")


def cluster_dir() -> Path:
    return paths.home() / "cluster"


def node_home(k: int) -> Path:
    return cluster_dir() / f"node-{k}"


def _state_path() -> Path:
    return cluster_dir() / STATE


def token_path() -> Path:
    """The local cluster's Ray authentication token (0600, made by ``start``)."""
    return cluster_dir() / TOKEN


def _write_token() -> Path:
    from mvm.state.atomic import atomic_file

    path = token_path()
    with atomic_file(path) as f:
        f.write(secrets.token_hex(32).encode())
    return path


def auth_env(addr: str) -> dict[str, str]:
    """What a driver needs to talk to the local cluster at ``addr`` (Ray's token
    authentication, the token by path); empty for any other cluster."""
    st = load_state()
    if st is None or st["address"] != addr or not token_path().is_file():
        return {}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path())}


def load_state() -> dict[str, Any] | None:
    """The local cluster's record, or None (none started, unreadable, or not one this
    mvm wrote: a node's home must be under MVM_HOME/cluster, its pid an int)."""
    try:
        data = json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        return None
    if not isinstance(data.get("address"), str):
        return None
    base = cluster_dir().resolve()
    for n in data["nodes"]:
        if not (isinstance(n, dict) and isinstance(n.get("pid"), int)
                and isinstance(n.get("home"), str) and isinstance(n.get("id"), str)
                and Path(n["home"]).resolve().parent == base):  # fmt: skip
            return None
    return data


def is_node(pid: int, home: str | None = None) -> bool:
    """Whether ``pid`` is a ``ray start`` this module started (never signal another):
    its argv and, given ``home``, the node's ``MVM_HOME`` in its environment (a pid
    reused by another local cluster's node — another MVM_HOME — is not ours)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if not (b"ray.scripts.scripts" in argv and b"start" in argv and b"--block" in argv):
            return False
        return home is None or f"MVM_HOME={home}".encode() in (
            Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        )
    except OSError:
        return False


def address() -> str | None:
    """The address of the local cluster if its head node still runs."""
    st = load_state()
    if st is None or not st["nodes"]:
        return None
    head = st["nodes"][0]
    return str(st["address"]) if is_node(int(head["pid"]), head["home"]) else None


def _temp_dir() -> Path:
    """A fresh private directory for Ray's session: short (Unix socket paths have 107
    bytes), made by ``mkdtemp`` (0700, a name no other user can guess or plant first).
    Ray's own ``--temp-dir`` is ``ray`` inside it, which Ray makes world-writable."""
    return Path(tempfile.mkdtemp(prefix=f"mvm-ray-{os.getuid()}-", dir="/tmp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_env(home: Path) -> dict[str, str]:
    extra = {k: v for k, v in os.environ.items() if k.startswith(PASS_ENV_PREFIXES)}
    extra.update({
        "MVM_HOME": str(home), "MVM_CACHE": str(paths.cache_dir()),
        "HOME": os.environ.get("HOME", str(Path.home())), "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path()),
    })  # fmt: skip
    return proc.child_env(extra)


def _resources(k: int, mem_mib: int, vcpus: int, accel: str | None) -> dict[str, float]:
    from mvm.cluster.engine import ACCEL_PREFIX, HOST_PREFIX, MEM_RESOURCE, VCPU_RESOURCE

    res: dict[str, float] = {f"{HOST_PREFIX}node-{k}": 1, MEM_RESOURCE: mem_mib,
                             VCPU_RESOURCE: vcpus}  # fmt: skip
    if accel:
        res[ACCEL_PREFIX + accel] = 1
    return res


def _spawn(k: int, args: list[str], res: dict[str, float], cpus: int) -> subprocess.Popen[bytes]:
    home = node_home(k)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
            "--disable-usage-stats", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
            "--object-store-memory", str(OBJECT_STORE_BYTES), "--resources",
            json.dumps(res, sort_keys=True), *args]  # fmt: skip
    log = open(cluster_dir() / f"node-{k}.log", "wb")  # noqa: SIM115 (the child keeps it)
    try:
        return proc.spawn(argv, env=_node_env(home), stdout=log, stderr=log, cwd=home,
                          error=ClusterError, what=f"starting Ray node {k}")  # fmt: skip
    finally:
        log.close()


def _wait_port(port: int, p: subprocess.Popen[bytes], deadline: float, k: int) -> None:
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise ClusterError(f"Ray node {k} exited ({p.returncode})", log_tail=_tail(k),
                               hint=f"see {cluster_dir() / f'node-{k}.log'}")  # fmt: skip
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise ClusterError(f"Ray head node did not listen within {START_TIMEOUT:.0f}s",
                       log_tail=_tail(k))  # fmt: skip


def _tail(k: int) -> str:
    try:
        return (cluster_dir() / f"node-{k}.log").read_text(errors="replace")[-2000:]
    except OSError:
        return ""


def _write_state(st: dict[str, Any]) -> None:
    from mvm.state.atomic import write_json

    write_json(_state_path(), st)


def start(nodes: int, *, node_mem_mib: int, node_cpus: int, accel: str | None = None,
          timeout: float = START_TIMEOUT) -> dict[str, Any]:  # fmt: skip
    """Start ``nodes`` local Ray nodes (node-0 is the head) and the mvm actors."""
    if not 1 <= nodes <= 16:
        raise ConfigError("--nodes must be from 1 to 16")
    if node_mem_mib < 64 or node_cpus < 1:
        raise ConfigError("each node needs at least 64 MiB and 1 vCPU for VMs")
    if address() is not None:
        raise ConflictError(f"a local cluster is already running at {address()}",
                            hint="`mvmctl cluster stop` ends it")  # fmt: skip
    from mvm.cluster import engine

    engine.ray_module()  # the one-line install hint before anything starts
    cluster_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    _end_previous()
    _write_token()
    tmp = _temp_dir()
    port = _free_port()
    addr = f"127.0.0.1:{port}"
    st: dict[str, Any] = {"address": addr, "temp_dir": str(tmp), "nodes": [],
                          "node_mem_mib": node_mem_mib, "node_cpus": node_cpus}  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        head = _spawn(0, ["--head", "--port", str(port), "--include-dashboard=false",
                          "--temp-dir", str(tmp / "ray")],
                      _resources(0, node_mem_mib, node_cpus, accel), node_cpus)  # fmt: skip
        st["nodes"].append({"id": "node-0", "home": str(node_home(0)), "pid": head.pid})
        _write_state(st)
        _wait_port(port, head, deadline, 0)
        ray = engine.connect(addr)
        procs = {0: head}
        _wait_joined(ray, procs, 1, deadline)
        # one after the other: nodes of one machine that start together race for the
        # session's socket names (raylet.N), and one of them times out
        for k in range(1, nodes):
            procs[k] = _spawn(k, ["--address", addr],
                              _resources(k, node_mem_mib, node_cpus, accel), node_cpus)  # fmt: skip
            st["nodes"].append({"id": f"node-{k}", "home": str(node_home(k)),
                                "pid": procs[k].pid})  # fmt: skip
            _write_state(st)
            _wait_joined(ray, procs, k + 1, deadline)
        warm(ray, deadline)
    except BaseException:
        with contextlib.suppress(Exception):
            _end_nodes(st)
        for path in (_state_path(), token_path()):
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return st


def _end_previous() -> None:
    """End what is left of a local cluster that was not stopped (its head is gone, so
    ``start`` may begin anew; its other nodes may still run and would be orphaned)."""
    prev = load_state()
    if prev is not None:
        _end_nodes(prev)


def _own_temp_dir(recorded: Any) -> Path | None:
    """``recorded`` (a state file's ``temp_dir``) if it is a session directory ``start``
    made — ``/tmp/mvm-ray-UID-…``, this user's, a real directory — else None: a state
    file is never trusted to name what gets removed."""
    tmp = Path(recorded) if isinstance(recorded, str) and recorded else None
    if tmp is None or tmp.parent != Path("/tmp"):
        return None
    if not tmp.name.startswith(f"mvm-ray-{os.getuid()}-"):
        return None
    try:
        st = tmp.lstat()
    except OSError:
        return None
    return tmp if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() else None


def _wait_joined(ray: Any, procs: dict[int, subprocess.Popen[bytes]], count: int,
                 deadline: float) -> None:  # fmt: skip
    """Until ``count`` mvm hosts are alive in the node table (a node that exits, or the
    deadline, is an error with its log's tail)."""
    from mvm.cluster import engine

    while len({n.host_id for n in engine.host_nodes(ray) if n.alive}) < count:
        for k, p in procs.items():
            if p.poll() is not None:
                raise ClusterError(f"Ray node {k} exited ({p.returncode}) while starting",
                                   hint=f"see {cluster_dir() / f'node-{k}.log'}",
                                   log_tail=_tail(k))  # fmt: skip
        if time.monotonic() > deadline:
            raise ClusterError(f"Ray node {count - 1} did not join within {START_TIMEOUT:.0f}s",
                               log_tail=_tail(count - 1))  # fmt: skip
        time.sleep(0.2)


def warm(ray: Any, deadline: float) -> None:
    """Create the controller and every host's worker now, so the first ``cluster up``
    does not pay for their processes."""
    from mvm.cluster import engine
    from mvm.cluster.worker import unwrap

    ctl = engine.controller(ray)
    refs = [(n, engine.worker(ray, n).ping.remote()) for n in engine.host_nodes(ray) if n.alive]
    for n, ref in refs:
        left = max(deadline - time.monotonic(), 5.0)
        unwrap(engine.get(ray, ref, left, f"worker on {n.host_id}"), n.host_id)
    engine.get(ray, ctl.events.remote(), max(deadline - time.monotonic(), 5.0), "controller")


@contextlib.contextmanager
def _home(home: Path) -> Iterator[None]:
    old = os.environ.get("MVM_HOME")
    os.environ["MVM_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MVM_HOME", None)
        else:
            os.environ["MVM_HOME"] = old


def down_node_vms(home: Path) -> list[str]:
    """Stop every VM in a node's MVM_HOME (as ``mvmctl down`` there)."""
    from mvm.runtime.vm import down, list_vms

    stopped: list[str] = []
    if not (home / "vms").is_dir():
        return stopped
    with _home(home):
        for vm in list_vms():
            with contextlib.suppress(MvmError):
                down(vm.name)
                stopped.append(vm.name)
    return stopped


def session_pids(sid: int) -> list[int]:
    """The processes of session ``sid`` (a node's: it was started as its leader)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            out.append(int(d.name))
    return out


def end_nodes(pids: list[int], grace: float = STOP_GRACE) -> None:
    """SIGTERM nodes ``pids`` together (Ray drains and stops their processes), wait up
    to ``grace``, then SIGKILL the Ray processes left in their sessions.  Only pids
    that are still our ``ray start`` get the SIGTERM."""
    for pid in pids:
        if is_node(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_ray_left(p) for p in pids):
        for pid in pids:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    for pid in pids:
        kill_session(pid)


def kill_session(sid: int) -> None:
    """SIGKILL the Ray processes of session ``sid`` (a node's: its raylet, workers…;
    nothing else, should the id be another's)."""
    for p in session_pids(sid):
        if not _ray_process(p):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(sid, os.WNOHANG)
        if not _ray_left(sid):
            return
        time.sleep(0.1)


def _ray_process(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return argv.startswith(b"ray::") or b"/ray/" in argv or b"ray.scripts.scripts" in argv


def _ray_left(sid: int) -> list[int]:
    return [p for p in live_session_pids(sid) if _ray_process(p)]


def live_session_pids(sid: int) -> list[int]:
    """``session_pids`` less the zombies (reaped by init a moment later)."""
    return [p for p in session_pids(sid) if not _zombie(p)]


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].startswith("Z")


def _end_nodes(st: dict[str, Any]) -> None:
    """End the nodes ``st`` records: those still running as our node (by home), and the
    sessions of those gone (a session's id is not reused while a process of it lives);
    a recorded pid now running something else is left alone."""
    end_nodes([int(n["pid"]) for n in st.get("nodes") or []
               if is_node(int(n["pid"]), str(n["home"])) or _zombie(int(n["pid"]))])  # fmt: skip
    tmp = _own_temp_dir(st.get("temp_dir"))
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


def _freeze(address: str) -> None:
    """Ask the controller to stop reconciling (best effort, bounded): otherwise it
    would re-place the replicas that ``stop`` is removing."""
    with contextlib.suppress(Exception):
        from mvm.cluster import engine

        ray = engine.connect(address)
        ctl = ray.get_actor(engine.CONTROLLER, namespace=engine.NAMESPACE)
        ray.get(ctl.freeze.remote(), timeout=10)


def stop() -> dict[str, Any]:
    """Stop the local cluster's VMs, then its nodes; forget it."""
    st = load_state()
    if st is None:
        raise ClusterError("no local cluster to stop", hint="`mvmctl cluster start` starts one")
    _freeze(str(st["address"]))
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            ray.shutdown()
    # the nodes first (nothing can start a VM after that), then every VM they left
    _end_nodes(st)
    vms = []
    for n in st["nodes"]:
        vms += down_node_vms(Path(n["home"]))
    for path in (_state_path(), token_path()):
        with contextlib.suppress(OSError):
            path.unlink()
    return {"address": st["address"], "nodes": [n["id"] for n in st["nodes"]], "vms": vms}
