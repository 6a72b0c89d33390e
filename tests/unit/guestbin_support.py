"""The guest's static programs as files a test can run on the host."""

from __future__ import annotations

from pathlib import Path

from mvm.image import guestbin


def install(directory: Path, name: str) -> Path:
    """``name`` (compiled once per cache key by mvm.image.guestbin) as an executable
    in ``directory``."""
    path = directory / name
    path.write_bytes(guestbin.build(name))
    path.chmod(0o755)
    return path
