"""The cluster's desired state and its reconcile loop: a detached, named Ray actor
(``mvm-controller`` on the head node), so every ``mvmctl cluster`` process —
and the SDK — sees the same groups and VMs.

A ``cluster up`` is a *group*: N replicas of a template with their resources,
ports and placement strategy.  The controller places the group
(:mod:`mvm.cluster.placement` over what each host's worker reports), asks the
chosen workers to start the VMs in parallel, and keeps the group at N: every
``RECONCILE_PERIOD`` it reads Ray's node table, reports the VMs of a node that
is gone as ``lost`` and starts replacements on the hosts left.  With Ray's
default health checks a node that dies without saying so is marked dead
within about 15 s (a node that stops cleanly at once), so a lost VM is
reported within ``LOST_BOUND`` (30 s) and replaced right after.

Secrets (``--secret``) of a group live in this actor's memory only: never in
what ``ls``/``hosts`` return, never written anywhere, never logged (the
:class:`~mvm.cluster.worker.Sealed` wrapper prints as a count).  The
controller needs them to start replacement replicas; a restarted controller
has lost them, and so does not re-place such groups.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mvm.cluster import engine
from mvm.cluster.placement import Host, Request, place
from mvm.cluster.worker import PREFIX, ZERO_PORT_RE, Sealed, unwrap
from mvm.errors import ClusterError, MvmError, NotFoundError

RECONCILE_PERIOD = 2.0
LOST_BOUND = 30.0
INFO_TIMEOUT = 30.0
RETRY_AFTER = 10.0


@dataclass
class Group:
    id: str
    template: str
    replicas: int
    cpus: int
    mem_mib: int
    ports: list[str]
    spread: bool
    accel: str | None = None
    network_preset: str | None = None
    network_allow: list[str] = field(default_factory=list)
    starting: bool = True
    retry_at: float = 0.0


@dataclass
class Placed:
    name: str
    host: str
    template: str
    group: str | None
    state: str = "starting"
    ports: list[str] = field(default_factory=list)
    since: float = field(default_factory=time.time)


def vm_name(template: str, n: int) -> str:
    """``cl-TEMPLATE-N``, shortened to a valid VM name (63 characters)."""
    tail = f"-{n}"
    return f"{PREFIX}-{template[: 63 - len(PREFIX) - 1 - len(tail)]}{tail}"


def fixed_port_clash(ports: Sequence[str], chosen: Sequence[str],
                     existing: Sequence[str] = ()) -> ClusterError | None:  # fmt: skip
    """A fixed host port (``-p 8080:80``) binds once per host: the error when ``chosen``
    (plus the group's replicas ``existing`` already on hosts) puts two on one host —
    before any VM starts, rather than the second failing to bind."""
    fixed = [p for p in ports if not ZERO_PORT_RE.fullmatch(p)]
    every = [*chosen, *existing]
    twice = sorted({h for h in every if every.count(h) > 1})
    if not fixed or not twice:
        return None
    return ClusterError(f"-p {fixed[0]} fixes the host port, so one replica per host; "
                        f"{twice[0]} would run {every.count(twice[0])}",
                        hint="use -p 0:GUEST (a free port for each replica), or --spread "
                             "with no more replicas than hosts")  # fmt: skip


class Controller:
    """See the module doc.  Public methods are called through Ray."""

    def __init__(self) -> None:
        self._ray = engine.ray_module()
        self._lock = threading.RLock()
        self._groups: dict[str, Group] = {}
        self._vms: dict[str, Placed] = {}
        self._secrets: dict[str, Sealed] = {}
        self._counter = 0  # groups
        self._serial = 0  # VM names
        self._frozen = False
        self._workers: dict[tuple[str, str], Any] = {}
        self._events: list[str] = []
        self._known: dict[str, engine.Node] = {}
        self._adopted = False
        threading.Thread(target=self._loop, name="mvm-reconcile", daemon=True).start()

    # -- hosts --

    def _worker(self, node: engine.Node) -> Any:
        key = (node.host_id, node.node_id)
        if key not in self._workers:
            self._workers[key] = engine.worker(self._ray, node)
        return self._workers[key]

    def _nodes(self) -> list[engine.Node]:
        """The node table's mvm hosts, plus hosts seen before that it no longer lists
        as such (a dead node's entry loses its resources): those are dead."""
        nodes = engine.host_nodes(self._ray)
        with self._lock:
            for n in nodes:
                if n.alive:
                    self._known[n.host_id] = n
            listed = {n.host_id for n in nodes}
            nodes += [replace(n, alive=False) for hid, n in self._known.items()
                      if hid not in listed]  # fmt: skip
        return sorted(nodes, key=lambda n: n.host_id)

    def _call(self, node: engine.Node, method: str, *args: Any,
              timeout: float = INFO_TIMEOUT) -> Any:  # fmt: skip
        ref = getattr(self._worker(node), method).remote(*args)
        answer = engine.get(self._ray, ref, timeout, f"host {node.host_id}")
        return unwrap(answer, f"host {node.host_id}")

    def _infos(self, nodes: Sequence[engine.Node]) -> dict[str, dict[str, Any]]:
        """Each live host's report, asked in parallel; a host that does not answer is
        left out (and said so in the events)."""
        refs = {n.host_id: (n, self._worker(n).info.remote()) for n in nodes if n.alive}
        out: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + INFO_TIMEOUT
        for hid, (_n, ref) in refs.items():
            try:
                left = max(deadline - time.monotonic(), 1.0)
                out[hid] = unwrap(engine.get(self._ray, ref, left, f"host {hid}"), f"host {hid}")
            except MvmError as exc:
                self._event(exc.message)
        return out

    def hosts(self) -> list[dict[str, Any]]:
        nodes = self._nodes()
        infos = self._infos(nodes)
        out = []
        for n in nodes:
            info = infos.get(n.host_id)
            if info is None:
                out.append({"id": n.host_id, "alive": n.alive, "node_ip": n.ip,
                            "answering": False})  # fmt: skip
                continue
            vms = info.pop("vms")
            out.append({**info, "alive": True, "answering": True, "vm_count": len(vms),
                        "cluster_vms": sorted(v["name"] for v in vms if v["cluster"])})  # fmt: skip
        return out

    # -- placing and starting --

    def up(self, template: str, replicas: int, cpus: int | None, mem_mib: int | None,
           ports: list[str], spread: bool, accel: str | None,
           secrets: Sealed | None = None, network_preset: str | None = None,
           network_allow: Sequence[str] = ()) -> list[dict[str, Any]]:  # fmt: skip
        """Place and start a group; all its VMs run when this returns, or none does."""
        nodes = [n for n in self._nodes() if n.alive]
        if not nodes:
            raise ClusterError("no live mvm hosts in the cluster")
        infos = self._infos(nodes)
        if cpus is None or mem_mib is None:
            dc, dm = self._defaults(template, nodes, infos)
            cpus, mem_mib = cpus or dc, mem_mib or dm
        req = Request(template, mem_mib, cpus, replicas=replicas, spread=spread, accel=accel)
        hosts = self._placement_hosts(nodes, infos)
        chosen = place(hosts, req)
        clash = fixed_port_clash(ports, chosen)
        if clash is not None:
            raise clash
        with self._lock:
            self._counter += 1
            group = Group(
                f"g{self._counter}",
                template,
                replicas,
                cpus,
                mem_mib,
                list(ports),
                spread,
                accel,
                network_preset,
                list(network_allow),
            )
            self._groups[group.id] = group
            if secrets:
                self._secrets[group.id] = secrets
        try:
            started = self._start(group, chosen, secrets)
        except BaseException:
            with self._lock:
                self._groups.pop(group.id, None)
                self._secrets.pop(group.id, None)
            raise
        with self._lock:
            group.starting = False
        return [asdict(p) for p in started]

    def _defaults(self, template: str, nodes: list[engine.Node],
                  infos: dict[str, dict[str, Any]]) -> tuple[int, int]:  # fmt: skip
        """The template's (cpus, memory), asked of a host that caches it (else of the
        first live host, which pulls it: it is likely to run a replica anyway)."""
        live = [n for n in nodes if n.host_id in infos]
        if not live:
            raise ClusterError("no mvm host answered")
        node = next((n for n in live if template in infos[n.host_id]["templates"]), live[0])
        d = self._call(node, "prepare", template, timeout=engine.START_TIMEOUT)
        return int(d["cpus"]), int(d["mem_mib"])

    def _placement_hosts(self, nodes: list[engine.Node],
                         infos: dict[str, dict[str, Any]]) -> list[Host]:  # fmt: skip
        with self._lock:
            pending = [v for v in self._vms.values() if v.state == "starting"]
        hosts = []
        for n in nodes:
            info = infos.get(n.host_id)
            if info is None:
                continue
            counts: dict[str, int] = {}
            for v in info["vms"]:
                if v["template"]:
                    counts[v["template"]] = counts.get(v["template"], 0) + 1
            mem, cpu = int(info["used_mem_mib"]), int(info["used_vcpus"])
            listed = {v["name"] for v in info["vms"]}
            for p in pending:  # being started by another call: not on the host's list yet
                if p.host == n.host_id and p.name not in listed:
                    g = self._groups.get(p.group or "")
                    mem += g.mem_mib if g else 0
                    cpu += g.cpus if g else 0
                    counts[p.template] = counts.get(p.template, 0) + 1
            hosts.append(Host(n.host_id, int(info["mem_mib"]), int(info["vcpus"]),
                              str(info["accel"]), frozenset(info["templates"]), mem, cpu,
                              tuple(sorted(counts.items()))))  # fmt: skip
        return hosts

    def _start(self, group: Group, chosen: list[str],
               secrets: Sealed | None) -> list[Placed]:  # fmt: skip
        nodes = {n.host_id: n for n in self._nodes() if n.alive}
        placed: list[Placed] = []
        with self._lock:
            for hid in chosen:
                self._serial += 1
                name = vm_name(group.template, self._serial)
                while name in self._vms:
                    self._serial += 1
                    name = vm_name(group.template, self._serial)
                p = Placed(name, hid, group.template, group.id)
                self._vms[name] = p
                placed.append(p)
        refs = []
        for p in placed:
            node = nodes.get(p.host)  # placed a moment ago; it may have left since
            refs.append(None if node is None else self._worker(node).start.remote(
                p.name, group.template, group.cpus, group.mem_mib, group.ports, secrets,
                group.network_preset, group.network_allow))  # fmt: skip
        errors: list[str] = []
        for p, ref in zip(placed, refs, strict=True):
            try:
                if ref is None:
                    raise ClusterError(f"host {p.host} left the cluster")
                info = unwrap(engine.get(self._ray, ref, engine.START_TIMEOUT, f"host {p.host}"),
                              f"host {p.host}")  # fmt: skip
                with self._lock:
                    p.state, p.ports, p.since = str(info["state"]), list(info["ports"]), time.time()
            except MvmError as exc:
                errors.append(exc.message)
                with self._lock:
                    p.state = "failed"
        if errors:
            self._stop_all([p for p in placed if p.state != "failed"])
            with self._lock:
                for p in placed:
                    self._vms.pop(p.name, None)
            raise ClusterError(
                f"starting {group.template}: {errors[0]}"
                + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
            )
        return placed

    def _stop_all(self, vms: Sequence[Placed]) -> list[str]:
        """Stop ``vms`` on their hosts in parallel; the names a live host did *not* stop
        (no answer, or its ``down`` failed).  A VM of a dead host is gone with it."""
        nodes = {n.host_id: n for n in self._nodes() if n.alive}
        refs = [(p, self._worker(nodes[p.host]).stop.remote(p.name))
                for p in vms if p.host in nodes]  # fmt: skip
        failed = []
        for p, ref in refs:
            try:
                got = engine.get(self._ray, ref, engine.CALL_TIMEOUT, f"host {p.host}")
                unwrap(got, f"host {p.host}")
            except MvmError as exc:
                failed.append(p.name)
                self._event(f"stopping {p.name}: {exc.message}")
        return failed

    # -- listing and removing --

    def ls(self) -> list[dict[str, Any]]:
        """The cluster's VMs with where they run; states refreshed from the hosts."""
        nodes = self._nodes()
        infos = self._infos(nodes)
        self._refresh(nodes, infos)
        with self._lock:
            return [asdict(p) for p in sorted(self._vms.values(), key=lambda p: p.name)]

    def _refresh(self, nodes: list[engine.Node], infos: dict[str, dict[str, Any]]) -> None:
        alive = {n.host_id for n in nodes if n.alive}
        now = time.time()
        with self._lock:
            for hid, info in infos.items():
                for v in info["vms"]:
                    p = self._vms.get(v["name"])
                    if p is None and v["cluster"] and not self._adopted and v["template"]:
                        # a controller that restarted finds the cluster's VMs again
                        p = Placed(v["name"], hid, v["template"], None, v["state"], v["ports"])
                        self._vms[p.name] = p
                    elif p is not None and p.host == hid and p.state != "starting":
                        p.state, p.ports = str(v["state"]), list(v["ports"])
            self._adopted = True
            for p in self._vms.values():
                if p.host not in alive and p.state not in ("lost", "failed"):
                    p.state, p.since = "lost", now
                    self._event(f"{p.name} lost: host {p.host} left the cluster")
                elif (p.host in infos and p.state not in ("starting", "lost")
                      and p.name not in {v["name"] for v in infos[p.host]["vms"]}):  # fmt: skip
                    p.state = "gone"

    def down(self, name: str | None = None, template: str | None = None) -> list[str]:
        """Stop and forget VM ``name``, or every VM of ``template`` (and its groups)."""
        with self._lock:
            if name is not None:
                p = self._vms.get(name)
                if p is None:
                    raise NotFoundError(f"no cluster VM named {name!r}",
                                        hint="`mvmctl cluster ls` lists them")  # fmt: skip
                vms = [p]
                g = self._groups.get(p.group or "")
                if g is not None:  # one replica fewer: it is not replaced
                    g.replicas -= 1
                    if g.replicas <= 0:
                        self._groups.pop(g.id, None)
                        self._secrets.pop(g.id, None)
            else:
                vms = [p for p in self._vms.values() if p.template == template]
                for gid in [g.id for g in self._groups.values() if g.template == template]:
                    self._groups.pop(gid, None)
                    self._secrets.pop(gid, None)
                if not vms:
                    raise NotFoundError(f"no cluster VMs of template {template!r}")
        failed = set(self._stop_all([p for p in vms if p.state != "lost"]))
        with self._lock:
            for p in vms:
                if p.name not in failed:  # one its host did not stop stays listed
                    self._vms.pop(p.name, None)
        if failed:
            raise ClusterError(f"could not stop {', '.join(sorted(failed))} (still listed)",
                               hint="try `mvmctl cluster down` again")  # fmt: skip
        return sorted(p.name for p in vms)

    def exec(self, name: str, argv: list[str], env: dict[str, str] | None, cwd: str | None,
             input: bytes | None, timeout: float) -> tuple[int, bytes, bytes, int]:  # fmt: skip
        """Run a command in VM ``name`` through the worker on its host."""
        with self._lock:
            p = self._vms.get(name)
        if p is None:
            raise NotFoundError(f"no cluster VM named {name!r}")
        node = next((n for n in self._nodes() if n.host_id == p.host and n.alive), None)
        if node is None:
            raise ClusterError(f"{name} is lost: host {p.host} left the cluster")
        out: tuple[int, bytes, bytes, int] = self._call(
            node, "exec", name, argv, env, cwd, input, timeout, timeout=timeout + 30
        )
        return out

    def freeze(self) -> None:
        """Stop reconciling (``cluster stop`` is removing everything)."""
        self._frozen = True

    def events(self) -> list[str]:
        with self._lock:
            return list(self._events[-50:])

    def _event(self, text: str) -> None:
        with self._lock:
            self._events.append(f"{time.strftime('%H:%M:%S')} {text}")
            del self._events[:-200]

    # -- the reconcile loop --

    def _loop(self) -> None:
        while True:
            time.sleep(RECONCILE_PERIOD)
            try:
                self.reconcile()
            except Exception as exc:  # the loop must survive anything; say what
                self._event(f"reconcile: {type(exc).__name__}: {exc}")

    def reconcile(self) -> None:
        """Mark VMs of dead hosts lost; bring every group back to its replica count."""
        if self._frozen:
            return
        nodes = self._nodes()
        with self._lock:
            on_dead = any(
                p.host not in {n.host_id for n in nodes if n.alive}
                and p.state not in ("lost", "failed")
                for p in self._vms.values()
            )
            needy = [g for g in self._groups.values() if not g.starting
                     and time.monotonic() >= g.retry_at and self._missing(g) > 0]  # fmt: skip
        if not on_dead and not needy:
            return
        live = [n for n in nodes if n.alive]
        infos = self._infos(live)
        self._refresh(nodes, infos)
        for g in self._needy():
            self._replace(g, live, infos)

    def _needy(self) -> list[Group]:
        now = time.monotonic()
        with self._lock:
            return [g for g in self._groups.values()
                    if not g.starting and now >= g.retry_at and self._missing(g) > 0]  # fmt: skip

    def _missing(self, g: Group) -> int:
        have = sum(1 for p in self._vms.values()
                   if p.group == g.id and p.state not in ("lost", "failed", "gone"))  # fmt: skip
        return g.replicas - have

    def _replace(self, g: Group, live: list[engine.Node], infos: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            missing = self._missing(g)
            if missing <= 0 or g.starting:
                return
            g.starting = True
            secrets = self._secrets.get(g.id)
        try:
            with self._lock:
                gone = ("lost", "failed", "gone")
                have = [p.host for p in self._vms.values()
                        if p.group == g.id and p.state not in gone]  # fmt: skip
            # a fixed host port is taken where a replica runs: only the other hosts
            fixed = any(not ZERO_PORT_RE.fullmatch(p) for p in g.ports)
            req = Request(g.template, g.mem_mib, g.cpus, replicas=missing, spread=g.spread,
                          accel=g.accel, exclude=frozenset(have if fixed else ()))  # fmt: skip
            chosen = place(self._placement_hosts(live, infos), req)
            clash = fixed_port_clash(g.ports, chosen, have)
            if clash is not None:
                raise clash
            started = self._start(g, chosen, secrets)
            self._event(f"{g.template}: replaced {len(started)} replica(s) on "
                        f"{', '.join(sorted({p.host for p in started}))}")  # fmt: skip
        except MvmError as exc:
            self._event(f"{g.template}: cannot replace {missing} replica(s): {exc.message}")
            g.retry_at = time.monotonic() + RETRY_AFTER
        finally:
            with self._lock:
                g.starting = False
