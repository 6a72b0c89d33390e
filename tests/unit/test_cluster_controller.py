"""The controller's bookkeeping with fake hosts (no Ray): what ``cluster down`` forgets."""

from __future__ import annotations

from typing import Any

import pytest

from mvm.cluster import controller as ctl_mod
from mvm.cluster import engine
from mvm.cluster.controller import Controller, Placed
from mvm.errors import ClusterError, NotFoundError


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        return self.fn(*args)  # the "ref" is the answer itself


class _Worker:
    """A host's worker whose ``stop`` fails for the names in ``refuse``."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.stopped: list[str] = []

        def stop(name: str) -> tuple[Any, ...]:
            if name in self.refuse:
                return ("err", "VMError", f"cannot stop {name}: qemu hung", None)
            self.stopped.append(name)
            return ("ok", True)

        self.stop = _Method(stop)


@pytest.fixture
def ctl(monkeypatch: pytest.MonkeyPatch) -> tuple[Controller, _Worker]:
    worker = _Worker({"cl-web-2"})
    node = engine.Node("a", "n1", True, "127.0.0.1", {})
    monkeypatch.setattr(ctl_mod, "RECONCILE_PERIOD", 3600.0)  # the loop stays asleep
    monkeypatch.setattr(engine, "host_nodes", lambda ray: [node])
    monkeypatch.setattr(engine, "worker", lambda ray, n: worker)
    monkeypatch.setattr(engine, "get", lambda ray, ref, timeout, what: ref)
    c = Controller()
    for n in (1, 2):
        c._vms[f"cl-web-{n}"] = Placed(f"cl-web-{n}", "a", "web", None, "running")
    c._vms["cl-web-3"] = Placed("cl-web-3", "gone-host", "web", None, "lost")
    return c, worker


def test_down_keeps_listing_what_its_host_did_not_stop(ctl: tuple[Controller, _Worker]) -> None:
    c, worker = ctl
    with pytest.raises(ClusterError, match=r"^could not stop cl-web-2 \(still listed\)$"):
        c.down(template="web")
    assert worker.stopped == ["cl-web-1"]
    assert set(c._vms) == {"cl-web-2"}  # the stopped and the lost one are forgotten
    assert any("qemu hung" in e for e in c.events())
    worker.refuse.clear()
    assert c.down("cl-web-2") == ["cl-web-2"] and c._vms == {}


def test_down_of_an_unknown_name_is_not_found(ctl: tuple[Controller, _Worker]) -> None:
    c, _ = ctl
    with pytest.raises(NotFoundError, match="no cluster VM named 'nope'"):
        c.down("nope")


def test_a_host_that_left_after_placement_fails_the_start_cleanly(
    ctl: tuple[Controller, _Worker],
) -> None:
    """Placed on host b, which is gone when the start is sent: a one-line error, and
    no replica left behind as 'starting' (it would hold capacity for ever)."""
    from mvm.cluster.controller import Group

    c, _ = ctl
    before = dict(c._vms)
    with pytest.raises(ClusterError, match=r"^starting web: host b left the cluster$"):
        c._start(Group("g1", "web", 1, 1, 256, [], False), ["b"], None)
    assert c._vms == before


def test_a_fixed_host_port_allows_one_replica_per_host() -> None:
    from mvm.cluster.controller import fixed_port_clash

    assert fixed_port_clash(["0:80", "127.0.0.1:0:53/udp"], ["a", "a", "a"]) is None
    assert fixed_port_clash(["8080:80"], ["a", "b", "c"]) is None
    assert fixed_port_clash([], ["a", "a"]) is None
    err = fixed_port_clash(["0:443", "8080:80"], ["a", "b", "a"])
    assert err is not None and str(err) == (
        "-p 8080:80 fixes the host port, so one replica per host; a would run 2"
    )
    assert "-p 0:GUEST" in (err.hint or "")
    # a replacement beside a replica of the group that still runs there
    assert fixed_port_clash(["8080"], ["b"], existing=["a", "b"]) is not None
    assert fixed_port_clash(["8080"], ["c"], existing=["a", "b"]) is None


def test_a_replacement_with_a_fixed_port_goes_to_a_host_without_a_replica(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mvm.cluster.controller import Group

    nodes = [engine.Node(h, f"n-{h}", True, "127.0.0.1", {}) for h in ("a", "b")]
    started: list[tuple[str, str]] = []

    class Worker:
        def __init__(self, host: str) -> None:
            def start(name: str, *args: Any) -> tuple[Any, ...]:
                started.append((host, name))
                return ("ok", {"state": "running", "ports": []})

            self.start = _Method(start)

    monkeypatch.setattr(ctl_mod, "RECONCILE_PERIOD", 3600.0)
    monkeypatch.setattr(engine, "host_nodes", lambda ray: nodes)
    monkeypatch.setattr(engine, "worker", lambda ray, n: Worker(n.host_id))
    monkeypatch.setattr(engine, "get", lambda ray, ref, timeout, what: ref)
    c = Controller()
    g = Group("g1", "web", 2, 1, 256, ["8080:80"], False, starting=False)
    c._groups[g.id] = g
    c._vms["cl-web-1"] = Placed("cl-web-1", "a", "web", "g1", "running")
    c._vms["cl-web-2"] = Placed("cl-web-2", "c", "web", "g1", "lost")

    def info(used: int) -> dict[str, Any]:
        return {"vms": [], "used_mem_mib": used, "used_vcpus": 0, "mem_mib": 2048,
                "vcpus": 8, "accel": "tcg", "templates": ["web"]}  # fmt: skip

    # packing alone would choose a (less free memory); a's port 8080 is taken
    c._replace(g, nodes, {"a": info(256), "b": info(0)})
    assert [h for h, _ in started] == ["b"], c.events()
