"""This MCP server's sandboxes, kept within its :class:`~mvm.mcp.policy.Policy`.

The manager knows only the sandboxes it created (names ``PREFIX…``): a model
can never reach another VM on the host by naming it.  Sandboxes past the
policy's lifetime are destroyed (checked before every call and by a reaper
thread); :meth:`Manager.close` destroys the rest when the server stops,
unless ``keep``.  Every method is blocking (the server runs it in a worker
thread) and returns plain JSON-able dicts, never a secret value.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mvm.errors import MvmError, NotFoundError
from mvm.log import get_logger
from mvm.mcp.policy import Policy, PolicyError
from mvm.sdk.options import fresh_name
from mvm.sdk.sandbox import Sandbox

log = get_logger(__name__)
PREFIX = "mcp-"
MAX_OUTPUT = 256 * 1024  # of each of stdout/stderr returned to the model
MAX_FILE = 8 << 20  # a read_file answer
CREATE_TIMEOUT = 600.0


@dataclass
class Owned:
    sandbox: Sandbox
    template: str
    network: str
    secrets: tuple[str, ...]
    started: float = field(default_factory=time.monotonic)
    created_at: float = field(default_factory=time.time)

    def describe(self, now: float, lifetime: float) -> dict[str, Any]:
        age = now - self.started
        return {"name": self.sandbox.name, "template": self.template, "network": self.network,
                "secrets": list(self.secrets), "age_s": round(age, 1),
                "expires_in_s": round(max(0.0, lifetime - age), 1)}  # fmt: skip


def _clip(data: bytes) -> tuple[str, bool]:
    return data[:MAX_OUTPUT].decode("utf-8", "replace"), len(data) > MAX_OUTPUT


class Manager:
    def __init__(self, policy: Policy, *, keep: bool = False, prefix: str = PREFIX) -> None:
        self.policy, self.keep, self.prefix = policy, keep, prefix
        self._lock = threading.Lock()
        self._owned: dict[str, Owned] = {}
        self._pending = 0
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    # -- lifetime --

    def start_reaper(self, every: float | None = None) -> None:
        period = every or max(0.5, min(10.0, self.policy.max_lifetime / 4))

        def loop() -> None:
            while not self._stop.wait(period):
                with contextlib.suppress(Exception):  # never let the reaper die
                    self.reap()

        self._reaper = threading.Thread(target=loop, name="mvm-mcp-reaper", daemon=True)
        self._reaper.start()

    def reap(self) -> list[str]:
        """Destroy sandboxes older than the policy allows; their names."""
        now = time.monotonic()
        with self._lock:
            old = [n for n, o in self._owned.items() if now - o.started > self.policy.max_lifetime]
            victims = [self._owned.pop(n) for n in old]
        for o in victims:
            log.info("mcp: %s outlived max_lifetime; destroying it", o.sandbox.name)
            with contextlib.suppress(MvmError):
                o.sandbox.close()
        return old

    def close(self, *, detached: bool = False) -> None:
        """Stop the reaper; destroy every sandbox unless ``keep`` — here, or with
        ``detached`` in a process of its own (:mod:`mvm.mcp.cleanup`), so a
        client that signals the server soon after closing stdin cannot cut the
        cleanup short."""
        self._stop.set()
        with self._lock:
            owned = list(self._owned.values())
            if not self.keep:
                self._owned.clear()
        if self.keep or not owned:
            return
        if detached:
            from mvm.mcp.cleanup import spawn

            spawn([o.sandbox.name for o in owned])
            return
        from mvm.mcp.cleanup import down_all

        down_all([o.sandbox.name for o in owned])

    # -- lookups --

    def _get(self, name: str) -> Sandbox:
        self.reap()
        with self._lock:
            o = self._owned.get(name) if isinstance(name, str) else None
        if o is None:
            raise NotFoundError(f"no sandbox named {name!r} from this server",
                                hint="list_sandboxes lists them")  # fmt: skip
        return o.sandbox

    def _reserve(self) -> None:
        self.reap()
        with self._lock:
            self.policy.check_count(len(self._owned) + self._pending)
            self._pending += 1

    def _adopt(self, sb: Sandbox | None, template: str, network: str,
               secrets: tuple[str, ...]) -> None:  # fmt: skip
        with self._lock:
            self._pending -= 1
            if sb is not None:
                self._owned[sb.name] = Owned(sb, template, network, secrets)

    # -- tools --

    def create(self, template: str, network: str = "none",
               secrets: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
        self.policy.check_template(template)
        self.policy.check_network(network)
        names = tuple(dict.fromkeys(secrets))
        bindings = self.policy.bindings(names)
        self._reserve()
        sb = None
        try:
            sb = Sandbox.create(template=template, name=fresh_name(self.prefix), network=network,
                                secrets=bindings, timeout=CREATE_TIMEOUT)  # fmt: skip
        finally:
            self._adopt(sb, template, network, names)
        info = sb.info()
        return {"name": sb.name, "template": template, "network": network,
                "secrets": list(names), "boot": info.get("boot"),
                "max_lifetime_s": self.policy.max_lifetime}  # fmt: skip

    def fork(self, name: str) -> dict[str, Any]:
        src = self._get(name)
        with self._lock:
            parent = self._owned[name]
        self._reserve()
        child = None
        try:
            child = src.fork(fresh_name(self.prefix))
        finally:
            self._adopt(child, parent.template, parent.network, parent.secrets)
        return {"name": child.name, "forked_from": name, "template": parent.template}

    def destroy(self, name: str) -> dict[str, Any]:
        sb = self._get(name)
        with self._lock:
            self._owned.pop(name, None)
        sb.close()
        return {"name": name, "destroyed": True}

    def list(self) -> builtins.list[dict[str, Any]]:
        self.reap()
        now = time.monotonic()
        with self._lock:
            return [o.describe(now, self.policy.max_lifetime) for o in self._owned.values()]

    def exec(self, name: str, command: str | Sequence[str], *, cwd: str | None = None,
             env: Mapping[str, str] | None = None, stdin: str | None = None,
             timeout: float | None = None) -> dict[str, Any]:  # fmt: skip
        sb = self._get(name)
        t = self.policy.exec_timeout(timeout)
        r = sb.exec(command, cwd=cwd, env=env, input=stdin, timeout=t)
        out, out_cut = _clip(r.stdout_bytes)
        err, err_cut = _clip(r.stderr_bytes)
        return {"exit_code": r.exit_code, "signal": r.signal, "stdout": out, "stderr": err,
                "truncated": out_cut or err_cut}  # fmt: skip

    def write_file(self, name: str, path: str, content: str, *, encoding: str = "utf-8",
                   mode: int = 0o644) -> dict[str, Any]:  # fmt: skip
        sb = self._get(name)
        if encoding == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except ValueError as exc:
                raise PolicyError("content is not valid base64") from exc
        elif encoding == "utf-8":
            data = content.encode()
        else:
            raise PolicyError("encoding must be utf-8 or base64")
        size = sb.files.write(path, data, mode=mode)
        return {"path": path, "size": size}

    def read_file(self, name: str, path: str, *, encoding: str = "utf-8") -> dict[str, Any]:
        if encoding not in ("utf-8", "base64"):
            raise PolicyError("encoding must be utf-8 or base64")
        sb = self._get(name)
        data = sb.files.read(path, max_size=MAX_FILE)
        if encoding == "base64":
            text = base64.b64encode(data).decode()
        else:
            text = data.decode("utf-8", "replace")
        return {"path": path, "size": len(data), "encoding": encoding, "content": text}

    def list_files(self, name: str, path: str) -> builtins.list[dict[str, Any]]:
        sb = self._get(name)
        return [{"name": e.name, "type": e.type, "mode": e.mode, "size": e.size}
                for e in sb.files.list(path)]  # fmt: skip

    def logs(self, name: str, lines: int = 200) -> str:
        return self._get(name).logs(lines)
