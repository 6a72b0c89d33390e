"""``mvm.AsyncSandbox``: :class:`~mvm.sdk.sandbox.Sandbox` as coroutines, for agents
that drive many sandboxes at once.

The runtime is blocking (sockets, QMP, file locks that already serialise
what must be serial), so each call runs in a shared, bounded thread pool
(``MAX_WORKERS``) and awaits it.  Every call keeps the sync call's timeout; a
``create`` or ``fork`` whose awaiting task is cancelled still finishes in its
thread, and the VM it made is removed then, so cancelling leaves no VM.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from mvm.sdk.result import Chunk, CommandResult
from mvm.sdk.sandbox import Command, CommandStream, Sandbox

if TYPE_CHECKING:
    from mvm.agent.models import Entry

T = TypeVar("T")
MAX_WORKERS = 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="mvm-sdk")
        return _pool


async def _run(fn: Callable[[], T], on_abandon: Callable[[T], None] | None = None) -> T:
    """``fn()`` in the pool; if the caller is cancelled, ``on_abandon`` gets the result."""
    fut: Future[T] = _executor().submit(fn)
    try:
        return await asyncio.wrap_future(fut)
    except asyncio.CancelledError:
        if on_abandon is not None:

            def later(f: Future[T]) -> None:
                if not f.cancelled() and f.exception() is None:
                    on_abandon(f.result())

            fut.add_done_callback(later)
        raise


class AsyncFiles:
    """:class:`~mvm.sdk.sandbox.Files` as coroutines."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._files = sandbox.files

    async def read(self, path: str, *, timeout: float | None = None) -> bytes:
        return await _run(lambda: self._files.read(path, timeout=timeout))

    async def read_text(self, path: str, *, timeout: float | None = None) -> str:
        return await _run(lambda: self._files.read_text(path, timeout=timeout))

    async def write(self, path: str, data: bytes | str, *, mode: int = 0o644,
                    timeout: float | None = None) -> int:  # fmt: skip
        return await _run(lambda: self._files.write(path, data, mode=mode, timeout=timeout))

    async def list(self, path: str = "/", *, timeout: float | None = None) -> list[Entry]:
        return await _run(lambda: self._files.list(path, timeout=timeout))

    async def remove(self, path: str, *, recursive: bool = False,
                     timeout: float | None = None) -> None:  # fmt: skip
        await _run(lambda: self._files.remove(path, recursive=recursive, timeout=timeout))


class AsyncCommandStream:
    """A running command's chunks as an async iterator; ``result`` once it ended."""

    def __init__(self, stream: CommandStream) -> None:
        self._stream = stream
        self._it = iter(stream)

    @property
    def result(self) -> CommandResult | None:
        return self._stream.result

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self

    async def __anext__(self) -> Chunk:
        sentinel = object()
        chunk = await _run(lambda: next(self._it, sentinel))
        if chunk is sentinel:
            raise StopAsyncIteration
        assert isinstance(chunk, Chunk)
        return chunk

    async def aclose(self) -> None:
        await _run(self._stream.close)

    async def __aenter__(self) -> AsyncCommandStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncSandbox:
    """The async twin of :class:`~mvm.sdk.sandbox.Sandbox`::

    async with await AsyncSandbox.create(template="py") as sb:
        r = await sb.exec("python3 -c 'print(6*7)'")
    """

    def __init__(self, sandbox: Sandbox) -> None:
        self.sync = sandbox
        self.files = AsyncFiles(sandbox)

    @property
    def name(self) -> str:
        return self.sync.name

    def __repr__(self) -> str:
        return f"AsyncSandbox({self.name!r})"

    @classmethod
    async def create(
        cls, template: str | None = None, *, project: str | Path | None = None,
        image: str | None = None, name: str | None = None,
        secrets: Sequence[str] | None = None, network: str | None = None,
        allow: Sequence[str] | None = None, ports: Sequence[str] | None = None,
        credentials: Mapping[str, str | bytes] | None = None, cpus: int | None = None,
        mem: int | None = None, cold: bool = False, timeout: float | None = None,
        call_timeout: float | None = None,
    ) -> AsyncSandbox:  # fmt: skip
        """See :meth:`Sandbox.create <mvm.sdk.sandbox.Sandbox.create>`."""
        sb = await _run(lambda: Sandbox.create(
            template, project=project, image=image, name=name, secrets=secrets,
            network=network, allow=allow, ports=ports, credentials=credentials, cpus=cpus,
            mem=mem, cold=cold, timeout=timeout, call_timeout=call_timeout,
        ), on_abandon=Sandbox.close)  # fmt: skip
        return cls(sb)

    @classmethod
    async def connect(cls, name: str, *, timeout: float | None = None) -> AsyncSandbox:
        return cls(await _run(lambda: Sandbox.connect(name, timeout=timeout)))

    async def close(self) -> None:
        await _run(self.sync.close)

    kill = close

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        # shielded: a cancelled task still removes its VM
        await asyncio.shield(self.close())

    async def info(self) -> dict[str, object]:
        return await _run(self.sync.info)

    async def pause(self, *, timeout: float | None = None) -> None:
        await _run(lambda: self.sync.pause(timeout=timeout))

    async def resume(self, *, timeout: float | None = None) -> None:
        await _run(lambda: self.sync.resume(timeout=timeout))

    async def fork(self, name: str | None = None, *, timeout: float | None = None
                   ) -> AsyncSandbox:  # fmt: skip
        sb = await _run(lambda: self.sync.fork(name, timeout=timeout), on_abandon=Sandbox.close)
        return type(self)(sb)

    async def logs(self, lines: int = 200) -> str:
        return await _run(lambda: self.sync.logs(lines))

    async def exec(self, cmd: Command, *, env: Mapping[str, str] | None = None,
                   cwd: str | None = None, input: bytes | str | None = None,
                   timeout: float | None = None) -> CommandResult:  # fmt: skip
        return await _run(lambda: self.sync.exec(cmd, env=env, cwd=cwd, input=input,
                                                 timeout=timeout))  # fmt: skip

    async def exec_stream(self, cmd: Command, *, env: Mapping[str, str] | None = None,
                          cwd: str | None = None, timeout: float | None = None
                          ) -> AsyncCommandStream:  # fmt: skip
        s = await _run(lambda: self.sync.exec_stream(cmd, env=env, cwd=cwd, timeout=timeout),
                       on_abandon=CommandStream.close)  # fmt: skip
        return AsyncCommandStream(s)
