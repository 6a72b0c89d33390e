"""The guest agent binary: compiled on the host, static, reproducible, cached."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mvm.image import guestbin


def test_compiles_static_and_reproducibly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []
    for i in range(2):
        monkeypatch.setenv("MVM_CACHE", str(tmp_path / f"cache{i}"))
        builds.append(guestbin.build())
    assert builds[0] == builds[1]  # two fresh compiles in different directories
    out = tmp_path / "agent"
    out.write_bytes(builds[0])
    info = subprocess.run(["file", str(out)], capture_output=True, text=True).stdout
    if info:  # `file` may be absent
        assert "statically linked" in info
    assert str(tmp_path).encode() not in builds[0]  # no build path inside
    cached = tmp_path / "cache1" / "guestbin" / guestbin.cache_key() / "mvm-guest-agent"
    assert cached.stat().st_mode & 0o077 == 0  # private, like the rest of the cache


def test_cache_key_follows_the_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    key = guestbin.cache_key()
    real = guestbin._sources

    def patched() -> dict[str, bytes]:
        return {**real(), "agent.c": real()["agent.c"] + b"\n"}

    guestbin.cache_key.cache_clear()
    monkeypatch.setattr(guestbin, "_sources", patched)
    try:
        assert guestbin.cache_key() != key
    finally:
        monkeypatch.undo()
        guestbin.cache_key.cache_clear()
    assert guestbin.cache_key() == key
