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
