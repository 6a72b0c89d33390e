"""Egress policy: which host names (and ports) a guest may reach.

A :class:`Policy` is pure data (it travels to the proxy as JSON) built from a
preset (``none | dev | agent | open``), ``--network-allow HOST[:PORT]`` rules
(``*.example.com`` matches every subdomain, never the apex), IP ranges from
``--network-allow-cidr`` and ``--add-host NAME:IP`` mappings.

Names are the unit of policy: the proxy decides on the ``Host`` header, the
CONNECT target or the TLS SNI, then resolves the name itself and refuses
addresses that are not globally routable (private, loopback, link-local,
CGNAT, the cloud metadata address) unless the name was *explicitly* allowed
(an exact rule, not a wildcard or a preset) or the address is inside an
allowed CIDR.  That is how tests reach a server on the host's loopback:
``--add-host api.test:127.0.0.1 --network-allow api.test:8443``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from mvm.errors import NetworkError

Preset = Literal["none", "dev", "agent", "open"]
PRESETS: tuple[str, ...] = ("none", "dev", "agent", "open")
WEB_PORTS = (80, 443)

# package registries and code hosting (documented in docs/network.md)
DEV_HOSTS = (
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "deb.debian.org",
    "security.debian.org",
    "*.debian.org",
    "crates.io",
    "static.crates.io",
    "index.crates.io",
    "proxy.golang.org",
    "sum.golang.org",
    "rubygems.org",
    "github.com",
    "*.github.com",
    "*.githubusercontent.com",
    "codeload.github.com",
    "gitlab.com",
    "bitbucket.org",
)
# dev plus model APIs
AGENT_HOSTS = (
    *DEV_HOSTS,
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.together.xyz",
    "openrouter.ai",
    "huggingface.co",
    "*.huggingface.co",
    "*.hf.co",
)
PRESET_HOSTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "dev": DEV_HOSTS,
    "agent": AGENT_HOSTS,
    "open": (),
}

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*")
METADATA_ADDRS = frozenset({"169.254.169.254", "fd00:ec2::254", "100.100.100.200"})


def normalise_host(host: str) -> str:
    """Lower-case, no trailing dot, IDNA-encoded; raises on anything else."""
    h = host.strip().rstrip(".").lower()
    try:
        h = h.encode("idna").decode("ascii") if not h.isascii() else h
    except UnicodeError:
        raise NetworkError(f"invalid host name {host!r}") from None
    if len(h) > 253 or not _NAME_RE.fullmatch(h):
        raise NetworkError(f"invalid host name {host!r}")
    return h


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return False


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise NetworkError(f"invalid port {text!r} in {what}: ports are 1-65535")
    return int(text)


@dataclass(frozen=True)
class Rule:
    """One allow rule: an exact name or ``*.suffix``, and a port (None: 80 and 443)."""

    pattern: str
    port: int | None = None
    origin: str = "cli"  # "cli" | "mvm.toml" | "preset" | "binding"

    @property
    def wildcard(self) -> bool:
        return self.pattern.startswith("*.")

    def matches(self, host: str, port: int) -> bool:
        if (port not in WEB_PORTS) if self.port is None else (port != self.port):
            return False
        if self.wildcard:
            return host.endswith(self.pattern[1:])
        return host == self.pattern


def parse_allow(text: str, origin: str = "cli") -> Rule:
    """``HOST[:PORT]`` or ``*.DOMAIN[:PORT]``; IP addresses belong in --network-allow-cidr."""
    raw = text.strip()
    host, sep, port_s = raw.rpartition(":") if raw.count(":") == 1 else (raw, "", "")
    if not sep:
        host = raw
    if is_ip(host) or "/" in host or raw.count(":") > 1:
        raise NetworkError(
            f"--network-allow {text!r}: IP addresses and ranges are not host names",
            hint="use --network-allow-cidr for IP ranges",
        )
    port = _port(port_s, f"--network-allow {text!r}") if sep else None
    if "*" in host:
        rest = host[2:]
        if not host.startswith("*.") or "*" in rest or "." not in rest:
            raise NetworkError(
                f"invalid wildcard {text!r}: use *.DOMAIN with at least two labels "
                "(e.g. *.example.com)"
            )
        return Rule("*." + normalise_host(rest), port, origin)
    return Rule(normalise_host(host), port, origin)


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise NetworkError(f"invalid --network-allow-cidr {text!r}: use ADDR/PREFIX") from None


def parse_add_host(text: str) -> tuple[str, str]:
    """Docker's ``NAME:IP`` (IPv6 may be bracketed)."""
    name, sep, ip = text.partition(":")
    ip = ip.strip().strip("[]")
    if not sep or not name or not is_ip(ip):
        raise NetworkError(f"invalid --add-host {text!r}: use NAME:IP")
    return normalise_host(name), str(ipaddress.ip_address(ip))


def address_class(ip: str) -> str | None:
    """Why an address is refused by default (None: globally routable)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if str(addr) in METADATA_ADDRS:
        return "metadata"
    for what, test in (
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("unspecified", addr.is_unspecified),
        ("multicast", addr.is_multicast),
        ("private", addr.is_private),
        ("reserved", addr.is_reserved),
    ):
        if test:
            return what
    if addr in ipaddress.ip_network("100.64.0.0/10"):
        return "private"
    return None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    explicit: bool = False  # an exact rule matched: private addresses are fine


@dataclass(frozen=True)
class Policy:
    """What one VM may reach (pure data; the proxy enforces it)."""

    preset: str = "none"
    rules: tuple[Rule, ...] = ()
    cidrs: tuple[str, ...] = ()
    hosts: dict[str, str] = field(default_factory=dict)  # --add-host

    @property
    def open(self) -> bool:
        return self.preset == "open"

    @property
    def egress(self) -> bool:
        """Whether anything at all may leave the guest."""
        return self.open or bool(self.all_rules()) or bool(self.cidrs)

    def all_rules(self) -> tuple[Rule, ...]:
        preset = tuple(Rule(h, None, "preset") for h in PRESET_HOSTS.get(self.preset, ()))
        return (*self.rules, *preset)

    def check(self, host: str, port: int) -> Decision:
        """May the guest reach ``host:port``?  (Address checks come after resolution.)"""
        if is_ip(host):
            ip = ipaddress.ip_address(host.strip("[]"))
            for c in self.cidrs:
                if ip in ipaddress.ip_network(c):
                    return Decision(True, f"cidr {c}", explicit=True)
            if self.open:
                return Decision(True, "preset open")
            return Decision(False, "IP address not in an allowed CIDR")
        try:
            name = normalise_host(host)
        except NetworkError:
            return Decision(False, "invalid host name")
        best: Rule | None = None
        for r in self.all_rules():
            if r.matches(name, port) and (best is None or (best.wildcard and not r.wildcard)):
                best = r
        if best is not None:
            explicit = not best.wildcard and best.origin != "preset"
            return Decision(True, f"{best.origin} {best.pattern}", explicit=explicit)
        if self.open:
            return Decision(True, "preset open")
        return Decision(False, f"not allowed by preset {self.preset}")

    def name_allowed(self, host: str) -> bool:
        """Whether any rule mentions ``host`` (on any port): what the DNS responder answers."""
        if self.open:
            return True
        try:
            name = normalise_host(host)
        except NetworkError:
            return False
        return any(
            (name.endswith(r.pattern[1:]) if r.wildcard else name == r.pattern)
            for r in self.all_rules()
        )

    def address_ok(self, ip: str, decision: Decision) -> str | None:
        """None if ``ip`` may be contacted after ``decision``; else why not."""
        klass = address_class(ip)
        if klass is None:
            return None
        addr = ipaddress.ip_address(ip)
        if any(addr in ipaddress.ip_network(c) for c in self.cidrs):
            return None
        if decision.explicit:
            return None
        return f"{klass} address {ip} (allow the exact name or its CIDR)"

    def to_json(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "rules": [
                {"pattern": r.pattern, "port": r.port, "origin": r.origin} for r in self.rules
            ],
            "cidrs": list(self.cidrs),
            "hosts": dict(self.hosts),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        return cls(
            preset=str(data["preset"]),
            rules=tuple(
                Rule(str(r["pattern"]), r["port"], str(r["origin"])) for r in data["rules"]
            ),
            cidrs=tuple(str(c) for c in data["cidrs"]),
            hosts={str(k): str(v) for k, v in data["hosts"].items()},
        )

    def describe(self) -> list[str]:
        """Human-readable rules (status, docs)."""
        out = [f"{r.pattern}{'' if r.port is None else f':{r.port}'}" for r in self.rules]
        return out + [f"cidr {c}" for c in self.cidrs]


def build(
    preset: str,
    allow: tuple[str, ...] = (),
    cidrs: tuple[str, ...] = (),
    add_hosts: tuple[str, ...] = (),
    origin: str = "cli",
) -> Policy:
    if preset not in PRESETS:
        raise NetworkError(f"invalid network preset {preset!r}: use one of {', '.join(PRESETS)}")
    rules = tuple(dict.fromkeys(parse_allow(a, origin) for a in allow))
    nets = tuple(dict.fromkeys(str(parse_cidr(c)) for c in cidrs))
    hosts: dict[str, str] = {}
    for h in add_hosts:
        name, ip = parse_add_host(h)
        if hosts.get(name, ip) != ip:
            raise NetworkError(f"--add-host {name} is mapped twice ({hosts[name]} and {ip})")
        hosts[name] = ip
    return Policy(preset, rules, nets, hosts)
