"""Secrets bound to domains (``--secret``): the guest gets a placeholder, the
proxy puts the real value into requests to the bound hosts only.

Syntax (the seed's, plus ``@FILE``; several hosts separated by commas)::

    KEY:host[,host2][:header]          value from the host environment
    KEY=value:host[,host2][:header]    explicit value (visible in `ps`: prefer @FILE)
    KEY@FILE:host[,host2][:header]     value read from FILE (trailing newline dropped)

Without a header the value is sent as ``Authorization: Bearer VALUE``; with
one, as ``HEADER: VALUE``.  The guest's ``KEY`` is
``mvm-managed:KEY:TOKEN`` where TOKEN is random per VM and key, so a
placeholder copied out of one VM means nothing anywhere else.  Values live
in this process's memory and the proxy's; never in a file, a record, a log
line or an error message.
"""

from __future__ import annotations

import re
import secrets as pysecrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvm.errors import NetworkError
from mvm.network.policy import normalise_host

_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_HEADER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
MAX_VALUE = 16 << 10
DEFAULT_HEADER = "authorization"


@dataclass(frozen=True)
class Binding:
    key: str
    hosts: tuple[str, ...]
    header: str | None  # None: Authorization: Bearer VALUE
    value: str = field(repr=False)
    placeholder: str = ""
    origin: str = "cli"

    @property
    def header_name(self) -> str:
        return (self.header or DEFAULT_HEADER).lower()

    def header_value(self) -> str:
        return self.value if self.header else f"Bearer {self.value}"

    def manifest(self) -> dict[str, Any]:
        """Metadata only (secrets-manifest.json, status): never the value."""
        return {
            "key": self.key,
            "hosts": list(self.hosts),
            "header": self.header or "Authorization",
            "placeholder": self.placeholder,
        }

    def to_proxy(self) -> dict[str, Any]:
        """What the proxy needs, value included (sent over a pipe, never to disk)."""
        return {**self.manifest(), "value": self.value}

    @classmethod
    def from_proxy(cls, d: dict[str, Any]) -> Binding:
        header = None if d["header"] == "Authorization" else str(d["header"])
        return cls(str(d["key"]), tuple(d["hosts"]), header, str(d["value"]), str(d["placeholder"]))


def make_placeholder(key: str) -> str:
    return f"mvm-managed:{key}:{pysecrets.token_hex(12)}"


def _check_value(key: str, value: str) -> str:
    if not value:
        raise NetworkError(f"secret {key} is empty")
    if len(value) > MAX_VALUE or any(c in value for c in "\r\n\0"):
        raise NetworkError(
            f"secret {key} is not a valid header value (at most {MAX_VALUE} bytes, no line breaks)"
        )
    return value


def _hosts_header(rest: str, text: str) -> tuple[tuple[str, ...], str | None]:
    hosts_s, sep, header = rest.partition(":")
    if sep and not header:
        raise NetworkError(f"invalid --secret {text!r}: empty header name")
    if header and not _HEADER_RE.fullmatch(header):
        raise NetworkError(f"invalid --secret {text!r}: bad header name {header!r}")
    if not hosts_s:
        raise NetworkError(f"invalid --secret {text!r}: no host (use KEY:host[:header])")
    hosts = []
    for h in hosts_s.split(","):
        if not h or "*" in h:
            raise NetworkError(f"invalid --secret {text!r}: bound hosts are exact names")
        try:
            hosts.append(normalise_host(h))
        except NetworkError:
            raise NetworkError(f"invalid --secret {text!r}: bad host {h!r}") from None
    return tuple(dict.fromkeys(hosts)), header or None


def parse(text: str, env: dict[str, str], origin: str = "cli") -> Binding:
    """One ``--secret`` argument → a binding (the value resolved now)."""
    m = re.match(r"([A-Za-z0-9_]*)([:=@])", text)
    if not m or not m.group(1):
        raise NetworkError(
            f"invalid --secret {_redact(text)!r}: use KEY:host[:header], "
            "KEY=value:host[:header] or KEY@FILE:host[:header]"
        )
    key, kind = m.group(1), m.group(2)
    if not _KEY_RE.fullmatch(key):
        raise NetworkError(f"invalid secret name {key!r}: letters, digits and _")
    body = text[m.end() :]
    if kind == ":":
        hosts, header = _hosts_header(body, text)
        if key not in env:
            raise NetworkError(
                f"secret {key} is not set in the host environment",
                hint=f"export {key}=… or use {key}@FILE:host",
            )
        value = env[key]
    else:
        # the value (or path) may contain ':'; hosts and header are the last fields
        shown = f"{key}{kind}…"
        parts = body.rsplit(":", 2)
        if len(parts) == 3 and "." not in parts[2] and "." in parts[1]:
            src, rest = parts[0], f"{parts[1]}:{parts[2]}"
        elif len(parts) >= 2:
            src, rest = body.rsplit(":", 1)
        else:
            raise NetworkError(f"invalid --secret {shown!r}: no host (use {shown}:host)")
        hosts, header = _hosts_header(rest, shown + ":" + rest)
        value = src if kind == "=" else _read_file(key, src)
    return Binding(key, hosts, header, _check_value(key, value), make_placeholder(key), origin)


def _read_file(key: str, path: str) -> str:
    try:
        with open(Path(path).expanduser(), "rb") as f:
            data = f.read(MAX_VALUE + 2)
    except OSError as exc:
        raise NetworkError(f"secret {key}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise NetworkError(f"secret {key}: {path} is not UTF-8 text") from None
    return text[:-1] if text.endswith("\n") else text


def _redact(text: str) -> str:
    """Never echo a value: keep only what precedes '='."""
    return text.split("=", 1)[0] + ("=…" if "=" in text else "")


def from_toml(key: str, table: dict[str, Any], env: dict[str, str], base: Path) -> Binding:
    """``[secrets.KEY]``: ``host`` (a name or a list), optional ``header``, and
    ``from_env = "VAR"`` (default: KEY) or ``file = "path"``."""
    host = table.get("host", table.get("hosts"))
    hosts_l = [host] if isinstance(host, str) else host
    if not isinstance(hosts_l, list) or not hosts_l or not all(isinstance(h, str) for h in hosts_l):
        raise NetworkError(f"mvm.toml [secrets.{key}]: host must be a name or a list of names")
    header = table.get("header")
    if header is not None and not isinstance(header, str):
        raise NetworkError(f"mvm.toml [secrets.{key}]: header must be a string")
    rest = ",".join(hosts_l) + (f":{header}" if header is not None else "")
    hosts, hdr = _hosts_header(rest, f"[secrets.{key}]")
    if not _KEY_RE.fullmatch(key):
        raise NetworkError(f"mvm.toml: invalid secret name {key!r}")
    if "file" in table:
        p = Path(str(table["file"]))
        value = _read_file(key, str(p if p.is_absolute() else base / p))
    else:
        var = str(table.get("from_env", key))
        if var not in env:
            raise NetworkError(f"secret {key}: {var} is not set in the host environment")
        value = env[var]
    return Binding(key, hosts, hdr, _check_value(key, value), make_placeholder(key), "mvm.toml")


def check_decl(key: str, hosts: tuple[str, ...], header: str | None) -> None:
    """A declared binding's syntax (mvm.toml), before any value is read."""
    if not _KEY_RE.fullmatch(key):
        raise NetworkError(f"invalid secret name {key!r}: letters, digits and _")
    _hosts_header(",".join(hosts) + (f":{header}" if header is not None else ""), key)


def check_unique(bindings: list[Binding]) -> None:
    seen: set[str] = set()
    for b in bindings:
        if b.key in seen:
            raise NetworkError(f"secret {b.key} is bound twice")
        seen.add(b.key)


def for_host(bindings: tuple[Binding, ...], host: str) -> tuple[Binding, ...]:
    return tuple(b for b in bindings if host in b.hosts)


def inject(
    headers: list[tuple[bytes, bytes]], bound: tuple[Binding, ...]
) -> tuple[list[tuple[bytes, bytes]], list[str]]:
    """Headers for a request to a host the ``bound`` secrets belong to: each
    binding's header set to the real value (whatever the guest sent), and
    placeholders elsewhere in the headers replaced.  Returns the key names used."""
    if not bound:
        return headers, []
    names = {b.header_name.encode() for b in bound}
    out: list[tuple[bytes, bytes]] = []
    used: list[str] = []
    for k, v in headers:
        if k.lower() in names:
            continue
        for b in bound:
            ph = b.placeholder.encode()
            if ph in v:
                v = v.replace(ph, b.value.encode())
                used.append(b.key)
        out.append((k, v))
    for b in bound:
        out.append((b.header_name.encode(), b.header_value().encode()))
        used.append(b.key)
    return out, sorted(set(used))
