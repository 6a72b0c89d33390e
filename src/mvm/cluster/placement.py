"""Where sandboxes go: hosts with capacity + a request → one host per replica.

Pure (no Ray, no I/O), so every rule is unit-tested and any engine adapter
(Ray here; Nomad or Kubernetes later, docs/cluster.md) can call it with the
hosts it knows.  Two strategies:

- **pack** (default): each replica goes to the host that already caches the
  template, then to the one with the *least* free memory (then vCPUs) that
  still fits — hosts fill up one after the other, empty ones stay free for
  large requests.
- **spread**: each replica goes to the host running the fewest replicas of
  the template, then to the one with the *most* free memory; cached hosts
  win ties.

A request is placed whole or not at all: when a replica fits nowhere the
error says what it needs and what the largest host has free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from mvm.errors import ClusterError

ACCELS = ("kvm", "tcg")


@dataclass(frozen=True)
class Host:
    """One host as placement sees it: capacity for VMs and what already uses it."""

    id: str
    mem_mib: int
    vcpus: int
    accel: str = "tcg"
    templates: frozenset[str] = frozenset()
    used_mem_mib: int = 0
    used_vcpus: int = 0
    # template → replicas of it running here (spread counts them)
    running: tuple[tuple[str, int], ...] = ()
    alive: bool = True

    @property
    def free_mem_mib(self) -> int:
        return self.mem_mib - self.used_mem_mib

    @property
    def free_vcpus(self) -> int:
        return self.vcpus - self.used_vcpus

    def count(self, template: str) -> int:
        return dict(self.running).get(template, 0)

    def fits(self, req: Request) -> bool:
        return (self.alive and self.free_mem_mib >= req.mem_mib and self.free_vcpus >= req.vcpus
                and (req.accel is None or req.accel == self.accel))  # fmt: skip

    def with_replica(self, req: Request) -> Host:
        """This host after one more replica of ``req`` (memory, vCPUs, cache, count)."""
        counts = dict(self.running)
        counts[req.template] = counts.get(req.template, 0) + 1
        return replace(self, used_mem_mib=self.used_mem_mib + req.mem_mib,
                       used_vcpus=self.used_vcpus + req.vcpus,
                       templates=self.templates | {req.template},
                       running=tuple(sorted(counts.items())))  # fmt: skip


@dataclass(frozen=True)
class Request:
    """``replicas`` sandboxes of ``template``, each needing ``mem_mib`` and ``vcpus``."""

    template: str
    mem_mib: int
    vcpus: int
    replicas: int = 1
    spread: bool = False
    accel: str | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.mem_mib < 1 or self.vcpus < 1:
            raise ClusterError("a request needs at least 1 replica, 1 MiB and 1 vCPU")
        if self.accel is not None and self.accel not in ACCELS:
            raise ClusterError(f"unknown accelerator {self.accel!r}: use kvm or tcg")


def _pack_key(h: Host, req: Request) -> tuple[int, int, int, str]:
    return (0 if req.template in h.templates else 1, h.free_mem_mib, h.free_vcpus, h.id)


def _spread_key(h: Host, req: Request) -> tuple[int, int, int, int, str]:
    cached = 0 if req.template in h.templates else 1
    return (h.count(req.template), -h.free_mem_mib, -h.free_vcpus, cached, h.id)


def place(hosts: Sequence[Host], req: Request) -> list[str]:
    """The host id for each replica, in order; ``ClusterError`` if any does not fit."""
    state = {h.id: h for h in hosts if h.id not in req.exclude}
    live = [h for h in state.values() if h.alive]
    if not live:
        raise ClusterError("no live mvm hosts in the cluster",
                           hint="`mvmctl cluster hosts` lists them")  # fmt: skip
    out: list[str] = []
    for _ in range(req.replicas):
        fitting = [h for h in state.values() if h.fits(req)]
        if not fitting:
            raise ClusterError(_no_fit(list(state.values()), req, len(out)))
        if req.spread:
            best = min(fitting, key=lambda h: _spread_key(h, req))
        else:
            best = min(fitting, key=lambda h: _pack_key(h, req))
        state[best.id] = best.with_replica(req)
        out.append(best.id)
    return out


def _no_fit(hosts: list[Host], req: Request, placed: int) -> str:
    live = [h for h in hosts if h.alive]
    needs = f"needs {req.mem_mib} MiB and {req.vcpus} vCPU{'s' if req.vcpus != 1 else ''}"
    if req.accel is not None and not any(h.accel == req.accel for h in live):
        return f"{req.template} {needs} on {req.accel}; no live host has {req.accel}"
    big = max(live, key=lambda h: (h.free_mem_mib, h.free_vcpus, h.id))
    if placed == 0:
        what = f"{req.template} {needs}"
    else:
        what = f"only {placed} of {req.replicas} replicas of {req.template} fit (each {needs})"
    return (f"{what}; the largest host has {max(big.free_mem_mib, 0)} MiB and "
            f"{max(big.free_vcpus, 0)} vCPUs free ({big.id})")  # fmt: skip
