"""Compile the guest's static programs (the agent, mvm-reseed, mvm-vsock) on the host, reproducibly.

The agent is C (``mvm/guest/agent/*.c``) built with the host's ``gcc -static
-Os``: no guest toolchain, no packages in the image.  The output is cached in
the shared cache (``MVM_CACHE/guestbin/KEY/``) under a key of the sources, the
flags and the compiler's version, and :func:`cache_key` is folded into the
image input hash, so a changed agent source or compiler rebuilds images.

Reproducible: fixed flags, ``-ffile-prefix-map`` so the build directory is not
recorded, ``--build-id=none``, no ``__DATE__``/``__TIME__`` in the sources,
``SOURCE_DATE_EPOCH`` fixed in the compiler's environment; the same sources
and compiler give byte-identical binaries.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from mvm import paths
from mvm.errors import BuildError
from mvm.proc import child_env
from mvm.state.atomic import locked, private_tempdir

CC = os.environ.get("MVM_GUEST_CC", "gcc")
CFLAGS = (
    "-static", "-Os", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
    "-fno-ident", "-ffile-prefix-map=/mvm-src=.", "-Wl,--build-id=none", "-s",
)  # fmt: skip
PROGRAMS = {
    "mvm-guest-agent": ("agent.c", "json.c"),
    "mvm-reseed": ("reseed.c",),
    # /init's status and control channels over vsock (Firecracker; busybox has no vsock)
    "mvm-vsock": ("vsock.c",),
}
# per-program flags: mvm-reseed is freestanding (no libc: one syscall wrapper, ~1 KiB)
EXTRA_FLAGS = {
    "mvm-reseed": (
        "-nostdlib", "-fno-pie", "-no-pie", "-fno-asynchronous-unwind-tables",
        "-fno-stack-protector", "-Wl,-z,noseparate-code", "-Wl,-n",
    ),
}  # fmt: skip
HEADERS = ("json.h",)


def _sources() -> dict[str, bytes]:
    root = files("mvm.guest") / "agent"
    names = sorted({n for srcs in PROGRAMS.values() for n in srcs} | set(HEADERS))
    return {n: (root / n).read_bytes() for n in names}


@lru_cache(maxsize=1)
def compiler_version() -> str:
    try:
        out = subprocess.run([CC, "--version"], capture_output=True, text=True, timeout=30,
                             env=child_env(), check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(
            f"the guest agent needs a C compiler ({CC}): {exc}",
            hint="install gcc (Debian: apt-get install gcc libc6-dev)",
        ) from exc
    return out.splitlines()[0] if out else CC


@lru_cache(maxsize=1)
def cache_key() -> str:
    """A hash of everything that decides the binaries' bytes."""
    h = hashlib.sha256()
    h.update(compiler_version().encode() + b"\0" + "\0".join(CFLAGS).encode() + b"\0")
    h.update(repr(sorted(PROGRAMS.items())).encode() + repr(sorted(EXTRA_FLAGS.items())).encode())
    for name, data in _sources().items():
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:32]


def build(name: str = "mvm-guest-agent") -> bytes:
    """The compiled program ``name`` (compiled once per cache key, then cached)."""
    cache = paths.ensure_private_dir(paths.cache_dir())
    root = paths.ensure_private_dir(cache / "guestbin")
    dest = root / cache_key() / name
    if dest.is_file():
        return dest.read_bytes()
    with locked(root / f".{cache_key()}.lock", timeout=300):
        if dest.is_file():
            return dest.read_bytes()
        work = private_tempdir(root, ".build-")
        try:
            src = work / "mvm-src"
            src.mkdir(mode=0o700)
            for n, data in _sources().items():
                (src / n).write_bytes(data)
            outdir = work / "out"
            outdir.mkdir(mode=0o700)
            for prog, srcs in PROGRAMS.items():
                env = child_env({"SOURCE_DATE_EPOCH": "1", "LC_ALL": "C"})
                # relative sources in a fixed cwd, the cwd mapped away: nothing
                # host-specific reaches the binary
                flags = [f.replace("/mvm-src=", f"{src}=") for f in CFLAGS]
                cmd = [CC, *flags, *EXTRA_FLAGS.get(prog, ()), "-o", str(outdir / prog), *srcs]
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                                   cwd=src)  # fmt: skip
                if r.returncode != 0:
                    tail = "\n".join(r.stderr.splitlines()[-20:])
                    raise BuildError(f"compiling the guest {prog} failed", log_tail=tail)
                os.chmod(outdir / prog, 0o700)
            final = root / cache_key()
            if not final.exists():
                os.replace(outdir, final)
        except OSError as exc:
            raise BuildError(f"compiling the guest programs: {exc}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return Path(dest).read_bytes()
