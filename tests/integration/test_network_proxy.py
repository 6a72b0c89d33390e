"""The egress proxy against real servers on loopback (no VM): explicit proxy,
CONNECT tunnels, transparent HTTP and TLS, secret injection through the
per-VM CA, streaming, and hostile clients."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvm.network import bindings, ca, policy, proxy
from mvm.network.proxy import ProxyConfig

from .network_support import digest, echo_server, running_proxy

pytestmark = pytest.mark.integration


def _unix(path: Path, timeout: float = 10) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


def _read_response(f: socket.socket | ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = f.recv(65536)
        if not d:
            break
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1]) if lines[0] else 0
    hdrs = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    n = int(hdrs.get("content-length", "-1"))
    while n >= 0 and len(rest) < n:
        d = f.recv(65536)
        if not d:
            break
        rest += d
    return status, hdrs, rest


def _get(s: socket.socket | ssl.SSLSocket, target: str, host: str, extra: str = "") -> tuple[
        int, dict[str, str], bytes]:  # fmt: skip
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
    return _read_response(s)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("proxy")
    (d / "net").mkdir(mode=0o700)
    with echo_server() as (http_port, _), echo_server(d / "up") as (https_port, upstream_ca):
        pol = policy.build(
            "dev",
            (f"api.test:{https_port}", f"api.test:{http_port}", f"plain.test:{http_port}",
             "api.test:443"),
            add_hosts=("api.test:127.0.0.1", "plain.test:127.0.0.1", "wild.corp.test:127.0.0.1",
                       "meta.corp.test:169.254.169.254"),
        )  # fmt: skip
        pol = policy.Policy(pol.preset, (*pol.rules, policy.parse_allow(f"*.corp.test:{http_port}")),
                            pol.cidrs, pol.hosts)  # fmt: skip
        b = bindings.parse("TOKEN=s3cret-value:api.test", {})
        ca.create(d / "net", "test", ("api.test",))
        cfg = ProxyConfig(pol, (b,), d / "net", d / "audit.log", upstream_ca, "test")
        with running_proxy(cfg, d) as socks:
            yield {
                "socks": socks,
                "http": http_port,
                "https": https_port,
                "binding": b,
                "vmca": d / "net" / "ca.pem",
                "audit": d / "audit.log",
                "dir": d,
            }


def test_explicit_proxy_allowed_and_denied(world: dict) -> None:
    hp = world["http"]
    with _unix(world["socks"]["http"]) as s:
        st, _, body = _get(s, f"http://plain.test:{hp}/x?y=1", f"plain.test:{hp}")
        assert st == 200 and json.loads(body)["path"] == "/x?y=1"
        # keep-alive: a second request on the same connection
        st, _, body = _get(s, f"http://plain.test:{hp}/again", f"plain.test:{hp}")
        assert st == 200 and json.loads(body)["path"] == "/again"
        # the secret never goes to a host it is not bound to, even with the placeholder
        ph = world["binding"].placeholder
        st, _, body = _get(
            s, f"http://plain.test:{hp}/leak", f"plain.test:{hp}", f"Authorization: Bearer {ph}\r\n"
        )
        h = json.loads(body)["headers"]
        assert h["authorization"] == digest(f"Bearer {ph}")
    with _unix(world["socks"]["http"]) as s:
        st, _, body = _get(s, f"http://evil.test:{hp}/", f"evil.test:{hp}")
        assert st == 403 and b"not allowed" in body
    with _unix(world["socks"]["http"]) as s:
        # a wildcard match is never "explicit": its loopback address is refused
        st, _, body = _get(s, f"http://wild.corp.test:{hp}/", f"wild.corp.test:{hp}")
        assert st == 403 and b"loopback" in body
    with _unix(world["socks"]["http"]) as s:
        st, _, body = _get(s, f"http://127.0.0.1:{hp}/", f"127.0.0.1:{hp}")
        assert st == 403
    audit = [json.loads(x) for x in world["audit"].read_text().splitlines()]
    assert any(e["host"] == "evil.test" and not e["allowed"] for e in audit)
    assert "s3cret" not in world["audit"].read_text()


def test_plain_http_to_bound_host_gets_the_secret(world: dict) -> None:
    hp = world["http"]
    with _unix(world["socks"]["http"]) as s:  # transparent: origin-form, routed by Host
        st, _, body = _get(s, "/t", f"api.test:{hp}")
        assert st == 200
        assert json.loads(body)["headers"]["authorization"] == digest("Bearer s3cret-value")
    audit = [json.loads(x) for x in world["audit"].read_text().splitlines()]
    assert any(e.get("injected") == ["TOKEN"] for e in audit)


def _connect(s: socket.socket, target: str) -> int:
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    return _read_response(s)[0]


def test_connect_mitm_injects_and_verifies_upstream(world: dict) -> None:
    port = world["https"]
    ctx = ssl.create_default_context(cafile=str(world["vmca"]))
    with _unix(world["socks"]["http"]) as raw:
        assert _connect(raw, f"api.test:{port}") == 200
        with ctx.wrap_socket(raw, server_hostname="api.test") as tls:
            ph = world["binding"].placeholder
            st, _, body = _get(
                tls, "/secret", f"api.test:{port}", f"Authorization: Bearer {ph}\r\n"
            )
            assert st == 200
            assert json.loads(body)["headers"]["authorization"] == digest("Bearer s3cret-value")
            # a request for another host on this connection is refused
            st, _, _ = _get(tls, "/", "other.test")
            assert st == 421


def test_connect_tunnel_is_untouched(world: dict) -> None:
    """An unbound allowed host: the proxy only tunnels (the guest sees the real cert)."""
    hp = world["http"]
    with _unix(world["socks"]["http"]) as s:
        assert _connect(s, f"plain.test:{hp}") == 200
        st, _, body = _get(s, "/tunnel", "plain.test")
        assert st == 200 and "authorization" not in json.loads(body)["headers"]
    with _unix(world["socks"]["http"]) as s:
        assert _connect(s, "evil.test:443") == 403
    with _unix(world["socks"]["http"]) as s:
        assert _connect(s, f"meta.corp.test:{world['http']}") == 403  # metadata address


def test_transparent_tls_by_sni(world: dict, tmp_path: Path) -> None:
    # no SNI, or a refused one: the connection is closed without a byte
    with _unix(world["socks"]["tls"]) as raw:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(raw, server_hostname="evil.test")
    # bound host on 443 -> terminated with the VM CA (the proxy's upstream is port 443,
    # which nothing serves here, so a 502 from the proxy is the proof it terminated)
    ctx = ssl.create_default_context(cafile=str(world["vmca"]))
    with _unix(world["socks"]["tls"]) as raw, ctx.wrap_socket(raw, server_hostname="api.test") as t:
        assert t.getpeercert()["subject"][0][0][1] == "api.test"
        st, _, _ = _get(t, "/", "api.test")
        assert st == 502


def test_streaming_and_chunked_pass_through_incrementally(world: dict) -> None:
    hp = world["http"]
    with _unix(world["socks"]["http"]) as s:
        s.sendall(
            f"GET http://plain.test:{hp}/stream HTTP/1.1\r\nHost: plain.test\r\n\r\n".encode()
        )
        arrivals = []
        buf = b""
        t0 = time.monotonic()
        while b"0\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                break
            buf += d
            if b"data:" in d:
                arrivals.append(time.monotonic() - t0)
        assert buf.count(b"data:") == 5
        assert arrivals[-1] - arrivals[0] > 0.8  # not buffered until the end


def test_large_upload_and_download(world: dict) -> None:
    hp = world["http"]
    body = b"u" * (8 << 20)
    with _unix(world["socks"]["http"], 60) as s:
        s.sendall(
            f"POST http://plain.test:{hp}/up HTTP/1.1\r\nHost: plain.test\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        st, _, out = _read_response(s)
        assert st == 200 and json.loads(out)["body_len"] == len(body)
        st, _, out = _get(s, f"http://plain.test:{hp}/big/{32 << 20}", "plain.test")
        assert st == 200 and len(out) == 32 << 20


def test_hostile_clients_are_bounded(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    with _unix(world["socks"]["http"]) as s:  # garbage
        s.sendall(b"\x00\x01 NOT HTTP\r\n\r\n")
        assert s.recv(100) == b""  # closed, no traceback, nothing forwarded
    with _unix(world["socks"]["http"]) as s:  # a huge header: refused, not buffered forever
        s.sendall(b"GET http://plain.test/ HTTP/1.1\r\nHost: plain.test\r\nX: ")
        with pytest.raises(OSError):
            for _ in range(200):
                s.sendall(b"a" * 8192)
            assert s.recv(100) == b""
            raise OSError("closed")
    with _unix(world["socks"]["http"]) as s:  # https:// absolute target without CONNECT
        st, _, _ = _get(s, "https://api.test/", "api.test")
        assert st == 400
    # DNS: garbage and a giant length prefix end the connection
    with _unix(world["socks"]["dns"]) as s:
        s.sendall(struct.pack("!H", 60000) + b"x")
        assert s.recv(10) == b""
    assert world["socks"]["http"].exists()  # still serving


def test_slowloris_is_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy, "HEAD_TIMEOUT", 1.0)
    cfg = ProxyConfig(policy.build("open"))
    with running_proxy(cfg, tmp_path) as socks, _unix(socks["http"]) as s:
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\n")
        assert s.recv(100) == b""
        assert time.monotonic() - t0 < 5


def test_trickled_head_is_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A head sent a byte at a time never resets the clock: the whole head has a deadline."""
    monkeypatch.setattr(proxy, "HEAD_TIMEOUT", 1.5)
    cfg = ProxyConfig(policy.build("open"))
    with running_proxy(cfg, tmp_path) as socks, _unix(socks["http"]) as s:
        t0 = time.monotonic()
        with pytest.raises(OSError):
            for c in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                s.sendall(bytes([c]))
                time.sleep(0.2)
        assert time.monotonic() - t0 < 6


def test_dns_responder(world: dict) -> None:
    from .test_network_dns_helper import query

    with _unix(world["socks"]["dns"]) as s:
        assert query(s, "pypi.org") == "10.0.2.100"
        assert query(s, "api.test") == "10.0.2.100"
        assert query(s, "evil.test") is None
