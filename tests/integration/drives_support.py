"""Constants and helpers shared by the drives and credentials tests (the
fixtures are in ``conftest_drives``).

The guest entrypoint (``/usr/local/bin/check``) prints modes, owners, sizes
and sha256 sums, never a value, so the tests can both verify exact bytes and
grep every host artefact for the secret.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import SHARED_CACHE

SECRET = "mvm-test-secret-" + secrets.token_hex(12)  # must never show up on the host
BINARY = bytes(range(256)) * 3 + b"\n\x00\r\nend\x00"  # NULs, newlines, every byte
K100 = (hashlib.sha256(b"seed").digest() * 3200)[: 100 * 1024]
LONG_NAME = "a.very-long_credential.name@beyond-28-bytes"  # needs the cpio bundle
CHECK = r"""#!/bin/sh
# prints facts about drives, credentials and environment; never a value
echo BEGIN-CHECK
echo "id $(id -u)"
for p in $(find /mnt/config /mnt/secrets | sort); do
    echo "stat $(stat -c '%a %u %g' "$p") $([ -d "$p" ] && echo d || echo f) $p"
done
find /mnt/config /mnt/secrets -type f | sort | while read -r f; do echo "sum $(sha256sum "$f")"; done
grep -E ' /mnt/| /data | /run/credentials' /proc/mounts | sed 's/^/mount /'
touch /mnt/config/x 2>/dev/null || echo "config-ro yes"
echo "env CREDENTIALS_DIRECTORY=${CREDENTIALS_DIRECTORY:-unset}"
echo "env GREETING=$GREETING"
echo "env API_KEY_SHA=$(printf '%s' "$API_KEY" | sha256sum | cut -d' ' -f1)"
echo "env QUOTED_SHA=$(printf '%s' "$QUOTED" | sha256sum | cut -d' ' -f1)"
if [ -n "$CREDENTIALS_DIRECTORY" ]; then
    stat -c "creddir %a %u" "$CREDENTIALS_DIRECTORY"
    for c in "$CREDENTIALS_DIRECTORY"/* "$CREDENTIALS_DIRECTORY"/.[!.]*; do
        [ -f "$c" ] || continue
        echo "cred $(stat -c '%a %u %s' "$c") $(sha256sum < "$c" | cut -d' ' -f1) ${c##*/}"
    done
    touch "$CREDENTIALS_DIRECTORY/new" 2>/dev/null || echo "creds-ro yes"
fi
if [ -d /data ] && grep -q ' /data ' /proc/mounts; then
    echo boot >> /data/boots
    echo "data boots=$(wc -l < /data/boots) seed=$(cat /data/seed.txt) $(stat -c '%u' /data)"
fi
echo END-CHECK
[ -e /mnt/config/hold ] && exec sleep 600
exit 0
"""
PROJECT = f"""name = "drv"
[entrypoint]
command = ["/usr/local/bin/check"]
[files."/usr/local/bin/check"]
content = '''{CHECK}'''
mode = "0755"
[credentials]
TOML_CRED = {{ file = "toml-cred.txt" }}
"""


def env_for(home: Path, **extra: str) -> dict[str, str]:
    """Explicit env for session fixtures (they run outside the autouse isolation)."""
    return {"MVM_HOME": str(home), "MVM_CACHE": SHARED_CACHE, "CREDENTIALS_DIRECTORY": "",
            **extra}  # fmt: skip


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def parse(out: str) -> dict[str, list[str]]:
    """The check's lines between the markers, grouped by their first word."""
    body = out.split("BEGIN-CHECK", 1)[1].split("END-CHECK", 1)[0]
    groups: dict[str, list[str]] = {}
    for line in body.splitlines():
        line = line.strip()
        if line:
            key, _, rest = line.partition(" ")
            groups.setdefault(key, []).append(rest)
    return groups


def creds_of(groups: dict[str, list[str]]) -> dict[str, tuple[str, str, int, str]]:
    """name → (mode, uid, size, sha256) from ``cred`` lines."""
    out = {}
    for line in groups.get("cred", []):
        mode, uid, size, digest, name = line.split()
        out[name] = (mode, uid, int(size), digest)
    return out


@dataclass
class Inputs:
    root: Path
    project: Path
    config: Path
    secrets: Path
    data: Path
    host_creds: Path
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Boot:
    """Everything observed on the host around one instrumented boot."""

    up: Any = None
    name: str = ""
    cmdline: bytes = b""
    vm_json: str = ""
    status_json: str = ""
    ls_json: str = ""
    console: str = ""
    qemu_log: str = ""
    run_dir_files: list[str] = field(default_factory=list)
    run_dir_mode: int = 0
    home_leaks: list[str] = field(default_factory=list)
    after_down: bool = True
    volume_kept: bool = False
    second: Any = None  # the attached re-run with the same name (persistence)
