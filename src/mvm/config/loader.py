"""Read and validate ``mvm.toml``.

Every error names the file, the key and what is allowed, so a user can fix
the file without reading our code.  Unknown keys are errors: a typo must not
silently become a default.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from mvm.config.guestpaths import reserved, unsafe_name
from mvm.config.imageref import ImageSource, parse_image_ref
from mvm.config.schema import (
    DEFAULT_AGENT_UID,
    DEFAULT_APP_UID,
    HYPERVISORS,
    INITS,
    MACHINES,
    READY_TIMEOUT_DEFAULT,
    READY_TIMEOUT_MAX,
    RESTART_POLICIES,
    CopySpec,
    CredentialSpec,
    Entrypoint,
    FileSpec,
    GuestInit,
    GuestSpec,
    KernelSpec,
    NetworkTable,
    Project,
    Readiness,
    RestartPolicy,
    SecretSpec,
    Service,
    Uids,
    VarCredentialSpec,
    home_for,
)
from mvm.config.vars_schema import parse_generators
from mvm.errors import ConfigError
from mvm.paths import NAME_RE

MANIFEST = "mvm.toml"
TOP_KEYS = {
    "name", "vcpus", "memory_mib", "hypervisor", "dev", "entrypoint", "services", "uids",
    "files", "packages", "copy", "kernel", "credentials", "ports", "network", "secrets", "flake",
    "profile", "profiles", "image", "vars", "init", "machine",
}  # fmt: skip
PROFILE_KEYS = TOP_KEYS - {"name", "profiles", "profile", "flake"}
# \A...\Z, not ^...$: "$" also matches before a trailing newline, and these patterns
# are imported elsewhere, so they must be strict with .match as well as .fullmatch
DEB_RE = re.compile(r"\A[a-z0-9][a-z0-9+.-]+\Z")
CRED_RE = re.compile(r"\A[A-Za-z0-9_.@-]{1,255}\Z")
SERVICE_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
PORT_RE = re.compile(r"\A(?:(\d{1,5}):)?(\d{1,5})(?:/(tcp|udp))?\Z")
MANIFEST_MAX = 4 << 20  # bytes; an mvm.toml is text written by people


class _Ctx:
    """Error helper bound to one manifest file."""

    def __init__(self, file: Path):
        self.file = file

    def err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.file}: {key}: {msg}")

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.err(key, f"must be a table, got {_tname(value)}")
        return cast(dict[str, Any], value)

    def keys(self, table: Mapping[str, Any], key: str, allowed: set[str]) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            where = f"{key}." if key else ""
            raise self.err(
                f"{where}{unknown[0]}", f"unknown key; allowed: {', '.join(sorted(allowed))}"
            )

    def int_in(self, value: Any, key: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(key, f"must be an integer {lo}..{hi}, got {_tname(value)}")
        if not lo <= value <= hi:
            raise self.err(key, f"must be between {lo} and {hi}, got {value}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.err(key, f"must be a non-empty string, got {_tname(value)}")
        return value

    def argv(self, value: Any, key: str) -> tuple[str, ...]:
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise self.err(key, 'must be a non-empty list of strings, e.g. ["/bin/app", "--flag"]')
        return tuple(value)

    def guest_path(self, value: Any, key: str) -> str:
        path = self.string(value, key)
        if not path.startswith("/") or ".." in path.split("/") or "\0" in path:
            raise self.err(key, f"must be an absolute guest path without '..', got {path!r}")
        if unsafe_name(path):
            raise self.err(key, f"{path!r}: quotes, backslashes, control characters and "
                           "paths over 4095 bytes are not allowed in images")  # fmt: skip
        return posixpath.normpath(path)

    def project_path(self, value: Any, key: str, root: Path) -> Path:
        """A path relative to the project directory that stays inside it once every
        symlink is resolved (a project must not reach the host's other files)."""
        raw = self.string(value, key)
        if raw.startswith("/") or "\0" in raw:
            raise self.err(key, f"must be a path relative to the project directory, got {raw!r}")
        path = _resolved(self, root / raw, key)
        if not path.is_relative_to(root):
            raise self.err(key, f"{raw!r} resolves to {str(path)!r}, outside the project "
                           f"directory {str(root)!r}")  # fmt: skip
        return path


def _tname(value: Any) -> str:
    return {
        bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)  # fmt: skip


def find_manifest(path: str | Path | None) -> Path:
    """Resolve a project path (dir or file, default cwd) to its mvm.toml."""
    p = Path(path) if path is not None else Path.cwd()
    if p.is_dir():
        p = p / MANIFEST
    if not p.is_file():
        raise ConfigError(f"{p}: no such file (expected a project directory containing {MANIFEST})")
    return p.resolve()


def load_project(path: str | Path | None = None, profile: str | None = None) -> Project:
    """Load and validate the project at ``path`` (a directory or an mvm.toml)."""
    manifest = find_manifest(path)
    try:
        with open(manifest, "rb") as f:
            data = f.read(MANIFEST_MAX + 1)
        if len(data) > MANIFEST_MAX:
            raise ConfigError(f"{manifest}: larger than {MANIFEST_MAX >> 20} MiB")
        raw = tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{manifest}: not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{manifest}: not valid TOML: nested too deeply") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{manifest}: cannot read: {exc}") from exc
    spec = parse_spec(raw, manifest, profile=profile)
    return Project(root=manifest.parent, manifest=manifest, spec=spec, profile=profile)


def image_name(src: ImageSource) -> str:
    """A VM/image name for ``--image REF`` without a project: the archive's, layout's
    or repository's base name in the characters names allow ("image" if none)."""
    if src.path is not None:
        base = src.path.name
        for suffix in (".tar", ".oci", ".docker"):
            base = base.removesuffix(suffix)
    else:
        base = (src.remote or "").split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    name = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")[:63].strip("-")
    return name if name and NAME_RE.fullmatch(name) else "image"


def image_project(ref: str, base: Path | None = None) -> Project:
    """The project ``mvmctl run --image REF`` / ``up --image REF`` builds: nothing but
    the image (its config gives the entrypoint, user, environment).  A local path is
    the user's own choice on the command line: resolved from ``base`` (the current
    directory), not confined to it."""
    root = (base or Path.cwd()).resolve()
    src = parse_image_ref(ref, root, confine=False, what="--image")
    spec = GuestSpec(
        name=image_name(src), entrypoint=Entrypoint("command", command=("/.mvm/bin/false",)),
        image=src, kernel=KernelSpec(),
    )  # fmt: skip
    return Project(root=root, manifest=root / MANIFEST, spec=spec)


def parse_spec(raw: Mapping[str, Any], manifest: Path, profile: str | None = None) -> GuestSpec:
    """Validate a parsed TOML document into a ``GuestSpec``.

    ``profile`` selects ``[profiles.NAME]``, whose keys override the top level.
    """
    ctx = _Ctx(manifest)
    ctx.keys(raw, "", TOP_KEYS)
    data = dict(raw)
    profiles = ctx.table(data.pop("profiles", {}), "profiles")
    profile = profile or data.pop("profile", None)
    data.pop("profile", None)
    # the seeds' mvm.toml points at its flake; here the project *is* the manifest's directory
    flake = data.pop("flake", ".")
    if flake != ".":
        raise ctx.err("flake", f'only flake = "." is supported (mvm builds the project in the '
                      f"directory of {MANIFEST}), got {flake!r}")  # fmt: skip
    if profile and profile != "default":
        if profile not in profiles:
            raise ctx.err(
                "profiles", f"no profile {profile!r}; defined: {sorted(profiles) or 'none'}"
            )
        over = ctx.table(profiles[profile], f"profiles.{profile}")
        ctx.keys(over, f"profiles.{profile}", PROFILE_KEYS)
        data.update(over)
    root = manifest.parent

    if "name" not in data:
        raise ctx.err("name", 'is required (e.g. name = "hello")')
    name = ctx.string(data["name"], "name")
    if not NAME_RE.fullmatch(name):
        raise ctx.err(
            "name", f"{name!r} is not allowed: use a-z, 0-9 and '-' (max 63), e.g. \"my-app\""
        )

    image = None
    if "image" in data:
        image = parse_image_ref(data["image"], root, confine=True, what=f"{manifest}: image")
    explicit: set[str] = {k for k in ("entrypoint", "dev", "hypervisor") if k in data}
    if isinstance(data.get("uids"), dict) and "entrypoint" in data["uids"]:
        explicit.add("uid")
    if "entrypoint" not in data and image is not None:
        # the image's Entrypoint + Cmd, filled in at build time (mvm.image.oci)
        data["entrypoint"] = {"command": ["/.mvm/bin/false"]}
    if "entrypoint" not in data:
        raise ctx.err("entrypoint", "is required: one of shell = \"/bin/sh\", command = [...], "
                      "or [entrypoint.services.NAME]")  # fmt: skip
    entrypoint = _entrypoint(ctx, data["entrypoint"])

    dev_default = entrypoint.kind == "shell"
    dev = data.get("dev", dev_default)
    if not isinstance(dev, bool):
        raise ctx.err("dev", f"must be true or false, got {_tname(dev)}")

    uids_raw = ctx.table(data.get("uids", {}), "uids")
    ctx.keys(uids_raw, "uids", {"agent", "entrypoint"})
    uids = Uids(
        agent=ctx.int_in(uids_raw.get("agent", DEFAULT_AGENT_UID), "uids.agent", 1, 65534),
        entrypoint=ctx.int_in(
            uids_raw.get("entrypoint", 0 if dev else DEFAULT_APP_UID), "uids.entrypoint", 0, 65534
        ),
    )
    if uids.agent == uids.entrypoint:
        raise ctx.err("uids", "agent and entrypoint must use different uids")

    hypervisor = ctx.string(data.get("hypervisor", "qemu"), "hypervisor")
    if hypervisor not in HYPERVISORS:
        raise ctx.err(
            "hypervisor", f"{hypervisor!r} is not supported; allowed: {', '.join(HYPERVISORS)}"
        )

    services_raw = ctx.table(data.get("services", {}), "services")
    services = tuple(_service(ctx, n, v, "services") for n, v in services_raw.items())
    if entrypoint.kind == "services":
        clash = {s.name for s in services} & {s.name for s in entrypoint.services}
        if clash:
            raise ctx.err("services", f"{sorted(clash)[0]!r} is also an entrypoint service")

    init = ctx.string(data.get("init", "busybox"), "init")
    if init not in INITS:
        raise ctx.err("init", f"{init!r} is not supported; allowed: {', '.join(INITS)}")
    machine = None
    if "machine" in data:
        machine = ctx.string(data["machine"], "machine")
        if machine not in MACHINES:
            raise ctx.err("machine", f"{machine!r} is not supported; allowed: "
                          f"{', '.join(MACHINES)}")  # fmt: skip
    if init != "systemd":
        for s in (*services, *entrypoint.services):
            if s.load_credentials:
                raise ctx.err(f"services.{s.name}.load_credentials",
                              'needs init = "systemd" (busybox guests give every service '
                              "$CREDENTIALS_DIRECTORY with all credentials)")  # fmt: skip

    # an image's home is known once its passwd is read: the builder checks it then
    sealed_home = None if dev or image is not None else home_for(uids.entrypoint)
    generators = parse_generators(ctx, data.get("vars", {}))
    creds, var_creds = _credentials(ctx, data.get("credentials", {}), root)
    declared = {(g.name, f.name) for g in generators for f in g.files}
    for vc in var_creds:
        if (vc.generator, vc.file) not in declared:
            raise ctx.err(f"credentials.{vc.name}.var", f"{vc.var!r} is not a file of any "
                          "[vars.generators.GEN] (files.NAME)")  # fmt: skip
    return GuestSpec(
        name=name,
        entrypoint=entrypoint,
        vcpus=ctx.int_in(data.get("vcpus", 1), "vcpus", 1, 64),
        memory_mib=ctx.int_in(data.get("memory_mib", 256), "memory_mib", 64, 1 << 20),
        hypervisor=hypervisor,
        dev=dev,
        services=services,
        uids=uids,
        files=_files(ctx, data.get("files", {}), sealed_home),
        packages=_packages(ctx, data.get("packages", [])),
        copy=_copies(ctx, data.get("copy", []), root, sealed_home),
        kernel=_kernel(ctx, data.get("kernel", "mvm"), root),
        credentials=creds,
        var_credentials=var_creds,
        generators=generators,
        ports=_ports(ctx, data.get("ports", [])),
        network=_network_flag(ctx, data.get("network", False)),
        network_table=_network(ctx, data.get("network")),
        secrets=_secrets(ctx, data.get("secrets", {}), root),
        image=image,
        explicit=frozenset(explicit),
        init=cast(GuestInit, init),
        machine=machine,
    )


def _network_flag(ctx: _Ctx, value: Any) -> bool:
    if isinstance(value, dict):
        return value.get("preset") == "open"
    return _bool(ctx, value, "network")


def _str_list(ctx: _Ctx, value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ctx.err(key, "must be a list of strings")
    return tuple(value)


def _network(ctx: _Ctx, value: Any) -> NetworkTable | None:
    """``network = true`` (the old form: preset open) or a ``[network]`` table."""
    if not isinstance(value, dict):
        return None
    ctx.keys(value, "network", {"preset", "allow", "allow_cidr", "add_host"})
    from mvm.errors import NetworkError
    from mvm.network import policy

    t = NetworkTable(
        preset=ctx.string(value["preset"], "network.preset") if "preset" in value else None,
        allow=_str_list(ctx, value.get("allow", []), "network.allow"),
        allow_cidr=_str_list(ctx, value.get("allow_cidr", []), "network.allow_cidr"),
        add_host=_str_list(ctx, value.get("add_host", []), "network.add_host"),
    )
    try:
        policy.build(t.preset or "none", t.allow, t.allow_cidr, t.add_host, origin="mvm.toml")
    except NetworkError as exc:
        raise ctx.err("network", exc.message) from None
    return t


def _secrets(ctx: _Ctx, value: Any, root: Path) -> tuple[SecretSpec, ...]:
    from mvm.errors import NetworkError
    from mvm.network import bindings

    out = []
    for key, body in ctx.table(value, "secrets").items():
        where = f"secrets.{key}"
        t = ctx.table(body, where)
        ctx.keys(t, where, {"host", "hosts", "header", "from_env", "file"})
        host = t.get("host", t.get("hosts"))
        hosts = (host,) if isinstance(host, str) else _str_list(ctx, host, f"{where}.host")
        if "file" in t and "from_env" in t:
            raise ctx.err(where, "use either from_env or file")
        file = None
        if "file" in t:
            file = _resolved(ctx, root / ctx.string(t["file"], f"{where}.file"), f"{where}.file")
        spec = SecretSpec(
            key, tuple(hosts),
            ctx.string(t["header"], f"{where}.header") if "header" in t else None,
            ctx.string(t["from_env"], f"{where}.from_env") if "from_env" in t else None, file,
        )  # fmt: skip
        try:  # syntax only; the value is read at start
            bindings.check_decl(key, spec.hosts, spec.header)
        except NetworkError as exc:
            raise ctx.err(where, exc.message) from None
        out.append(spec)
    return tuple(out)


def _bool(ctx: _Ctx, value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ctx.err(key, f"must be true or false, got {_tname(value)}")
    return value


def _entrypoint(ctx: _Ctx, value: Any) -> Entrypoint:
    table = ctx.table(value, "entrypoint")
    ctx.keys(table, "entrypoint", {"shell", "command", "services"})
    forms = [k for k in ("shell", "command", "services") if k in table]
    if len(forms) != 1:
        got = " and ".join(forms) if forms else "none"
        raise ctx.err("entrypoint", f"needs exactly one of shell, command, services (got {got})")
    kind = forms[0]
    if kind == "shell":
        return Entrypoint("shell", shell=ctx.guest_path(table["shell"], "entrypoint.shell"))
    if kind == "command":
        return Entrypoint("command", command=ctx.argv(table["command"], "entrypoint.command"))
    services = ctx.table(table["services"], "entrypoint.services")
    if not services:
        raise ctx.err("entrypoint.services", "must declare at least one service")
    return Entrypoint(
        "services",
        services=tuple(_service(ctx, n, v, "entrypoint.services") for n, v in services.items()),
    )


def _service(ctx: _Ctx, name: str, value: Any, prefix: str) -> Service:
    key = f"{prefix}.{name}"
    if not SERVICE_RE.fullmatch(name):
        raise ctx.err(key, "service names use A-Z, a-z, 0-9, '_' and '-' (max 64)")
    table = ctx.table(value, key)
    ctx.keys(table, key, {"command", "restart", "ready", "load_credentials"})
    if "command" not in table:
        raise ctx.err(f"{key}.command", "is required")
    restart = table.get("restart", "on-failure")
    if restart not in RESTART_POLICIES:
        raise ctx.err(
            f"{key}.restart", f"must be one of {', '.join(RESTART_POLICIES)}, got {restart!r}"
        )
    ready = _ready(ctx, table["ready"], f"{key}.ready") if "ready" in table else None
    return Service(name, ctx.argv(table["command"], f"{key}.command"),
                   cast(RestartPolicy, restart), ready,
                   _load_credentials(ctx, table.get("load_credentials", []),
                                     f"{key}.load_credentials"))  # fmt: skip


def _ready(ctx: _Ctx, value: Any, key: str) -> Readiness:
    table = ctx.table(value, key)
    ctx.keys(table, key, {"tcp", "command", "timeout"})
    if ("tcp" in table) == ("command" in table):
        raise ctx.err(key, "needs exactly one of tcp = PORT or command = [...]")
    timeout = table.get("timeout", READY_TIMEOUT_DEFAULT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ctx.err(f"{key}.timeout", f"must be a number of seconds, got {_tname(timeout)}")
    if not 0 < timeout <= READY_TIMEOUT_MAX:
        raise ctx.err(f"{key}.timeout", f"must be more than 0 and at most {READY_TIMEOUT_MAX:g}")
    if "tcp" in table:
        return Readiness(tcp=ctx.int_in(table["tcp"], f"{key}.tcp", 1, 65535),
                         timeout=float(timeout))  # fmt: skip
    return Readiness(command=ctx.argv(table["command"], f"{key}.command"), timeout=float(timeout))


def _load_credentials(ctx: _Ctx, value: Any, key: str) -> tuple[tuple[str, str], ...]:
    """``["api-key:API_KEY", "DB_PASS"]`` → ``LoadCredential=`` pairs (ID, system name);
    a bare NAME is ``NAME:NAME``."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ctx.err(key, 'must be a list like ["api-key:API_KEY"]')
    out: dict[str, str] = {}
    for item in value:
        ident, _, src = item.partition(":")
        src = src or ident
        for part in (ident, src):
            if not CRED_RE.fullmatch(part) or part in (".", ".."):
                raise ctx.err(key, f"{item!r}: use ID:NAME with credential names of "
                              "A-Z, a-z, 0-9, '_', '.', '-', '@' (max 255)")  # fmt: skip
        if ident in out:
            raise ctx.err(key, f"{ident!r} is given twice")
        out[ident] = src
    return tuple(out.items())


def _files(ctx: _Ctx, value: Any, sealed_home: str | None) -> tuple[FileSpec, ...]:
    table = ctx.table(value, "files")
    out = []
    for path, spec in table.items():
        key = f"files.{path!r}" if unsafe_name(path) else f'files."{path}"'
        gpath = ctx.guest_path(path, key)
        why = "is the root directory" if gpath == "/" else reserved(gpath, sealed_home)
        if why:
            raise ctx.err(key, f"{gpath!r} {why}; choose another path")
        body = ctx.table(spec, key)
        ctx.keys(body, key, {"content", "mode"})
        content = body.get("content")
        if not isinstance(content, str):
            raise ctx.err(f"{key}.content", "is required and must be a string")
        out.append(FileSpec(gpath, content, _mode(ctx, body.get("mode", "0644"), f"{key}.mode")))
    return tuple(out)


def _mode(ctx: _Ctx, value: Any, key: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        mode = int(value, 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ctx.err(key, f'must be an octal string like "0644", got {value!r}')
    if not 0 <= mode <= 0o7777:
        raise ctx.err(key, f"out of range: {value!r}")
    return mode


def _packages(ctx: _Ctx, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ctx.err("packages", "must be a list of Debian package names")
    for pkg in value:
        if not DEB_RE.fullmatch(pkg):
            raise ctx.err("packages", f"{pkg!r} is not a valid Debian package name")
    return tuple(sorted(set(value)))


def _copies(ctx: _Ctx, value: Any, root: Path, sealed_home: str | None) -> tuple[CopySpec, ...]:
    if not isinstance(value, list):
        raise ctx.err("copy", 'must be a list of { from = "dir/", to = "/opt/dir" } tables')
    out = []
    for i, item in enumerate(value):
        key = f"copy[{i}]"
        table = ctx.table(item, key)
        ctx.keys(table, key, {"from", "to"})
        if "from" not in table or "to" not in table:
            raise ctx.err(key, "needs both from and to")
        src = ctx.project_path(table["from"], f"{key}.from", root)
        try:
            mode = os.stat(src).st_mode  # resolved: no symlink is left to follow
        except FileNotFoundError:
            raise ctx.err(f"{key}.from", f"{str(src)!r} does not exist") from None
        except OSError as exc:
            raise ctx.err(f"{key}.from", f"{str(src)!r}: {exc.strerror}") from exc
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise ctx.err(f"{key}.from", f"{str(src)!r} is not a regular file or a directory")
        dest = ctx.guest_path(table["to"], f"{key}.to")
        why = reserved(dest, sealed_home)
        if why:
            raise ctx.err(f"{key}.to", f"{dest!r} {why}; choose another path")
        out.append(CopySpec(src, dest))
    return tuple(out)


def _kernel(ctx: _Ctx, value: Any, root: Path) -> KernelSpec:
    if value in ("mvm", "debian", "host"):
        return KernelSpec(provider=value)
    if isinstance(value, str):
        value = {"path": value}
    table = ctx.table(value, "kernel")
    ctx.keys(table, "kernel", {"path", "modules"})
    if "path" not in table:
        raise ctx.err(
            "kernel", 'needs path = "/path/to/vmlinuz" (or kernel = "mvm" | "debian" | "host")'
        )
    path = _resolved(ctx, root / ctx.string(table["path"], "kernel.path"), "kernel.path")
    if not path.is_file():
        raise ctx.err("kernel.path", f"{str(path)!r} is not a file")
    # the file is copied into the image: it must be a kernel, not any host file
    if not _is_kernel_image(path):
        raise ctx.err("kernel.path", f"{str(path)!r} is not a Linux kernel (ELF or bzImage)")
    modules = None
    if "modules" in table:
        modules = _resolved(ctx, root / ctx.string(table["modules"], "kernel.modules"),
                            "kernel.modules")  # fmt: skip
        if not modules.is_dir():
            raise ctx.err("kernel.modules", f"{str(modules)!r} is not a directory")
    return KernelSpec(provider="path", path=path, modules=modules)


def _resolved(ctx: _Ctx, path: Path, key: str) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise ctx.err(key, f"{str(path)!r}: cannot resolve ({exc})") from exc


def _is_kernel_image(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        head = os.read(fd, 0x206) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    finally:
        os.close(fd)
    return head.startswith(b"\x7fELF") or head[0x202:0x206] == b"HdrS"


def _credentials(
    ctx: _Ctx, value: Any, root: Path
) -> tuple[tuple[CredentialSpec, ...], tuple[VarCredentialSpec, ...]]:
    table = ctx.table(value, "credentials")
    out = []
    from_vars = []
    for name, spec in table.items():
        key = f"credentials.{name}"
        if not CRED_RE.fullmatch(name):
            raise ctx.err(key, "credential names use A-Z, a-z, 0-9, '_', '.', '-', '@' (max 255)")
        body = ctx.table(spec, key)
        ctx.keys(body, key, {"file", "var"})
        if ("file" in body) == ("var" in body):
            raise ctx.err(key, 'needs exactly one of file = "path/to/file" or var = "GEN/FILE"')
        if "var" in body:
            var = ctx.string(body["var"], f"{key}.var")
            gen, sep, fname = var.partition("/")
            if not sep or not gen or not fname or "/" in fname:
                raise ctx.err(f"{key}.var", f'must be "GENERATOR/FILE", got {var!r}')
            from_vars.append(VarCredentialSpec(name, gen, fname))
            continue
        file = _resolved(ctx, root / ctx.string(body["file"], f"{key}.file"), f"{key}.file")
        out.append(CredentialSpec(name, file))
    return tuple(out), tuple(from_vars)


def _ports(ctx: _Ctx, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ctx.err("ports", 'must be a list like ["8080:80"]')
    for port in value:
        m = PORT_RE.fullmatch(port)
        if not m:
            raise ctx.err("ports", f'{port!r} is not HOST:GUEST (e.g. "8080:80")')
        if not all(1 <= int(p) <= 65535 for p in m.group(1, 2) if p is not None):
            raise ctx.err("ports", f"{port!r}: ports are 1-65535")
    return tuple(value)
