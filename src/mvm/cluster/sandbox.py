"""``mvm.cluster.Sandbox``: a sandbox placed somewhere in the cluster.

The same shape as :class:`mvm.Sandbox` where it makes sense — ``create``,
``exec``, ``close``, a context manager — but the VM runs on whichever host
placement chose, so ``exec`` goes through the worker on that host (its
agent sidecar, as ``mvm.Sandbox.exec`` there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from mvm.cluster import client, engine
from mvm.errors import NotFoundError
from mvm.sdk.options import DEFAULT_CALL_TIMEOUT, check_timeout
from mvm.sdk.result import CommandResult
from mvm.sdk.sandbox import Command, argv_of


class Sandbox:
    """One cluster VM.  ``Sandbox.create(template="web")`` places and starts it."""

    def __init__(self, name: str, host: str, ports: Sequence[str] = (), *,
                 address: str | None = None, timeout: float | None = None) -> None:  # fmt: skip
        self.name, self.host, self.ports = name, host, list(ports)
        self.default_timeout = check_timeout(timeout, DEFAULT_CALL_TIMEOUT)
        self._address = address
        self._closed = False

    def __repr__(self) -> str:
        return f"cluster.Sandbox({self.name!r} on {self.host})"

    @classmethod
    def create(cls, template: str, *, cpus: int | None = None, mem: int | None = None,
               ports: Sequence[str] = (), secrets: Sequence[str] = (), spread: bool = False,
               network: str | None = None, allow: Sequence[str] = (),
               address: str | None = None, timeout: float | None = None,
               call_timeout: float | None = None) -> Sandbox:  # fmt: skip
        """Place one VM of ``template`` (pack by default) and start it; ``ports`` as
        ``-p`` (``0:GUEST`` picks a free port on the chosen host); ``secrets``,
        ``network`` and ``allow`` as for :meth:`mvm.Sandbox.create`."""
        t = check_timeout(timeout, engine.START_TIMEOUT + 60)
        placed = client.up(template, replicas=1, cpus=cpus, mem=mem, ports=ports,
                           secrets=secrets, spread=spread, network=network, allow=allow,
                           address=address, timeout=t)  # fmt: skip
        p = placed[0]
        return cls(p["name"], p["host"], p["ports"], address=address, timeout=call_timeout)

    def exec(self, cmd: Command, *, env: Mapping[str, str] | None = None,
             cwd: str | None = None, input: bytes | str | None = None,
             timeout: float | None = None) -> CommandResult:  # fmt: skip
        """Run ``cmd`` to completion in the VM (a string under ``/bin/sh -c``)."""
        argv = argv_of(cmd)
        data = input.encode() if isinstance(input, str) else input
        t = check_timeout(timeout, self.default_timeout)
        code, out, err, sig = client.exec_in(self.name, argv, env=dict(env) if env else None,
                                             cwd=cwd, input=data, timeout=t,
                                             address=self._address)  # fmt: skip
        return CommandResult(code, out, err, sig)

    def info(self) -> dict[str, Any]:
        """This VM's line of ``cluster ls``."""
        for v in client.ls(self._address):
            if v["name"] == self.name:
                return v
        raise NotFoundError(f"no cluster VM named {self.name!r}")

    def close(self) -> None:
        """Stop and remove the VM on its host; closing twice is fine."""
        if self._closed:
            return
        with contextlib.suppress(NotFoundError):
            client.down(self.name, address=self._address)
        self._closed = True

    kill = close

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()
