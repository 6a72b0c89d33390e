"""The one subprocess helper: argv lists only (never a shell), a timeout,
a checked exit status turned into an ``MvmError`` with the command's tail.

Arguments can be marked secret with :func:`redact` wrappers so the loggable
form of a command never shows them (we avoid putting secrets on command lines
at all; this is the belt to that pair of braces).
"""

from __future__ import annotations

import errno
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from mvm.errors import BuildError, DiskFullError, MvmError
from mvm.log import get_logger

log = get_logger(__name__)


def printable(argv: Sequence[str | Path]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def run(
    argv: Sequence[str | Path],
    *,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    error: type[MvmError] = BuildError,
    what: str | None = None,
    ok: tuple[int, ...] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return the completed process; raise ``error`` on failure.

    ``what`` is a short human description used in the error message
    ("building rootfs"); stderr's last lines go into ``log_tail``.  ``ok``
    lists the exit statuses that mean success (e2fsck: 1 = "fixed").
    """
    cmd = [str(a) for a in argv]
    log.debug("run: %s", printable(cmd))
    label = what or cmd[0]
    try:
        proc = subprocess.run(
            cmd, input=input, capture_output=True, timeout=timeout, env=env, cwd=cwd, check=False
        )
    except FileNotFoundError as exc:
        raise error(f"{label}: command not found: {cmd[0]}", hint="run `make setup`") from exc
    except subprocess.TimeoutExpired as exc:
        raise error(f"{label}: timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise error(f"{label}: {exc.strerror}") from exc
    if proc.returncode not in ok:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip()
        last = tail.splitlines()[-1] if tail else f"exit status {proc.returncode}"
        if "No space left" in tail or "Could not allocate block" in tail:
            raise DiskFullError(f"{label}: no space left on device", log_tail=tail[-2000:])
        raise error(f"{label} failed: {last}", log_tail=tail[-2000:])
    return proc


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
