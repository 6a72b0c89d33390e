"""Real servers for the network tests: HTTP and HTTPS on loopback that echo the
request headers they receive as JSON, plus a streamed and a large response."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mvm.network import ca as camod
from mvm.network.proxy import Proxy, ProxyConfig

SENSITIVE = {"authorization", "x-api-key"}


def digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a: object) -> None:
        pass

    def _echo(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(5):
                chunk = f"data: {i} {time.monotonic():.3f}\n\n".encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
                time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/big/"):
            size = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("content-length", str(size))
            self.end_headers()
            block = b"x" * (1 << 20)
            left = size
            while left:
                n = min(left, len(block))
                self.wfile.write(block[:n])
                left -= n
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        for k in SENSITIVE & headers.keys():  # echoed as a digest: the reply goes to the guest
            headers[k] = digest(headers[k])
        out = json.dumps(
            {"path": self.path, "method": self.command, "body_len": len(body), "headers": headers}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _echo


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def echo_server(
    tls_dir: Path | None = None, host: str = "api.test", bind: str = "127.0.0.1"
) -> Iterator[tuple[int, Path | None]]:
    """(port, CA file trusting the server's certificate or None for plain HTTP)."""
    srv = _Server((bind, 0), _Handler)
    cafile = None
    if tls_dir is not None:
        authority = camod.create(tls_dir, "test-upstream", (host,))
        certf, keyf = camod.mint(authority, host, tls_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(certf), str(keyf))
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        cafile = authority.cert_path
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1], cafile
    finally:
        srv.shutdown()
        srv.server_close()


@contextmanager
def running_proxy(cfg: ProxyConfig, sock_dir: Path) -> Iterator[dict[str, Path]]:
    """A real Proxy on its own event loop thread; yields its socket paths."""
    socks = {k: sock_dir / f"{k}.sock" for k in ("http", "tls", "dns")}
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def main() -> None:
        proxy = Proxy(cfg)
        servers = await proxy.serve(socks["http"], socks["tls"], socks["dns"])
        stop.append(asyncio.Event())
        ready.set()
        await stop[0].wait()
        for s in servers:
            s.close()
        proxy.close()

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        yield socks
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        t.join(10)
