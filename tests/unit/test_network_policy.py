"""Pure logic of the network package: policy rules, wildcards, address classes,
secret binding syntax, the DNS codec, SNI extraction."""

from __future__ import annotations

import ssl
import struct
from pathlib import Path

import pytest

from mvm.errors import NetworkError
from mvm.network import bindings, dns, policy
from mvm.network.proxy import sni_from_client_hello


def test_presets_and_rules() -> None:
    none = policy.build("none")
    assert not none.egress and not none.check("pypi.org", 443).allowed
    # a preset's own hosts are egress: `--network-preset dev` alone gives the VM a network
    assert policy.build("dev").egress and policy.build("agent").egress
    dev = policy.build("dev", ("api.test:8443", "*.example.com"))
    assert dev.check("pypi.org", 443).allowed and not dev.check("pypi.org", 22).allowed
    assert dev.check("api.test", 8443).explicit and not dev.check("api.test", 443).allowed
    assert dev.check("a.b.example.com", 80).allowed and not dev.check("example.com", 80).allowed
    assert not dev.check("evil-example.com", 80).allowed
    assert not dev.check("api.openai.com", 443).allowed
    assert policy.build("agent").check("api.openai.com", 443).allowed
    assert policy.build("open").check("anything.org", 9999).allowed
    assert dev.name_allowed("pypi.org") and not dev.name_allowed("evil.org")
    # preset entries and wildcards are never "explicit": private addresses stay refused
    assert not dev.check("x.example.com", 80).explicit and not dev.check("pypi.org", 443).explicit


@pytest.mark.parametrize(
    "bad",
    [
        "*",
        "*.com",
        "foo*.example.com",
        "*.*.example.com",
        "a..b",
        "10.0.0.1",
        "10.0.0.0/8",
        "::1",
        "host:0",
        "host:70000",
        "host:x",
        "-bad.com",
        "",
    ],
)
def test_bad_allow_rules(bad: str) -> None:
    with pytest.raises(NetworkError):
        policy.parse_allow(bad)


def test_cidr_and_add_host() -> None:
    p = policy.build("none", (), ("10.1.0.0/16",), ("api.test:127.0.0.1",))
    assert p.hosts == {"api.test": "127.0.0.1"}
    assert p.check("10.1.2.3", 80).allowed and not p.check("10.2.0.1", 80).allowed
    for bad in ("api.test", "api.test:notanip", ":1.2.3.4"):
        with pytest.raises(NetworkError):
            policy.parse_add_host(bad)
    with pytest.raises(NetworkError):
        policy.build("none", add_hosts=("a.test:1.1.1.1", "a.test:2.2.2.2"))
    with pytest.raises(NetworkError):
        policy.build("closed")
    with pytest.raises(NetworkError):
        policy.parse_cidr("10.0.0.0/99")


@pytest.mark.parametrize("ip,klass", [("127.0.0.1", "loopback"), ("10.0.0.1", "private"),
    ("192.168.1.1", "private"), ("172.16.0.1", "private"), ("169.254.169.254", "metadata"),
    ("169.254.1.1", "link-local"), ("100.64.0.1", "private"), ("::1", "loopback"),
    ("fe80::1", "link-local"), ("::ffff:127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"),
    ("8.8.8.8", None), ("2606:4700::1111", None)])  # fmt: skip
def test_address_classes(ip: str, klass: str | None) -> None:
    assert policy.address_class(ip) == klass


def test_private_addresses_need_an_explicit_rule() -> None:
    p = policy.build("dev", ("api.test:8080", "*.corp.test"), add_hosts=("api.test:127.0.0.1",))
    assert p.address_ok("127.0.0.1", p.check("api.test", 8080)) is None
    assert p.address_ok("10.0.0.5", p.check("x.corp.test", 443)) is not None
    assert p.address_ok("169.254.169.254", p.check("pypi.org", 443)) is not None
    assert p.address_ok("151.101.0.223", p.check("pypi.org", 443)) is None
    assert policy.Policy.from_json(p.to_json()) == p


def test_binding_syntax(tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": "sk-123", "X": "v"}
    b = bindings.parse("OPENAI_API_KEY:api.openai.com", env)
    assert (b.key, b.hosts, b.header, b.value) == (
        "OPENAI_API_KEY",
        ("api.openai.com",),
        None,
        "sk-123",
    )
    assert b.header_value() == "Bearer sk-123" and b.placeholder.startswith("mvm-managed:OPENAI")
    assert "sk-123" not in repr(b) and "sk-123" not in str(b.manifest())
    c = bindings.parse("X:a.test,b.test:x-api-key", env)
    assert c.hosts == ("a.test", "b.test") and c.header == "x-api-key" and c.header_value() == "v"
    d = bindings.parse("K=s3:cr:et:api.test:x-token", {})
    assert (d.value, d.hosts, d.header) == ("s3:cr:et", ("api.test",), "x-token")
    e = bindings.parse("K=val:api.test", {})
    assert (e.value, e.hosts, e.header) == ("val", ("api.test",), None)
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    g = bindings.parse(f"K@{f}:api.test", {})
    assert g.value == "from-file"
    # placeholders are unique per binding
    assert (
        bindings.parse("X:a.test", env).placeholder != bindings.parse("X:a.test", env).placeholder
    )


@pytest.mark.parametrize(
    "bad",
    [
        "KEY:",
        ":host",
        "KEY:host:",
        "MISSING:api.test",
        "K=v",
        "K=:api.test",
        "1K:api.test",
        "K:*.test",
        "K:bad_host!",
        "K=v:api.test:bad header",
        "K@/nonexistent:api.test",
    ],
)
def test_bad_bindings(bad: str) -> None:
    with pytest.raises(NetworkError) as exc:
        bindings.parse(bad, {"KEY": "secretvalue"})
    assert "secretvalue" not in str(exc.value)


def test_binding_never_echoes_an_explicit_value() -> None:
    with pytest.raises(NetworkError) as exc:
        bindings.parse("K=supersecret:", {})
    assert "supersecret" not in str(exc.value)


def test_inject() -> None:
    b = bindings.parse("K=real:api.test", {})
    hdrs = [
        (b"host", b"api.test"),
        (b"authorization", b"Bearer " + b.placeholder.encode()),
        (b"x-other", b"see " + b.placeholder.encode()),
    ]
    out, used = bindings.inject(hdrs, (b,))
    assert (b"authorization", b"Bearer real") in out and (b"x-other", b"see real") in out
    assert used == ["K"] and len([h for h in out if h[0] == b"authorization"]) == 1
    assert bindings.inject(hdrs, ()) == (hdrs, [])


def _query(name: str, qtype: int = dns.TYPE_A) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + q + struct.pack("!2H", qtype, 1)


def test_dns_codec() -> None:
    q = dns.parse_query(_query("Api.Test"))
    assert (q.name, q.qtype, q.ident) == ("api.test", dns.TYPE_A, 0x1234)
    a = dns.answer(q, "10.0.2.100")
    ident, flags, qd, an, _, _ = struct.unpack("!6H", a[:12])
    assert (ident, flags & 0xF, qd, an) == (0x1234, dns.NOERROR, 1, 1) and a.endswith(
        bytes([10, 0, 2, 100])
    )
    nx = dns.answer(q, None)
    assert struct.unpack("!6H", nx[:12])[1] & 0xF == dns.NXDOMAIN
    aaaa = dns.answer(dns.parse_query(_query("api.test", dns.TYPE_AAAA)), "10.0.2.100")
    assert struct.unpack("!6H", aaaa[:12])[3] == 0
    for bad in (
        b"",
        b"x" * 11,
        _query("a")[:-3],
        b"\0" * 12,
        _query("a").replace(b"\x01a", b"\xc0\x0c"),
        b"\0" * 600,
    ):
        with pytest.raises(NetworkError):
            dns.parse_query(bad)
    assert dns.formerr(b"\x12\x34rest") is not None and dns.formerr(b"") is None


def _client_hello(server_name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_sni() -> None:
    hello = _client_hello("api.test")
    assert sni_from_client_hello(hello) == ("api.test", 0)
    assert sni_from_client_hello(hello[:3])[1] == 5
    assert sni_from_client_hello(hello[:20])[1] > 20
    assert sni_from_client_hello(b"GET / HTTP/1.1\r\n") == (None, 0)
    for cut in range(5, len(hello), 37):  # truncated inside the record: asks for more, no crash
        name, need = sni_from_client_hello(hello[:cut])
        assert name is None and need == len(hello)
    garbage = hello[:5] + bytes(len(hello) - 5)
    assert sni_from_client_hello(garbage)[0] is None
