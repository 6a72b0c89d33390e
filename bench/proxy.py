"""Egress proxy benchmark: requests/s and added latency through the proxy against a
direct connection to the same loopback server, in one run.

Three processes: a small asyncio HTTP/1.1 server (keep-alive, plain and TLS),
the real :class:`mvm.network.proxy.Proxy` (as proxyd runs it), and this
client.  Reported, each as median of the per-request samples:

* HTTP: sequential keep-alive GETs, direct vs through the proxy (absolute-form);
* HTTPS with injection: direct TLS vs CONNECT to a bound host (terminated with
  the per-VM CA, header injected, upstream verified);
* a streamed 100 MB download: direct vs plain HTTP through the proxy vs a
  CONNECT tunnel; throughput ratios.

Goals (issue 13): ≥ 50 % of direct throughput, p50 added ≤ 2 ms, download ratio ≥ 0.8.

Usage: python bench/proxy.py [--requests N] [--mib N]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mvm.network import bindings, ca, policy  # noqa: E402
from mvm.network.proxy import Proxy, ProxyConfig  # noqa: E402

BODY = b"x" * 256


async def _serve(port_q: mp.Queue, tls_dir: str) -> None:  # type: ignore[type-arg]
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path.startswith(b"/big/"):
                    size = int(path.split(b"/")[2])
                    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
                    block = b"y" * (1 << 20)
                    while size:
                        n = min(size, len(block))
                        w.write(block[:n])
                        await w.drain()
                        size -= n
                else:
                    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY)
                    await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    authority = ca.create(Path(tls_dir), "bench-upstream", ("api.test", "plain.test"))
    certf, keyf = ca.mint(authority, "api.test", Path(tls_dir))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certf), str(keyf))
    plain = await asyncio.start_server(handle, "127.0.0.1", 0)
    tls = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port_q.put((plain.sockets[0].getsockname()[1], tls.sockets[0].getsockname()[1],
                str(authority.cert_path)))  # fmt: skip
    await asyncio.Event().wait()


def server_main(q: mp.Queue, tls_dir: str) -> None:  # type: ignore[type-arg]
    asyncio.run(_serve(q, tls_dir))


def proxy_main(cfg_json: dict[str, object], sock_dir: str, ready: mp.Event) -> None:  # type: ignore[type-arg]
    async def main() -> None:
        d = Path(sock_dir)
        proxy = Proxy(ProxyConfig.from_json(cfg_json))
        await proxy.serve(d / "http.sock", d / "tls.sock", d / "dns.sock")
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _response(f: socket.socket | ssl.SSLSocket, buf: bytearray) -> int:
    """Read one response (content-length framed); return its body size."""
    while b"\r\n\r\n" not in buf:
        d = f.recv(1 << 20)
        if not d:
            raise ConnectionError("closed")
        buf += d
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    n = int(
        next(
            ln.split(b":")[1]
            for ln in head.split(b"\r\n")
            if ln.lower().startswith(b"content-length")
        )
    )
    got = len(rest)
    buf.clear()
    while got < n:
        d = f.recv(min(1 << 20, n - got) if n - got > 0 else 1)
        if not d:
            raise ConnectionError("closed")
        got += len(d)
    if got > n:
        buf += rest[n:]
    return n


def timed_gets(s: socket.socket | ssl.SSLSocket, target: str, host: str, n: int) -> list[float]:
    buf = bytearray()
    req = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        s.sendall(req)
        _response(s, buf)
        out.append(time.perf_counter() - t0)
    return out


def unix(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    return s


def connect(path: Path, target: str) -> socket.socket:
    s = unix(path)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    assert data.startswith(b"HTTP/1.1 200"), data
    return s


def download(s: socket.socket | ssl.SSLSocket, target: str, host: str) -> float:
    t0 = time.perf_counter()
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    n = _response(s, bytearray())
    return n / (time.perf_counter() - t0)


def stats(name: str, direct: list[float], proxied: list[float]) -> None:
    def p(xs: list[float], q: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000

    rd, rp = len(direct) / sum(direct), len(proxied) / sum(proxied)
    print(f"{name}: direct {rd:,.0f} req/s p50 {p(direct, .5):.3f} ms p99 {p(direct, .99):.3f} ms;"
          f" proxy {rp:,.0f} req/s p50 {p(proxied, .5):.3f} ms p99 {p(proxied, .99):.3f} ms;"
          f" throughput ratio {rp / rd:.2f}, added p50 {p(proxied, .5) - p(direct, .5):.3f} ms,"
          f" added p99 {p(proxied, .99) - p(direct, .99):.3f} ms")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3, help="downloads per path (median)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "up").mkdir()
        (d / "net").mkdir(mode=0o700)
        q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        srv = mp.Process(target=server_main, args=(q, str(d / "up")), daemon=True)
        srv.start()
        hp, hps, upstream_ca = q.get(timeout=30)
        pol = policy.build("none", (f"api.test:{hps}", f"plain.test:{hp}", f"plain.test:{hps}"),
                           add_hosts=("api.test:127.0.0.1", "plain.test:127.0.0.1"))  # fmt: skip
        b = bindings.parse("TOKEN=bench-secret:api.test", {})
        ca.create(d / "net", "bench", ("api.test",))
        cfg = ProxyConfig(pol, (b,), d / "net", None, Path(upstream_ca), "bench")
        ready = mp.Event()
        px = mp.Process(target=proxy_main, args=(cfg.to_json(), str(d), ready), daemon=True)
        px.start()
        assert ready.wait(30)
        n = args.requests
        print(
            f"{n} sequential keep-alive requests per path, {BODY.__len__()} B bodies; "
            f"downloads of {args.mib} MiB, median of {args.runs}"
        )
        # HTTP
        with socket.create_connection(("127.0.0.1", hp)) as s:
            timed_gets(s, "/", "plain.test", 100)
            direct = timed_gets(s, "/", "plain.test", n)
        with unix(d / "http.sock") as s:
            url = f"http://plain.test:{hp}/"
            timed_gets(s, url, "plain.test", 100)
            proxied = timed_gets(s, url, "plain.test", n)
        stats("HTTP", direct, proxied)
        # HTTPS with injection (the client trusts the VM CA for the proxied path)
        upctx = ssl.create_default_context(cafile=upstream_ca)
        vmctx = ssl.create_default_context(cafile=str(d / "net" / "ca.pem"))
        with upctx.wrap_socket(socket.create_connection(("127.0.0.1", hps)),
                               server_hostname="api.test") as s:  # fmt: skip
            timed_gets(s, "/", "api.test", 100)
            direct = timed_gets(s, "/", "api.test", n)
        with vmctx.wrap_socket(connect(d / "http.sock", f"api.test:{hps}"),
                               server_hostname="api.test") as s:  # fmt: skip
            timed_gets(s, "/", "api.test", 100)
            proxied = timed_gets(s, "/", "api.test", n)
        stats("HTTPS+inject", direct, proxied)
        # large downloads
        big = f"/big/{args.mib << 20}"
        res: dict[str, list[float]] = {"direct": [], "proxy-http": [], "connect-tunnel": []}
        for _ in range(args.runs):
            with socket.create_connection(("127.0.0.1", hp)) as s:
                res["direct"].append(download(s, big, "plain.test"))
            with unix(d / "http.sock") as s:
                res["proxy-http"].append(download(s, f"http://plain.test:{hp}{big}", "plain.test"))
            with connect(d / "http.sock", f"plain.test:{hp}") as s:
                res["connect-tunnel"].append(download(s, big, "plain.test"))
        med = {k: statistics.median(v) for k, v in res.items()}
        print("download: " + ", ".join(f"{k} {v / (1 << 20):,.0f} MiB/s" for k, v in med.items())
              + f"; ratio proxy-http {med['proxy-http'] / med['direct']:.2f}, "
              f"connect-tunnel {med['connect-tunnel'] / med['direct']:.2f}")  # fmt: skip
        px.terminate()
        srv.terminate()


if __name__ == "__main__":
    main()
