"""The Ray seam: the one module that imports ``ray`` (lazily, so ``mvmctl``'s
start-up does not change), connects, reads the node table and makes the
named actors (the per-host workers and the controller).

What a node advertises (``ray start --resources``; ``mvmctl cluster start``
sets these for its local nodes):

- ``mvm-host-ID: 1`` — this node is mvm host ``ID`` (its worker is pinned
  here by asking for a sliver of this resource);
- ``mvm-vm-mem-mib: N``, ``mvm-vm-vcpus: N`` — capacity for VMs (default:
  three quarters of the machine's memory, all its CPUs);
- ``mvm-accel-kvm: 1`` or ``mvm-accel-tcg: 1`` — the accelerator (default:
  what mvm's own probe picks on that host).

Every call into an actor has a timeout: a dead node's actor never answers.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from mvm.errors import ClusterError, ConfigError, MvmError

NAMESPACE = "mvm"
HOST_PREFIX = "mvm-host-"
MEM_RESOURCE = "mvm-vm-mem-mib"
VCPU_RESOURCE = "mvm-vm-vcpus"
ACCEL_PREFIX = "mvm-accel-"
CONTROLLER = "mvm-controller"
HEAD_RESOURCE = "node:__internal_head__"
ADDRESS_ENV = "MVM_CLUSTER_ADDRESS"
INSTALL_HINT = "pip install 'mvmctl[cluster]'"
CALL_TIMEOUT = 60.0
START_TIMEOUT = 900.0  # a cold boot under TCG on a loaded host, plus a pull


def ray_module() -> Any:
    """``ray``, or the one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"the cluster commands need Ray: {INSTALL_HINT}") from None
    return ray


_connected: str | None = None  # the address this process connected to


def connect(address: str | None = None) -> Any:
    """Connect this process to the cluster (``address``, else ``MVM_CLUSTER_ADDRESS``,
    else the local cluster ``mvmctl cluster start`` made); return ``ray``.  A Ray
    driver talks to one cluster: asking for another one is an error, not a silent
    answer from the first."""
    global _connected
    ray = ray_module()
    if ray.is_initialized():
        want = address or os.environ.get(ADDRESS_ENV)
        if want and _connected and want != _connected:
            raise ConfigError(f"this process is connected to the cluster at {_connected}, "
                              f"not {want}",
                              hint="one cluster per process (a Ray driver); "
                                   "`ray.shutdown()` first to switch")  # fmt: skip
        return ray
    from mvm.cluster import local

    addr = address or os.environ.get(ADDRESS_ENV) or local.address()
    if not addr:
        raise ClusterError("no cluster to connect to",
                           hint=f"start one with `mvmctl cluster start --nodes 3`, or give "
                                f"--address / {ADDRESS_ENV}")  # fmt: skip
    _reachable(addr)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the local cluster's token (by path); another cluster's auth is the caller's RAY_AUTH_*
    auth = local.auth_env(addr)
    if auth:
        os.environ.update(auth)
        _reload_auth(ray)
    _quiet(ray)
    _init(ray, addr)
    _connected = addr
    return ray


def _init(ray: Any, addr: str) -> None:
    """``ray.init`` with what Ray's C++ side writes to fd 2 meanwhile held back: a
    cluster that refuses this process's token makes it log a warning a second for
    ~20 s.  On success the held text goes to stderr as it was; on failure it is
    read for the cause and the error is one line."""
    import sys
    import tempfile

    with tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        error: Exception | None = None
        try:
            ray.init(address=addr, namespace=NAMESPACE, logging_level="ERROR",
                     log_to_driver=False, include_dashboard=False)  # fmt: skip
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError…
            error = exc
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        said = held.read(1 << 20).decode(errors="replace")
    if error is None:
        sys.stderr.write(said)
        return
    if "InvalidAuthToken" in said or "Unauthenticated" in said:
        raise ClusterError(
            f"the cluster at {addr} refused this process: it needs the cluster's Ray token",
            hint="for a cluster `mvmctl cluster start` made, use its MVM_HOME, or set "
            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=THAT_HOME/cluster/ray-token",
        )
    raise ClusterError(f"cannot connect to the cluster at {addr}: {_short(error)}")


def _reload_auth(ray: Any) -> None:
    """Make this process see ``RAY_AUTH_*`` set after ``import ray`` (Ray reads its
    config, and caches the token, when it is imported), as ``ray`` itself does when
    it enables token auth."""
    with contextlib.suppress(ImportError, AttributeError):
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


# an HTTP/2 client's opening (the preface, then an empty SETTINGS frame): a gRPC server
# such as Ray's GCS answers at once with a SETTINGS frame of its own
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
H2_SETTINGS = 0x04


def _reachable(addr: str, timeout: float = 5.0) -> None:
    """Fail in one line, within ``timeout``, when nothing at ``addr`` answers as a gRPC
    server (Ray's GCS): where nothing listens, and where something listens but does
    not speak HTTP/2 — Ray's own connect retries for minutes (20 attempts of ~40 s
    against a silent listener) and logs every attempt to stderr.  With Ray's TLS
    (``RAY_USE_TLS``) only the TCP connect is checked."""
    import socket

    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid cluster address {addr!r}: use HOST:PORT (the Ray GCS)")
    tls = os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as s:
            if tls:
                return
            s.sendall(H2_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = s.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except TimeoutError:
        raise ClusterError(f"nothing at {addr} answered as a Ray cluster within {timeout:.0f}s",
                           hint="is it the address `ray start --head` printed (the GCS "
                                "port)?") from None  # fmt: skip
    except OSError as exc:
        raise ClusterError(f"cannot reach the cluster at {addr}: {exc.strerror or exc}",
                           hint="is it running? (`mvmctl cluster start`, or the "
                                "address `ray start --head` printed)") from None  # fmt: skip
    if len(head) < 9 or head[3] != H2_SETTINGS:
        raise ClusterError(f"what listens at {addr} is not a Ray cluster (no gRPC answer)",
                           hint="give the address `ray start --head` printed (the GCS "
                                "port)")  # fmt: skip


def _quiet(ray: Any) -> None:
    """A driver prints the cluster's error messages (e.g. "node … marked dead") to
    *stdout* from a thread of its own; ``log_to_driver=False`` does not stop it, and
    it would corrupt ``--json`` output.  mvm reports lost hosts itself."""
    with contextlib.suppress(ImportError, AttributeError):
        import ray._private.worker as ray_worker

        ray_worker.print_to_stdstream = lambda *a, **k: None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


@dataclass(frozen=True)
class Node:
    """A Ray node that is an mvm host."""

    host_id: str
    node_id: str
    alive: bool
    ip: str
    resources: dict[str, float]


def host_nodes(ray: Any) -> list[Node]:
    """Every node that advertises ``mvm-host-ID`` (dead ones too: the node table keeps
    them, marked dead, which is how lost VMs are found)."""
    seen: dict[str, Node] = {}
    for n in ray.nodes():
        res = dict(n.get("Resources") or {})
        for key in res:
            if key.startswith(HOST_PREFIX):
                hid = key[len(HOST_PREFIX) :]
                node = Node(hid, n["NodeID"], bool(n.get("Alive")),
                            str(n.get("NodeManagerAddress", "")), res)  # fmt: skip
                # a host id reused by a restarted node: the live one counts
                if hid not in seen or (node.alive and not seen[hid].alive):
                    seen[hid] = node
    return sorted(seen.values(), key=lambda x: x.host_id)


def worker(ray: Any, node: Node) -> Any:
    """The worker actor of ``node`` (created on first use, then found by name)."""
    from mvm.cluster.worker import HostWorker

    cls = ray.remote(HostWorker)
    return cls.options(
        name=f"mvm-worker-{node.host_id}", namespace=NAMESPACE, lifetime="detached",
        get_if_exists=True, num_cpus=0, max_concurrency=32, max_restarts=-1,
        resources={HOST_PREFIX + node.host_id: 0.001},
    ).remote(node.host_id, node.resources, node.ip)  # fmt: skip


def controller(ray: Any) -> Any:
    """The controller actor (desired state, reconcile loop), on the head node."""
    from mvm.cluster.controller import Controller

    cls = ray.remote(Controller)
    return cls.options(
        name=CONTROLLER, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_concurrency=32, resources={HEAD_RESOURCE: 0.001},
    ).remote()  # fmt: skip


def get(ray: Any, ref: Any, timeout: float, what: str) -> Any:
    """``ray.get`` with a timeout, Ray's errors as one-line ``ClusterError`` s."""
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, MvmError):  # raised on purpose over there: the same error here
            raise cause from None
        raise ClusterError(f"{what}: {_short(exc).splitlines()[0][:300]}") from None
    except ray.exceptions.GetTimeoutError:
        raise ClusterError(f"{what}: no answer within {timeout:.0f}s") from None
    except ray.exceptions.RayError as exc:
        raise ClusterError(f"{what}: {_short(exc).splitlines()[0][:300]}") from None
