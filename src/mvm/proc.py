"""The one subprocess helper: argv lists only (never a shell), a timeout,
a checked exit status turned into an ``MvmError`` with the command's tail,
and a **minimal, explicit environment** for every child.

Why minimal: mvmctl's own environment may hold secrets (the registry's
secret key, API keys a user exported for ``--secret`` bindings).  A child
sees only what it needs to run (``PATH``, ``TMPDIR``, a C locale so messages
we parse are in English, ``SOURCE_DATE_EPOCH`` for reproducible builds) plus
what the caller adds explicitly; ``network=True`` also passes the proxy
variables a download needs.  :func:`spawn` starts long-running children
(the hypervisor) the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from mvm.errors import BuildError, DiskFullError, MvmError
from mvm.log import get_logger

log = get_logger(__name__)

BASE_ENV = ("PATH", "TMPDIR", "SOURCE_DATE_EPOCH")
NETWORK_ENV = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY",
               "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "APT_CONFIG")  # fmt: skip
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PR_SET_PDEATHSIG = 1


def child_env(extra: Mapping[str, str] | None = None, *, network: bool = False) -> dict[str, str]:
    """The environment a child gets: the few variables it needs, nothing inherited blindly."""
    keys = BASE_ENV + (NETWORK_ENV if network else ())
    env = {k: os.environ[k] for k in keys if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def printable(argv: Sequence[str | Path]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def run(
    argv: Sequence[str | Path],
    *,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
    network: bool = False,
    cwd: Path | None = None,
    input: bytes | None = None,
    error: type[MvmError] = BuildError,
    what: str | None = None,
    ok: tuple[int, ...] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return the completed process; raise ``error`` on failure.

    ``what`` is a short human description used in the error message
    ("building rootfs"); stderr's last lines go into ``log_tail``.  ``ok``
    lists the exit statuses that mean success (e2fsck: 1 = "fixed").  ``env``
    adds to :func:`child_env`; it never replaces it with mvmctl's own.
    """
    cmd = [str(a) for a in argv]
    log.debug("run: %s", printable(cmd))
    label = what or cmd[0]
    try:
        proc = subprocess.run(
            cmd, input=input, capture_output=True, timeout=timeout, cwd=cwd, check=False,
            env=child_env(env, network=network),
            stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip
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


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the parent dies (Linux prctl)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.DEVNULL,
    pass_fds: tuple[int, ...] = (),
    new_session: bool = True,
    die_with_parent: bool = False,
    umask: int = 0o077,
    error: type[MvmError] = MvmError,
    what: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running child (minimal env, private umask, own session).

    ``die_with_parent`` makes the kernel kill the child if mvmctl dies first
    (a probe must never outlive the command that started it).
    """
    cmd = [str(a) for a in argv]
    log.debug("spawn: %s", printable(cmd))
    preexec: Callable[[], None] | None = _die_with_parent if die_with_parent else None
    try:
        return subprocess.Popen(
            cmd, stdin=stdin, stdout=stdout, stderr=stderr, env=child_env(env), cwd=cwd,
            start_new_session=new_session, umask=umask, pass_fds=pass_fds, preexec_fn=preexec,
        )  # fmt: skip
    except OSError as exc:
        raise error(f"{what or 'starting ' + cmd[0]}: {exc.strerror or exc}") from exc


def reap(popen: subprocess.Popen[bytes], timeout: float = 2.0) -> None:
    """Kill ``popen`` (if still running) and wait for it, bounded."""
    with contextlib.suppress(OSError):
        popen.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout)


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
