"""Placement (mvm.cluster.placement): pack, spread, cache preference, refusals."""

from __future__ import annotations

from collections import Counter

import pytest

from mvm.cluster.placement import Host, Request, place
from mvm.errors import ClusterError


def hosts(*mems: int, vcpus: int = 8) -> list[Host]:
    return [Host(f"h{i}", m, vcpus) for i, m in enumerate(mems)]


def test_pack_fills_the_host_with_least_free_capacity_first() -> None:
    hs = [Host("a", 2048, 8), Host("b", 1024, 8, used_mem_mib=256), Host("c", 1024, 8)]
    got = place(hs, Request("web", 256, 1, replicas=5))
    # b has least free (768): 3 fit there, then c (1024) before a (2048)
    assert got == ["b", "b", "b", "c", "c"]


def test_pack_prefers_hosts_that_cache_the_template() -> None:
    hs = [Host("a", 1024, 8), Host("b", 4096, 8, templates=frozenset({"web"}))]
    assert place(hs, Request("web", 256, 1, replicas=2)) == ["b", "b"]
    assert place(hs, Request("db", 256, 1)) == ["a"]


def test_spread_balances_replicas_across_hosts() -> None:
    hs = hosts(1024, 1024, 1024)
    got = place(hs, Request("web", 256, 1, replicas=6, spread=True))
    assert Counter(got) == {"h0": 2, "h1": 2, "h2": 2}
    # replicas already running count: the host without one gets the next
    hs = [
        Host("a", 1024, 8, running=(("web", 1),), used_mem_mib=256),
        Host("b", 1024, 8, running=(("web", 1),), used_mem_mib=256),
        Host("c", 1024, 8),
    ]
    assert place(hs, Request("web", 256, 1, spread=True)) == ["c"]


def test_pack_and_spread_differ_on_the_same_hosts() -> None:
    hs = hosts(1024, 1024, 1024)
    assert Counter(place(hs, Request("web", 256, 1, replicas=3))) == {"h0": 3}
    assert len(set(place(hs, Request("web", 256, 1, replicas=3, spread=True)))) == 3


def test_vcpus_and_accelerator_constrain_placement() -> None:
    hs = [Host("a", 4096, 1), Host("b", 4096, 4, accel="kvm")]
    assert place(hs, Request("web", 256, 2)) == ["b"]
    assert place(hs, Request("web", 256, 1, accel="tcg")) == ["a"]
    with pytest.raises(ClusterError, match="no live host has kvm"):
        place([Host("a", 4096, 4)], Request("web", 256, 1, accel="kvm"))


def test_dead_and_excluded_hosts_get_nothing() -> None:
    hs = [Host("a", 1024, 8, alive=False), Host("b", 1024, 8), Host("c", 4096, 8)]
    assert set(place(hs, Request("web", 256, 1, replicas=4))) == {"b"}
    assert place(hs, Request("web", 256, 1, exclude=frozenset({"b"}))) == ["c"]
    with pytest.raises(ClusterError, match="no live mvm hosts"):
        place([Host("a", 1024, 8, alive=False)], Request("web", 256, 1))


def test_a_request_larger_than_any_host_is_refused_clearly() -> None:
    hs = [Host("a", 2048, 8), Host("b", 1024, 8, used_mem_mib=512)]
    with pytest.raises(ClusterError) as e:
        place(hs, Request("big", 4096, 1))
    assert str(e.value) == ("big needs 4096 MiB and 1 vCPU; the largest host has "
                            "2048 MiB and 8 vCPUs free (a)")  # fmt: skip
    with pytest.raises(ClusterError, match=r"only 4 of 5 replicas of web fit \(each needs 512"):
        place([Host("a", 2048, 8)], Request("web", 512, 1, replicas=5))


def test_bad_requests() -> None:
    for kw in ({"replicas": 0}, {"mem_mib": 0}, {"accel": "xen"}):
        with pytest.raises(ClusterError):
            Request("web", **{"mem_mib": 256, "vcpus": 1, **kw})  # type: ignore[arg-type]
