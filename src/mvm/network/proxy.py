"""The egress proxy: every byte that leaves a guest passes through here.

Three listeners (Unix sockets that QEMU's guest forwards reach):

* ``http``: plain HTTP, both as an explicit proxy (absolute-form targets and
  ``CONNECT``, what ``HTTP_PROXY``/``HTTPS_PROXY`` produce) and
  transparently (origin-form, routed by ``Host``) for programs that ignore
  proxy variables and connect to whatever the guest's DNS answered;
* ``tls``: transparent TLS on port 443, routed by the ClientHello's SNI
  (peeked, so the bytes are still there for a tunnel);
* ``dns``: the responder of :mod:`mvm.network.dns`.

Policy (:mod:`mvm.network.policy`) is decided on the name, then the proxy
resolves it itself and connects to the checked address (no second lookup
an attacker could race).  Hosts with secret bindings
(:mod:`mvm.network.bindings`) are the only ones whose TLS is terminated
(with a leaf from the VM's CA, :mod:`mvm.network.ca`); the upstream is then
verified normally and the binding's header is set on each request.
Everything else is tunnelled untouched.

HTTP/1.1 parsing and framing is h11's (a maintained sans-I/O library: keep-
alive, chunked bodies, streaming); this module only moves its events,
flushing each chunk with ``drain()`` so a slow side slows the other down
instead of filling memory.  Every wait has a timeout (a request head must
arrive within :data:`HEAD_TIMEOUT`, at most :data:`MAX_HEAD` bytes), and
connections are capped.  Each decision is one JSON line in the VM's audit
log — time, host, port, verdict, injected key *names*; never values.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import ssl
import struct
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11

from mvm.errors import NetworkError
from mvm.log import get_logger
from mvm.network import GUEST_PROXY_IP, dns
from mvm.network import bindings as bmod
from mvm.network import ca as camod
from mvm.network.bindings import Binding
from mvm.network.policy import Decision, Policy, is_ip, normalise_host

log = get_logger(__name__)

MAX_HEAD = 64 << 10
HEAD_TIMEOUT = 30.0
IO_TIMEOUT = 300.0  # no byte in either direction for this long: the connection is dropped
CONNECT_TIMEOUT = 15.0
MAX_CONNECTIONS = 512
CHUNK = 256 << 10
TUNNEL_READ = 1 << 20
HOP_BY_HOP = {b"proxy-connection", b"proxy-authorization", b"proxy-authenticate", b"expect"}


@dataclass
class ProxyConfig:
    policy: Policy
    bindings: tuple[Binding, ...] = ()
    net_dir: Path | None = None  # where the CA and leaf certificates live (0700)
    audit_log: Path | None = None
    upstream_ca: Path | None = None  # extra trust for upstream servers (tests, --add-ca)
    vm: str = "vm"

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy.to_json(),
            "bindings": [b.to_proxy() for b in self.bindings],
            "net_dir": str(self.net_dir) if self.net_dir else None,
            "audit_log": str(self.audit_log) if self.audit_log else None,
            "upstream_ca": str(self.upstream_ca) if self.upstream_ca else None,
            "vm": self.vm,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProxyConfig:
        def opt(k: str) -> Path | None:
            return Path(d[k]) if d.get(k) else None

        return cls(
            Policy.from_json(d["policy"]),
            tuple(Binding.from_proxy(b) for b in d["bindings"]),
            opt("net_dir"),
            opt("audit_log"),
            opt("upstream_ca"),
            str(d["vm"]),
        )


class Denied(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Upstream:
    key: tuple[str, int, bool]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))


def sni_from_client_hello(data: bytes) -> tuple[str | None, int]:
    """(server name, bytes needed): parse a TLS ClientHello record, bounded.
    ``needed`` > len(data) means more bytes are required; name None: no SNI."""
    if len(data) < 5:
        return None, 5
    if data[0] != 22:
        return None, 0
    need = 5 + struct.unpack("!H", data[3:5])[0]
    if len(data) < need:
        return None, need
    try:
        p = 5
        if data[p] != 1:
            return None, 0
        p += 4 + 2 + 32
        p += 1 + data[p]
        p += 2 + struct.unpack("!H", data[p : p + 2])[0]
        p += 1 + data[p]
        end = p + 2 + struct.unpack("!H", data[p : p + 2])[0]
        p += 2
        while p + 4 <= min(end, need):
            etype, elen = struct.unpack("!2H", data[p : p + 4])
            p += 4
            if etype == 0:
                q = p + 2
                while q + 3 <= p + elen:
                    ntype, nlen = data[q], struct.unpack("!H", data[q + 1 : q + 3])[0]
                    if ntype == 0:
                        return data[q + 3 : q + 3 + nlen].decode("ascii"), 0
                    q += 3 + nlen
                return None, 0
            p += elen
    except (IndexError, struct.error, UnicodeDecodeError):
        return None, 0
    return None, 0


class Proxy:
    def __init__(self, cfg: ProxyConfig):
        self.cfg = cfg
        self.policy = cfg.policy
        self.sem = asyncio.Semaphore(MAX_CONNECTIONS)
        self._leaf: dict[str, ssl.SSLContext] = {}
        self._ca: camod.CA | None = None
        if cfg.bindings and cfg.net_dir is not None:
            self._ca = camod.CA(cfg.net_dir / "ca.pem", cfg.net_dir / "ca.key")
        self.upstream_tls = ssl.create_default_context()
        if cfg.upstream_ca is not None:
            self.upstream_tls.load_verify_locations(cafile=str(cfg.upstream_ca))
        self.upstream_tls.set_alpn_protocols(["http/1.1"])
        self._tasks: set[asyncio.Future[None]] = set()
        self._audit_fd: int | None = None
        if cfg.audit_log is not None:
            self._audit_fd = os.open(
                cfg.audit_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )

    # ---- audit -----------------------------------------------------------------
    def audit(
        self,
        kind: str,
        host: str,
        port: int,
        allowed: bool,
        reason: str,
        injected: list[str] | None = None,
    ) -> None:
        if self._audit_fd is None:
            return
        entry = {
            "time": round(time.time(), 3),
            "kind": kind,
            "host": host[:255],
            "port": port,
            "allowed": allowed,
            "reason": reason[:200],
        }
        if injected:
            entry["injected"] = injected
        with contextlib.suppress(OSError):
            os.write(self._audit_fd, (json.dumps(entry) + "\n").encode())

    # ---- servers ---------------------------------------------------------------
    async def serve(
        self, http: Path, tls: Path, dnsp: Path, ports: dict[int, Path] | None = None
    ) -> list[asyncio.Server]:
        """Listen on the three sockets, and one per transparent port in ``ports``."""

        def guarded(
            fn: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
            async def run(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                if self.sem.locked():
                    w.close()
                    return
                async with self.sem:
                    try:
                        await fn(r, w)
                    except Exception as exc:  # one connection's trouble never stops the proxy
                        _dropped(exc)
                    finally:
                        w.close()

            return run

        servers = [
            await asyncio.start_unix_server(
                guarded(self.handle_http), path=str(http), limit=MAX_HEAD
            ),
            await asyncio.start_unix_server(guarded(self.handle_dns), path=str(dnsp)),
        ]
        self._accepting = [asyncio.ensure_future(self._accept_raw(_listen(tls), self.handle_tls))]
        for port, path in (ports or {}).items():
            handler = functools.partial(self.handle_sniff, port=port)
            self._accepting.append(asyncio.ensure_future(self._accept_raw(_listen(path), handler)))
        return servers

    def close(self) -> None:
        """Stop accepting TLS connections (the asyncio servers are closed by their owner)."""
        for task in getattr(self, "_accepting", []):
            task.cancel()

    async def _accept_raw(
        self, srv: socket.socket, handler: Callable[[socket.socket], Awaitable[None]]
    ) -> None:
        """Accept loop for listeners that peek before choosing how to speak."""
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(srv)
            if self.sem.locked():
                conn.close()
                continue
            task = asyncio.ensure_future(self._raw_conn(conn, handler))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _raw_conn(
        self, conn: socket.socket, handler: Callable[[socket.socket], Awaitable[None]]
    ) -> None:
        async with self.sem:
            try:
                await handler(conn)
            except Exception as exc:
                _dropped(exc)
            finally:
                conn.close()

    # ---- DNS -------------------------------------------------------------------
    async def handle_dns(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(64):  # a resolver sends a few queries per connection
            try:
                head = await asyncio.wait_for(reader.readexactly(2), HEAD_TIMEOUT)
            except asyncio.IncompleteReadError:
                return
            n = struct.unpack("!H", head)[0]
            if n > dns.MAX_MESSAGE:
                return
            msg = await asyncio.wait_for(reader.readexactly(n), HEAD_TIMEOUT)
            try:
                q = dns.parse_query(msg)
            except NetworkError:
                reply = dns.formerr(msg)
                if reply is None:
                    return
            else:
                ok = q.name != "" and (
                    self.policy.name_allowed(q.name) or q.name in self.policy.hosts
                )
                if q.qtype in (dns.TYPE_A, dns.TYPE_AAAA):
                    self.audit("dns", q.name, 53, ok, "name allowed" if ok else "not allowed")
                reply = dns.answer(q, GUEST_PROXY_IP if ok else None)
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()

    # ---- connections upstream --------------------------------------------------
    async def resolve(self, host: str, port: int, decision: Decision) -> str:
        if is_ip(host):
            ips = [host.strip("[]")]
        elif host in self.policy.hosts:
            ips = [self.policy.hosts[host]]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError):
                raise Denied(502, f"cannot resolve {host}") from None
            ips = list(dict.fromkeys(str(i[4][0]) for i in infos))
        for ip in ips:
            why = self.policy.address_ok(ip, decision)
            if why is not None:
                raise Denied(403, why)
        return ips[0]

    async def open_upstream(
        self, host: str, port: int, decision: Decision, tls: bool
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ip = await self.resolve(host, port, decision)
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    ip,
                    port,
                    ssl=self.upstream_tls if tls else None,
                    server_hostname=host if tls else None,
                    limit=CHUNK,
                ),
                CONNECT_TIMEOUT,
            )
        except ssl.SSLCertVerificationError as exc:
            raise Denied(502, f"upstream certificate not trusted: {exc.verify_message}") from None
        except (OSError, TimeoutError) as exc:
            raise Denied(502, f"cannot connect to {host}:{port}: {exc}") from None

    def leaf_context(self, host: str) -> ssl.SSLContext:
        ctx = self._leaf.get(host)
        if ctx is None:
            assert self._ca is not None and self.cfg.net_dir is not None
            certf, keyf = camod.mint(self._ca, host, self.cfg.net_dir)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(certf), str(keyf))
            ctx.set_alpn_protocols(["http/1.1"])
            self._leaf[host] = ctx
        return ctx

    def bound(self, host: str) -> tuple[Binding, ...]:
        return bmod.for_host(self.cfg.bindings, host)

    def check(self, kind: str, host: str, port: int) -> Decision:
        d = self.policy.check(host, port)
        if not d.allowed:
            self.audit(kind, host, port, False, d.reason)
            raise Denied(403, d.reason)
        return d

    # ---- HTTP ------------------------------------------------------------------
    async def handle_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._http_loop(reader, writer, fixed=None)

    async def _http_loop(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        fixed: tuple[str, int] | None,
        default_port: int = 80,
    ) -> None:
        """Serve requests from one guest connection; ``fixed``: a terminated TLS
        connection to this host:port (requests must name it)."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        upstream: _Upstream | None = None
        try:
            while True:
                ev = await _next(conn, reader, HEAD_TIMEOUT)
                if not isinstance(ev, h11.Request):
                    return
                try:
                    if ev.method == b"CONNECT" and fixed is None:
                        await self._connect(conn, ev, reader, writer)
                        return
                    upstream = await self._exchange(
                        conn, ev, reader, writer, fixed, upstream, default_port
                    )
                except Denied as d:
                    await _send_error(conn, writer, d.status, d.reason)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        finally:
            if upstream is not None:
                upstream.writer.close()

    def _target(
        self, req: h11.Request, fixed: tuple[str, int] | None, default_port: int = 80
    ) -> tuple[str, int, bytes]:
        host_hdr = next((v for k, v in req.headers if k == b"host"), b"").decode("latin-1")
        target = req.target.decode("latin-1")
        if fixed is not None:
            hn = urllib.parse.urlsplit("//" + host_hdr).hostname or ""
            if hn.lower().rstrip(".") != fixed[0] or not target.startswith("/"):
                raise Denied(421, f"request for {hn!r} on a connection to {fixed[0]}")
            return fixed[0], fixed[1], req.target
        port_default = 80
        if target.startswith("/"):
            u = urllib.parse.urlsplit("http://" + host_hdr)
            path = req.target
            port_default = default_port  # transparent: the port the guest connected to
        else:
            u = urllib.parse.urlsplit(target)
            if u.scheme != "http":
                raise Denied(400, "only http:// targets (use CONNECT for https)")
            path = (u.path or "/").encode() + (b"?" + u.query.encode() if u.query else b"")
        try:
            host = (
                normalise_host(u.hostname or "")
                if not is_ip(u.hostname or "")
                else (u.hostname or "")
            )
            port = u.port or port_default
        except (NetworkError, ValueError):
            raise Denied(400, "bad host") from None
        return host, port, path

    async def _exchange(
        self,
        conn: h11.Connection,
        req: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        fixed: tuple[str, int] | None,
        upstream: _Upstream | None,
        default_port: int = 80,
    ) -> _Upstream | None:
        host, port, path = self._target(req, fixed, default_port)
        kind = "https" if fixed else "http"
        decision = self.check(kind, host, port)
        tls = fixed is not None
        bound = self.bound(host)
        headers = [(k, v) for k, v in req.headers if k.lower() not in HOP_BY_HOP]
        headers, injected = bmod.inject(headers, bound)
        key = (host, port, tls)
        if upstream is not None and (
            upstream.key != key or upstream.conn.our_state is not h11.IDLE
        ):
            upstream.writer.close()
            upstream = None
        if upstream is None:
            r, w = await self.open_upstream(host, port, decision, tls)
            upstream = _Upstream(key, r, w)
        self.audit(kind, host, port, True, decision.reason, injected)
        if conn.client_is_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        up = upstream
        up.writer.write(
            up.conn.send(h11.Request(method=req.method, target=path, headers=headers)) or b""
        )
        # request body, streamed
        while True:
            ev = await _next(conn, reader, IO_TIMEOUT)
            if isinstance(ev, h11.Data):
                up.writer.write(up.conn.send(h11.Data(data=ev.data)) or b"")
                await up.writer.drain()
            elif isinstance(ev, h11.EndOfMessage):
                up.writer.write(up.conn.send(h11.EndOfMessage(headers=ev.headers)) or b"")
                await up.writer.drain()
                break
            else:
                raise ConnectionError("client went away mid-request")
        # response, streamed
        while True:
            ev = await _next(up.conn, up.reader, IO_TIMEOUT)
            if isinstance(ev, h11.InformationalResponse):
                continue  # 100 Continue was ours to send
            if isinstance(ev, h11.Response):
                writer.write(
                    conn.send(
                        h11.Response(
                            status_code=ev.status_code, headers=ev.headers, reason=ev.reason
                        )
                    )
                    or b""
                )
                await writer.drain()
            elif isinstance(ev, h11.Data):
                writer.write(conn.send(h11.Data(data=ev.data)) or b"")
                await writer.drain()
            elif isinstance(ev, h11.EndOfMessage):
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                break
            else:
                raise ConnectionError("upstream went away mid-response")
        if up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE:
            up.conn.start_next_cycle()
            return up
        up.writer.close()
        return None

    # ---- CONNECT and TLS -------------------------------------------------------
    async def _connect(
        self,
        conn: h11.Connection,
        req: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if not isinstance(await _next(conn, reader, HEAD_TIMEOUT), h11.EndOfMessage):
            raise Denied(400, "CONNECT with a body")
        target = req.target.decode("latin-1")
        hp = urllib.parse.urlsplit("//" + target)
        try:
            raw = hp.hostname or ""
            host = raw if is_ip(raw) else normalise_host(raw)
            port = hp.port
        except (NetworkError, ValueError):
            raise Denied(400, "bad CONNECT target") from None
        if port is None:
            raise Denied(400, "CONNECT needs HOST:PORT")
        decision = self.check("connect", host, port)
        bound = self.bound(host)
        if bound:
            self.audit(
                "connect",
                host,
                port,
                True,
                decision.reason + " (terminated)",
                [b.key for b in bound],
            )
            writer.write(conn.send(h11.Response(status_code=200, headers=[])) or b"")
            await writer.drain()
            if conn.trailing_data[0]:
                return  # the client spoke before our 200: refuse to guess
            await writer.start_tls(self.leaf_context(host))
            await self._http_loop(reader, writer, fixed=(host, port))
            return
        ur, uw = await self.open_upstream(host, port, decision, tls=False)
        self.audit("connect", host, port, True, decision.reason)
        writer.write(conn.send(h11.Response(status_code=200, headers=[])) or b"")
        await writer.drain()
        early = conn.trailing_data[0]
        if early:
            uw.write(early)
        await _splice(reader, writer, ur, uw)

    async def handle_sniff(self, sock: socket.socket, port: int) -> None:
        """A transparent listener for an explicitly allowed port: TLS (by SNI) if the
        first byte is a handshake record, plain HTTP (by Host) otherwise."""
        first = await _peek(sock, 1)
        if not first:
            return
        if first[0] == 22:
            await self.handle_tls(sock, port)
            return
        r, w = await _accepted(sock, None, MAX_HEAD)
        try:
            await self._http_loop(r, w, fixed=None, default_port=port)
        finally:
            w.close()

    async def handle_tls(self, sock: socket.socket, port: int = 443) -> None:
        hello = await _peek_hello(sock)
        name, _ = sni_from_client_hello(hello)
        if not name:
            self.audit("tls", "", port, False, "no SNI")
            return
        try:
            host = normalise_host(name)
            decision = self.check("tls", host, port)
            bound = self.bound(host)
            if bound:
                self.audit(
                    "tls",
                    host,
                    port,
                    True,
                    decision.reason + " (terminated)",
                    [b.key for b in bound],
                )
                r, w = await _accepted(sock, self.leaf_context(host), MAX_HEAD)
                try:
                    await self._http_loop(r, w, fixed=(host, port))
                finally:
                    w.close()
                return
            ur, uw = await self.open_upstream(host, port, decision, tls=False)
        except (Denied, NetworkError):
            return
        self.audit("tls", host, port, True, decision.reason)
        r, w = await _accepted(sock, None, CHUNK)
        await _splice(r, w, ur, uw)


EXPECTED = (
    OSError,
    TimeoutError,
    h11.ProtocolError,
    ssl.SSLError,
    ConnectionError,
    asyncio.IncompleteReadError,
    Denied,
    NetworkError,
)


def _dropped(exc: Exception) -> None:
    """A connection ended by an error: expected ones silently; others by type only
    (a message could quote guest-supplied bytes)."""
    if not isinstance(exc, EXPECTED):
        log.warning("proxy: connection dropped: %s", type(exc).__name__)


async def _accepted(
    sock: socket.socket, ctx: ssl.SSLContext | None, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over an accepted socket (TLS server side with ``ctx``).  The transport
    gets its own descriptor (a dup): the caller closes ``sock`` as it always does,
    and a later connection reusing the number is never closed under the transport."""
    loop = asyncio.get_running_loop()
    sock = sock.dup()
    reader = asyncio.StreamReader(limit=limit)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol, sock, ssl=ctx, ssl_handshake_timeout=HEAD_TIMEOUT if ctx else None
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def _listen(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(128)
    s.setblocking(False)
    return s


async def _peek(sock: socket.socket, n: int) -> bytes:
    """At least one byte (up to ``n``) peeked, within HEAD_TIMEOUT; b"" on EOF."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEAD_TIMEOUT
    while loop.time() < deadline:
        try:
            return sock.recv(n, socket.MSG_PEEK)
        except BlockingIOError:
            await asyncio.sleep(0.005)
    return b""


async def _peek_hello(sock: socket.socket) -> bytes:
    """The ClientHello, peeked (left in the socket), within HEAD_TIMEOUT."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEAD_TIMEOUT
    need = 5
    data = b""
    while loop.time() < deadline:
        try:
            data = sock.recv(min(max(need, 5), 16 << 10), socket.MSG_PEEK)
        except BlockingIOError:
            data = b""
        else:
            if not data:
                return b""
            _, need = sni_from_client_hello(data)
            if need <= len(data):
                return data
        await asyncio.sleep(0.005)
    return b""


async def _next(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float) -> Any:
    """The next h11 event, reading as needed (EOF → ConnectionClosed).  The whole
    event must arrive within ``timeout`` (a head trickled byte by byte is cut off)."""
    ev = conn.next_event()
    if ev is not h11.NEED_DATA:
        return ev
    async with asyncio.timeout(timeout):
        while True:
            conn.receive_data(await reader.read(CHUNK))
            ev = conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev


async def _send_error(
    conn: h11.Connection, writer: asyncio.StreamWriter, status: int, reason: str
) -> None:
    body = f"mvm egress proxy: {reason}\n".encode()
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        raise ConnectionError(reason)
    writer.write(
        conn.send(
            h11.Response(
                status_code=status,
                headers=[
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            )
        )
        or b""
    )
    writer.write(conn.send(h11.Data(data=body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()
    raise ConnectionError("refused")


async def _splice(
    r1: asyncio.StreamReader,
    w1: asyncio.StreamWriter,
    r2: asyncio.StreamReader,
    w2: asyncio.StreamWriter,
) -> None:
    """Copy both ways until both sides are done (half-closes passed on)."""

    loop = asyncio.get_running_loop()
    for w in (w1, w2):  # bigger reads per wakeup: a tunnel is pure copying
        with contextlib.suppress(AttributeError):
            w.transport.max_size = TUNNEL_READ  # type: ignore[attr-defined]

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(IO_TIMEOUT) as idle:
                while True:
                    data = await r.read(TUNNEL_READ)
                    if not data:
                        break
                    w.write(data)
                    await w.drain()
                    idle.reschedule(loop.time() + IO_TIMEOUT)
            if w.can_write_eof():
                w.write_eof()
        except (OSError, TimeoutError, ConnectionError):
            w.close()

    try:
        await asyncio.gather(pipe(r1, w2), pipe(r2, w1))
    finally:
        w2.close()
