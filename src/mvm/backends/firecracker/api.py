"""A client for Firecracker's REST API over its Unix socket.

httpx (``HTTPTransport(uds=…)``) speaks the HTTP; this module adds what mvm
needs on top: every call has a timeout, a refused call raises one
:class:`~mvm.errors.BackendError` carrying Firecracker's own
``fault_message``, and the replies mvm reads are validated into small typed
models (a reply that does not have the expected shape is an error, not a
``KeyError`` three calls later).

Firecracker logs the path *and body* of every PUT/PATCH at its default log
level, so nothing secret may ever be sent here: credentials travel in the
guest-data drive (``mvm.backends.guestdrive``), referenced by path only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvm.errors import BackendError

if TYPE_CHECKING:  # httpx costs ~90 ms to import: only a call to Firecracker pays it
    import httpx

    from mvm.backends.firecracker.deadline import Deadline

# the host part is ignored over a Unix socket; Firecracker wants a Host header
BASE = "http://localhost"
STATES = ("Not started", "Running", "Paused")


@dataclass(frozen=True)
class InstanceInfo:
    """``GET /``: which microVM this is and whether its vCPUs run."""

    id: str
    state: str  # "Not started" | "Running" | "Paused"
    vmm_version: str
    app_name: str

    @classmethod
    def parse(cls, raw: Any) -> InstanceInfo:
        if not isinstance(raw, dict):
            raise BackendError("Firecracker: GET / did not answer a JSON object")
        vals = {k: raw.get(k) for k in ("id", "state", "vmm_version", "app_name")}
        if not all(isinstance(v, str) for v in vals.values()) or vals["state"] not in STATES:
            raise BackendError("Firecracker: GET / answered an unexpected instance description")
        return cls(**vals)  # type: ignore[arg-type]


@dataclass(frozen=True)
class VmConfig:
    """``GET /vm/config``: the full configuration as Firecracker holds it."""

    machine: dict[str, Any]
    boot_source: dict[str, Any]
    drives: tuple[dict[str, Any], ...]
    network_interfaces: tuple[dict[str, Any], ...]
    vsock: dict[str, Any] | None
    mmds: dict[str, Any] | None
    logger: dict[str, Any] | None
    metrics: dict[str, Any] | None

    @classmethod
    def parse(cls, raw: Any) -> VmConfig:
        if not isinstance(raw, dict):
            raise BackendError("Firecracker: GET /vm/config did not answer a JSON object")

        def obj(key: str, required: bool = False) -> dict[str, Any] | None:
            v = raw.get(key)
            if v is None and not required:
                return None
            if not isinstance(v, dict):
                raise BackendError(f"Firecracker: /vm/config has no valid {key!r}")
            return v

        def objs(key: str) -> tuple[dict[str, Any], ...]:
            v = raw.get(key)
            if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
                raise BackendError(f"Firecracker: /vm/config has no valid {key!r}")
            return tuple(v)

        return cls(
            machine=obj("machine-config", True) or {}, boot_source=obj("boot-source") or {},
            drives=objs("drives"), network_interfaces=objs("network-interfaces"),
            vsock=obj("vsock"), mmds=obj("mmds-config"), logger=obj("logger"),
            metrics=obj("metrics"),
        )  # fmt: skip


def fault(resp: httpx.Response) -> str:
    """Firecracker's ``fault_message`` (or the status line when there is none)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("fault_message"), str):
        text = " ".join(str(body["fault_message"]).split())[:500]
        return "".join(c if c.isprintable() else "?" for c in text)  # for a terminal
    return f"HTTP {resp.status_code} {resp.reason_phrase}"


class ApiClient:
    """One connection pool to one Firecracker's API socket."""

    def __init__(self, sock: Path, timeout: float = 5.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self._client: httpx.Client | None = None
        self._deadline: Deadline | None = None

    def _http(self) -> httpx.Client:
        import httpx

        from mvm.backends.firecracker.deadline import Deadline
        from mvm.backends.firecracker.deadline import transport as bounded

        if self._client is None:
            self._deadline = Deadline()
            transport = bounded(str(self.sock), self._deadline)
            self._client = httpx.Client(transport=transport, base_url=BASE, timeout=self.timeout)
        return self._client

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Any:
        """Send one call; the decoded JSON reply (None for 204); ``BackendError`` on a fault.
        ``timeout`` bounds the whole call, not each socket operation (:mod:`.deadline`)."""
        import httpx

        what = f"{method} {path}"
        limit = self.timeout if timeout is None else timeout
        client = self._http()
        assert self._deadline is not None
        self._deadline.at = time.monotonic() + limit
        try:
            resp = client.request(
                method, path, content=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=limit,
            )  # fmt: skip
        except httpx.TimeoutException as exc:
            raise BackendError(f"Firecracker did not answer {what} in time") from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"Firecracker API unreachable ({what}): {exc}") from exc
        finally:
            self._deadline.at = None
        if resp.status_code >= 300:
            raise BackendError(f"Firecracker refused {what}: {fault(resp)}")
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise BackendError(f"Firecracker answered {what} with invalid JSON") from exc

    def put(self, path: str, body: Any, timeout: float | None = None) -> None:
        self.request("PUT", path, body, timeout)

    def patch(self, path: str, body: Any) -> None:
        self.request("PATCH", path, body)

    def instance(self, timeout: float | None = None) -> InstanceInfo:
        return InstanceInfo.parse(self.request("GET", "/", timeout=timeout))

    def vm_config(self) -> VmConfig:
        return VmConfig.parse(self.request("GET", "/vm/config"))

    def mmds(self) -> Any:
        return self.request("GET", "/mmds")

    def action(self, action_type: str, timeout: float | None = None) -> None:
        self.put("/actions", {"action_type": action_type}, timeout)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
