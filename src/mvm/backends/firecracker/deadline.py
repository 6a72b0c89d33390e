"""A whole-call deadline for httpx over a Unix socket.

httpx's timeouts bound each socket operation, not the call: a peer that sends a
header line every 0.9 s keeps a call with ``timeout=1.0`` alive for as long as
it likes (measured: 50 s for 100 lines).  The API client must never hang on a
wedged or hostile Firecracker, so its transport's streams clamp every read and
write to what is left of the current call's :class:`Deadline`; past it they
raise httpcore's timeout, which httpx reports as ``httpx.TimeoutException``.

Imported only when a call is made (httpx/httpcore cost ~90 ms to import).
"""

from __future__ import annotations

import time
import typing

import httpcore
import httpx


class Deadline:
    """When the running call must be over (``time.monotonic()``); None: no bound."""

    def __init__(self) -> None:
        self.at: float | None = None

    def left(self, timeout: float | None, exc: type[Exception]) -> float | None:
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise exc("the call's deadline has passed")
        return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self.inner = inner
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.deadline.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def get_extra_info(self, info: str) -> typing.Any:
        return self.inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, deadline: Deadline) -> None:
        self.inner = httpcore.SyncBackend()
        self.deadline = deadline

    def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:  # fmt: skip
        t = self.deadline.left(timeout, httpcore.ConnectTimeout)
        return _Stream(self.inner.connect_unix_socket(path, t, socket_options), self.deadline)

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:  # fmt: skip
        raise httpcore.ConnectError("only a Unix socket is spoken to")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def transport(uds: str, deadline: Deadline) -> httpx.HTTPTransport:
    """httpx's own transport on ``uds``, its connection pool on deadline-bound streams
    (httpx has no public way to pass httpcore a network backend)."""
    t = httpx.HTTPTransport(uds=uds)
    t._pool = httpcore.ConnectionPool(uds=uds, network_backend=_Backend(deadline))
    return t
