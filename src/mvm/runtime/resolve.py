"""Settings resolved once: (project | template | image) + caller overrides →
one :class:`ResolvedRun` that remembers where each value came from.

The CLI, the Python API and ``up --template`` all come through
:func:`resolve`, so mvm.toml's ``ports``, ``network`` and ``[credentials]``
and a template's cpus, memory and data disk apply the same way everywhere.
Precedence for every setting: CLI/API > template settings > mvm.toml >
default; ``mvmctl status --json`` shows the provenance (``settings``).

What mvm.toml says about *running* (not baked into the image) reaches
the resolver as :class:`RuntimeDefaults`: from the project itself, or for a
template from what its revision recorded at build time.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvm.backends.spec import PortForward
from mvm.config.schema import MACHINES, VarCredentialSpec
from mvm.config.vars_schema import FILE_RE, GEN_RE
from mvm.drives import DriveFile, VolumeSpec, parse_volume
from mvm.errors import ConfigError, CredentialError, NetworkError
from mvm.network import bindings as bindings_mod
from mvm.network import policy as policy_mod
from mvm.network.plan import NetworkPlan
from mvm.runtime.config import RunConfig, parse_port
from mvm.secrets import credentials as creds_mod
from mvm.secrets.credentials import Credential

if TYPE_CHECKING:
    from mvm.config.schema import GuestSpec
    from mvm.image.builder import Image
    from mvm.image.meta import ImageMeta

MiB = 1 << 20
DATA_DISK_PATH = "/data"  # where a template's --data-disk is mounted
DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MIB = 256


@dataclass(frozen=True)
class CredentialDecl:
    """A credential declared in mvm.toml: read from ``file`` at start time."""

    name: str
    file: Path


@dataclass(frozen=True)
class NetworkDecl:
    """mvm.toml's ``[network]`` table and ``[secrets.KEY]`` tables (values read at start)."""

    preset: str | None = None
    allow: tuple[str, ...] = ()
    allow_cidr: tuple[str, ...] = ()
    add_hosts: tuple[str, ...] = ()
    secrets: tuple[tuple[str, dict[str, Any]], ...] = ()
    base: Path | None = None  # where relative secret files are

    def to_json(self) -> dict[str, Any]:
        return {"preset": self.preset, "allow": list(self.allow),
                "allow_cidr": list(self.allow_cidr), "add_hosts": list(self.add_hosts)}  # fmt: skip

    @classmethod
    def from_spec(cls, spec: GuestSpec) -> NetworkDecl:
        t = spec.network_table
        secrets = tuple((s.key, s.table()) for s in spec.secrets)
        if t is None:
            return cls(secrets=secrets)
        return cls(t.preset, t.allow, t.allow_cidr, t.add_host, secrets)

    @classmethod
    def from_json(cls, raw: Any) -> NetworkDecl:
        """What a template revision recorded (secrets are never recorded: a template
        built elsewhere gets its bindings from the caller)."""
        if not isinstance(raw, dict):
            return cls()

        def strs(k: str) -> tuple[str, ...]:
            v = raw.get(k)
            return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()

        preset = raw.get("preset") if isinstance(raw.get("preset"), str) else None
        return cls(preset, strs("allow"), strs("allow_cidr"), strs("add_hosts"))


@dataclass(frozen=True)
class RuntimeDefaults:
    """What the project (or a template) says about running its image."""

    origin: str  # "mvm.toml" | "template"
    vcpus: int | None = None
    memory_mib: int | None = None
    ports: tuple[str, ...] = ()
    network: bool | None = None
    machine: str | None = None
    hypervisor: str | None = None  # set only when mvm.toml names one explicitly
    credentials: tuple[CredentialDecl, ...] = ()
    data_disk_mib: int | None = None
    template: str | None = None  # set for templates: its explicit settings win over mvm.toml
    template_vcpus: int | None = None
    template_memory_mib: int | None = None
    # declared by a template this host did not build: the caller must give the values
    required_credentials: tuple[str, ...] = ()
    # [credentials] KEY = { var = "GEN/FILE" }: read from the VM's var store at start
    var_credentials: tuple[VarCredentialSpec, ...] = ()
    net: NetworkDecl = field(default_factory=NetworkDecl)

    @classmethod
    def from_spec(cls, spec: GuestSpec) -> RuntimeDefaults:
        return cls(
            origin="mvm.toml", vcpus=spec.vcpus, memory_mib=spec.memory_mib,
            ports=tuple(spec.ports), network=spec.network, machine=spec.machine,
            hypervisor=spec.hypervisor if "hypervisor" in spec.explicit else None,
            credentials=tuple(CredentialDecl(c.name, c.file) for c in spec.credentials),
            var_credentials=tuple(spec.var_credentials),
            net=NetworkDecl.from_spec(spec),
        )  # fmt: skip

    @classmethod
    def from_meta(cls, meta: ImageMeta) -> RuntimeDefaults:
        """The image's recorded defaults (``defaults``, and ``runtime`` when present:
        what a template's mvm.toml said about running, recorded at build time)."""
        raw = meta.extra.get("runtime")
        runtime: dict[str, Any] = raw if isinstance(raw, dict) else {}
        creds = tuple(
            CredentialDecl(str(c["name"]), Path(str(c["file"])))
            for c in runtime.get("credentials", [])
            if isinstance(c, dict) and isinstance(c.get("name"), str) and "file" in c
        )
        var_creds = []
        for c in runtime.get("var_credentials", []):
            if not isinstance(c, dict) or not isinstance(c.get("var"), str):
                continue
            name, (gen, _, fname) = str(c.get("name")), str(c["var"]).partition("/")
            if creds_mod.valid_name(name) and GEN_RE.fullmatch(gen) and FILE_RE.fullmatch(fname):
                var_creds.append(VarCredentialSpec(name, gen, fname))
        return cls(
            origin="mvm.toml",
            var_credentials=tuple(var_creds),
            vcpus=meta.defaults.vcpus,
            memory_mib=meta.defaults.memory_mib,
            ports=tuple(p for p in runtime.get("ports", []) if isinstance(p, str)),
            network=runtime.get("network") if isinstance(runtime.get("network"), bool) else None,
            machine=runtime.get("machine") if runtime.get("machine") in MACHINES else None,
            credentials=creds,
            net=NetworkDecl.from_json(runtime.get("network_table")),
        )


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str  # "cli" | "api" | "template" | "mvm.toml" | "default" | "image" | "host"


@dataclass(frozen=True)
class ResolvedRun:
    """Everything one start needs, validated, with provenance."""

    image: Image
    source: str  # project path, "template:NAME" or "python-api"
    revision: str
    name: str
    name_explicit: bool
    vcpus: Setting
    memory_mib: Setting
    ports: tuple[PortForward, ...]
    egress: Setting
    network: NetworkPlan = field(repr=False)
    volumes: tuple[VolumeSpec, ...]
    config_files: tuple[DriveFile, ...]
    secret_files: tuple[DriveFile, ...]
    credentials: tuple[Credential, ...] = field(repr=False)
    attached: bool
    hypervisor: Setting
    trace: bool
    machine: Setting = Setting("microvm", "default")
    sources: dict[str, str] = field(default_factory=dict)
    hypervisor_reason: str = ""  # why this hypervisor (the automatic choice says why)

    def provenance(self) -> dict[str, str]:
        """setting -> where its value came from (stored in the record, shown by status)."""
        return dict(self.sources)


def resolve(
    image: Image,
    run: RunConfig,
    defaults: RuntimeDefaults,
    *,
    source: str,
    revision: str = "",
    who: str = "cli",
) -> ResolvedRun:
    """Merge ``run`` (the caller: ``who`` is "cli" or "api") over ``defaults`` over
    the built-in defaults; check every value (bad input fails here, before
    anything is created)."""
    meta = image.meta
    sources: dict[str, str] = {}

    def pick(key: str, *candidates: tuple[Any, str]) -> Setting:
        for value, origin in candidates:
            if value is not None:
                sources[key] = origin
                return Setting(value, origin)
        raise AssertionError(key)

    name_given = run.name is not None
    name = pick("name", (run.name, who), (defaults.template, "template"),
                (meta.name, "image"))  # fmt: skip
    vcpus = pick("vcpus", (run.cpus, who), (defaults.template_vcpus, "template"),
                 (defaults.vcpus, defaults.origin), (DEFAULT_VCPUS, "default"))  # fmt: skip
    memory = pick("memory_mib", (run.memory_mib, who),
                  (defaults.template_memory_mib, "template"),
                  (defaults.memory_mib, defaults.origin),
                  (DEFAULT_MEMORY_MIB, "default"))  # fmt: skip
    for key, setting, lo, hi in (("vcpus", vcpus, 1, 64), ("memory_mib", memory, 64, 1 << 20)):
        v = setting.value
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"invalid {key} {v!r} ({setting.source}): must be {lo}..{hi}")
    net = resolve_network(run, defaults, who, sources)
    egress = Setting(net.policy.egress or bool(net.bindings), sources["network"])
    # an image's recorded "qemu" is mvm.toml's default as often as a choice: only an
    # explicit hypervisor (CLI/API, mvm.toml's key, another recorded one) beats "auto"
    recorded = meta.backend if meta.backend != "qemu" else None
    hypervisor = pick("hypervisor", (run.hypervisor, who),
                      (defaults.hypervisor, defaults.origin), (recorded, "image"),
                      ("auto", "default"))  # fmt: skip
    machine = pick("machine", (run.machine, who), (defaults.machine, defaults.origin),
                   ("microvm", "default"))  # fmt: skip
    if machine.value not in MACHINES:
        raise ConfigError(f"invalid machine {machine.value!r} ({machine.source}): "
                          f"allowed: {', '.join(MACHINES)}")  # fmt: skip

    # a guest port the caller maps itself replaces mvm.toml's forward of it (so several
    # VMs of one template can each publish it on their own host port)
    given = [parse_port(p) for p in run.ports]
    mapped = {(p.guest, p.proto) for p in given}
    ports = _dedupe(given + [p for p in map(parse_port, defaults.ports)
                             if (p.guest, p.proto) not in mapped])  # fmt: skip
    hypervisor_reason = f"{hypervisor.value} ({hypervisor.source})"
    if hypervisor.value == "auto":
        from mvm.backends.select import auto

        chosen, hypervisor_reason = auto(lambda: image.kernel, needs_user_net=bool(ports) or
                                         bool(egress.value))  # fmt: skip
        hypervisor = Setting(chosen, "auto")
        sources["hypervisor"] = "auto"
    if run.ports or defaults.ports:
        sources["ports"] = "+".join(
            o for o, present in ((who, run.ports), (defaults.origin, defaults.ports)) if present
        )

    volumes = [v if isinstance(v, VolumeSpec) else parse_volume(v) for v in run.volumes]
    if run.volumes:
        sources["volumes"] = who
    if defaults.data_disk_mib and not any(v.guest == DATA_DISK_PATH for v in volumes):
        volumes.append(VolumeSpec(None, DATA_DISK_PATH, defaults.data_disk_mib * MiB))
        sources["volumes"] = "+".join(filter(None, (sources.get("volumes"), "template")))

    declared = run.project_credentials
    if declared is None:
        declared = [creds_mod.read_file(c.name, c.file, defaults.origin)
                    for c in defaults.credentials]  # fmt: skip
    var_creds: list[Credential] = []
    if defaults.var_credentials:
        from mvm.secrets.vars import credentials_for

        # missing vars fail here, before anything is created or booted; a credential the
        # caller gives under the same name wins, so its var is not needed
        given_names = {c.name for c in run.credentials}
        wanted = [v for v in defaults.var_credentials if v.name not in given_names]
        var_creds = credentials_for(str(name.value), wanted)
    host = creds_mod.host_credentials() if run.forward_host_credentials else []
    creds = creds_mod.resolve(run.credentials, declared, var_creds, host)
    missing = sorted(set(defaults.required_credentials) - {c.name for c in creds})
    if missing:
        raise CredentialError(
            f"the template declares credential{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}; give {'them' if len(missing) > 1 else 'it'} with "
            f"--credential NAME@FILE",
            hint="a template built elsewhere never reads files of this host on its own",
        )
    if creds:
        origins = [o for o, group in ((who, run.credentials), (defaults.origin, declared),
                                      ("var", var_creds), ("host", host)) if group]  # fmt: skip
        sources["credentials"] = "+".join(origins)

    return ResolvedRun(
        image=image, source=source, revision=revision, name=str(name.value),
        name_explicit=name_given, vcpus=vcpus, memory_mib=memory, ports=tuple(ports),
        egress=egress, network=net, volumes=tuple(volumes), config_files=tuple(run.config_files),
        secret_files=tuple(run.secret_files), credentials=tuple(creds), attached=run.attached,
        hypervisor=hypervisor, machine=machine, trace=bool(os.environ.get("MVM_TRACE_BOOT")),
        sources=sources, hypervisor_reason=hypervisor_reason,
    )  # fmt: skip


def _dedupe(ports: list[PortForward]) -> list[PortForward]:
    """The same forward given twice (CLI and mvm.toml) is one; one host port to two
    guest ports is an error."""
    seen: dict[tuple[str, int, str], PortForward] = {}
    for p in ports:
        key = (p.address, p.host, p.proto)
        if key in seen and seen[key].guest != p.guest:
            raise ConfigError(
                f"host port {p.address}:{p.host}/{p.proto} is forwarded twice "
                f"(to guest ports {seen[key].guest} and {p.guest})"
            )
        seen[key] = p
    return list(seen.values())


SECRET_MODES = ("proxy", "drive")


def resolve_network(
    run: RunConfig, defaults: RuntimeDefaults, who: str, sources: dict[str, str]
) -> NetworkPlan:
    """Preset, rules, mappings and secret bindings: CLI/API over mvm.toml over ``none``.
    ``--net`` (``network=True``) is ``open``; rules and mappings add up."""
    decl = defaults.net
    as_preset = {True: "open", False: "none", None: None}
    if (
        run.network_preset is not None
        and run.network is not None
        and (as_preset[run.network] != run.network_preset)
    ):
        raise NetworkError(f"--{'net' if run.network else 'no-net'} contradicts "
                           f"--network-preset {run.network_preset}")  # fmt: skip
    candidates = ((run.network_preset, who), (as_preset[run.network], who),
                  (decl.preset, defaults.origin), (as_preset[defaults.network], defaults.origin),
                  ("none", "default"))  # fmt: skip
    preset, origin = next((v, o) for v, o in candidates if v is not None)
    sources["network"] = origin
    policy = policy_mod.build(
        preset,
        (*run.network_allow, *decl.allow),
        (*run.network_allow_cidr, *decl.allow_cidr),
        (*run.add_hosts, *decl.add_hosts),
    )
    if run.network_allow or decl.allow or run.network_allow_cidr or decl.allow_cidr:
        sources["network_allow"] = "+".join(
            o for o, present in ((who, run.network_allow or run.network_allow_cidr),
                                 (defaults.origin, decl.allow or decl.allow_cidr)) if present
        )  # fmt: skip
    env = dict(os.environ)
    binds = [bindings_mod.parse(s, env, who) for s in run.secrets]
    cli_keys = {b.key for b in binds}
    base = decl.base or Path.cwd()
    binds += [bindings_mod.from_toml(k, t, env, base) for k, t in decl.secrets
              if k not in cli_keys]  # fmt: skip
    bindings_mod.check_unique(binds)
    for b in binds:
        for h in b.hosts:
            if not (policy.check(h, 443).allowed or policy.check(h, 80).allowed
                    or policy.name_allowed(h)):  # fmt: skip
                raise NetworkError(
                    f"secret {b.key} is bound to {h}, which network preset {preset} does not allow",
                    hint=f"add --network-allow {h} (or a preset that allows it)",
                )
    if binds:
        sources["secrets"] = "+".join(dict.fromkeys(b.origin for b in binds))
    mode = run.secret_mode or "proxy"
    if mode not in SECRET_MODES:
        raise NetworkError(f"invalid --secret-mode {mode!r}: use proxy or drive")
    upstream_ca = None
    if run.add_ca:
        upstream_ca = Path(run.add_ca).expanduser().resolve()
        try:
            head = upstream_ca.read_bytes()[: 1 << 20]
        except OSError as exc:
            raise NetworkError(f"--add-ca {run.add_ca}: {exc.strerror or exc}") from None
        if b"-----BEGIN CERTIFICATE-----" not in head:
            raise NetworkError(f"--add-ca {run.add_ca}: not a PEM certificate file")
    if mode == "drive":  # the seed's placeholder: the value itself is on the secrets drive
        binds = [dataclasses.replace(b, placeholder=f"mvm-managed:{b.key}") for b in binds]
    return NetworkPlan(policy, tuple(binds), upstream_ca, mode)
