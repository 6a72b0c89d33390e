"""The SDK's argument checks and helpers (pure: no VM)."""

from __future__ import annotations

import threading
import time

import pytest

import mvm
from mvm.errors import ConfigError, CredentialError, DeadlineError
from mvm.sdk.deadline import bounded
from mvm.sdk.options import check_timeout, create_options, fresh_name
from mvm.sdk.result import CommandResult
from mvm.sdk.sandbox import argv_of


def test_exactly_one_source() -> None:
    for kw in ({}, {"template": "a", "image": "oci:x"}, {"template": "a", "project": "."}):
        with pytest.raises(ConfigError, match="exactly one"):
            create_options(**kw)  # type: ignore[arg-type]


def test_options_become_a_run_config() -> None:
    o = create_options("py", network="agent", allow=["api.example.com"], ports=["8080:80"],
                       secrets=["K=v:api.example.com"], credentials={"DB": "pw", "RAW": b"\0"},
                       cpus=2, mem=512)  # fmt: skip
    assert (o.kind, o.source, o.cold) == ("template", "py", False)  # credentials restore too
    assert not create_options("py").cold and create_options("py", cold=True).cold
    r = o.run
    assert r.name is not None and r.name.startswith("sb-")
    assert (r.network_preset, r.network_allow, r.ports) == ("agent", ["api.example.com"],
                                                            ["8080:80"])  # fmt: skip
    assert r.secrets == ["K=v:api.example.com"] and (r.cpus, r.memory_mib) == (2, 512)
    assert {c.name: c.value for c in r.credentials} == {"DB": b"pw", "RAW": b"\0"}
    assert "pw" not in repr(r) and "K=v" not in repr(r)  # values never in repr


@pytest.mark.parametrize("kw", [
    {"network": "everything"}, {"ports": ["99999"]}, {"ports": "8080"}, {"allow": "x.com"},
    {"cpus": 0}, {"cpus": True}, {"mem": 1}, {"name": "Bad Name"}, {"name": "../x"},
    {"credentials": {"DB": 5}}, {"credentials": ["DB"]},
])  # fmt: skip
def test_bad_arguments_are_config_errors(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        create_options("py", **kw)  # type: ignore[arg-type]


def test_bad_template_name_and_credential_name() -> None:
    with pytest.raises(ConfigError):
        create_options("../etc")
    with pytest.raises(CredentialError):
        create_options("py", credentials={"bad/name": "x"})


def test_fresh_names_are_valid_and_distinct() -> None:
    names = {fresh_name() for _ in range(100)}
    assert len(names) == 100 and all(n.startswith("sb-") and len(n) == 11 for n in names)
    assert fresh_name("mcp-").startswith("mcp-")


def test_timeouts() -> None:
    assert check_timeout(None, 5.0) == 5.0 and check_timeout(2, 5.0) == 2.0
    for bad in (0, -1, True, "3", 1e12):
        with pytest.raises(ConfigError):
            check_timeout(bad, 5.0)  # type: ignore[arg-type]


def test_argv_of() -> None:
    assert argv_of("echo hi | wc") == ["/bin/sh", "-c", "echo hi | wc"]
    assert argv_of(["ls", "-l"]) == ["ls", "-l"]
    for bad in ("", "  ", [], ["ls", 3]):
        with pytest.raises(ConfigError):
            argv_of(bad)  # type: ignore[arg-type]


def test_result_text_and_json() -> None:
    r = CommandResult(1, b"caf\xc3\xa9\n", b"\xff", 0)
    assert (r.stdout, r.stderr, r.ok) == ("café\n", "\ufffd", False)
    assert r.to_json() == {"exit_code": 1, "signal": 0, "stdout": "café\n", "stderr": "\ufffd"}


def test_bounded_returns_raises_and_hands_late_results_over() -> None:
    assert bounded(lambda: 7, 5, "x") == 7
    with pytest.raises(KeyError):
        bounded(lambda: {}["k"], 5, "x")
    late: list[str] = []
    got = threading.Event()

    def slow() -> str:
        time.sleep(0.3)
        return "vm-1"

    def on_late(v: str) -> None:
        late.append(v)
        got.set()

    t0 = time.monotonic()
    with pytest.raises(DeadlineError, match="timed out"):
        bounded(slow, 0.05, "creating", late=on_late)
    assert time.monotonic() - t0 < 0.25
    assert got.wait(5) and late == ["vm-1"]  # the VM it made is cleaned up


def test_exported_from_mvm() -> None:
    assert mvm.Sandbox.__module__ == "mvm.sdk.sandbox"
    assert mvm.AsyncSandbox.__module__ == "mvm.sdk.aio"
    assert issubclass(mvm.DeadlineError, mvm.MvmError)


def test_a_cancelled_async_create_hands_its_result_to_cleanup() -> None:
    import asyncio

    from mvm.sdk.aio import _run

    started, release, cleaned = threading.Event(), threading.Event(), threading.Event()
    got: list[str] = []

    def slow_create() -> str:
        started.set()
        release.wait(5)
        return "sb-late"

    def cleanup(name: str) -> None:
        got.append(name)
        cleaned.set()

    async def main() -> None:
        task = asyncio.ensure_future(_run(slow_create, on_abandon=cleanup))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()

    asyncio.run(main())
    assert cleaned.wait(5) and got == ["sb-late"]  # the VM made after the cancel is removed
