"""The mvm guest kernel (``kernel = "mvm"``, the default): built once per machine
from Debian's ``linux-source-6.1`` with a configuration this package owns.

Why build one: Debian's cloud kernel is 53 MB with modular virtio, so every
boot needs a module-loading initramfs, and under TCG it spends most of its
≈1.4 s initialising hardware a microVM does not have.  ``tinyconfig`` plus
``kernel-config/mvm-microvm.config`` (every option commented) gives an 18 MB
``vmlinux`` with everything built in that reaches userspace in about half the
time (docs/kernel.md has the figures and what is left out on purpose).

**Keyed and cached.**  A build is identified by (source package version,
config hash, compiler version) and stored once in the shared cache
(``MVM_CACHE/kernels/mvm-VERSION-HASH``), so any checkout or ``MVM_HOME`` on
the machine reuses it.  Resolving an already-built kernel reads one small
pointer file and stats two files: no dpkg or gcc runs on the hot path.

**Reproducible.**  ``KBUILD_BUILD_TIMESTAMP/USER/HOST/VERSION`` are fixed and
the tree is built in place (relative paths), so the same key gives a
byte-identical ``vmlinux``.

**Safe to interrupt and to race.**  The tree is unpacked and built in a
private temporary directory and appears under its final name with one
rename; a killed build's directory is swept by the next one.  Concurrent
builds of the same key wait on one lock (bounded) instead of building twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from mvm import paths, proc
from mvm.errors import BuildError, MvmError
from mvm.log import get_logger
from mvm.state.atomic import atomic_file, locked, private_tempdir, publish_dir, write_json

log = get_logger(__name__)

SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
FRAGMENT_NAME = "mvm-microvm.config"
POINTER = "mvm-current.json"
PREFIX = "mvm-"
CC = "gcc"
# fixed build identity: the same key gives the same bytes (no date, user or host inside)
BUILD_ENV = {
    "KBUILD_BUILD_TIMESTAMP": "Thu Jan  1 00:00:00 UTC 1970",
    "KBUILD_BUILD_USER": "mvm",
    "KBUILD_BUILD_HOST": "mvm",
    "KBUILD_BUILD_VERSION": "1",
}
UNPACK_TIMEOUT = 1200.0
BUILD_TIMEOUT = 5400.0  # 4 min on 2 idle cores; a loaded CI machine can take many times that
LOCK_TIMEOUT = BUILD_TIMEOUT + UNPACK_TIMEOUT
PROGRESS = "building the mvm kernel (about 6 min on 2 idle cores, once per machine)"
LINE = re.compile(r"(CONFIG_[A-Za-z0-9_]+)=(.*)|# (CONFIG_[A-Za-z0-9_]+) is not set")
Say = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"mvmctl: {msg}", file=sys.stderr, flush=True)


def fragment_text() -> str:
    """The configuration fragment shipped with this package."""
    return (files("mvm.image") / "kernel-config" / FRAGMENT_NAME).read_text()


def patches() -> list[tuple[str, bytes]]:
    """The source patches shipped with this package (``kernel-config/patches/*.patch``),
    in name order: each is small, documented in its own comments and docs/kernel.md."""
    root = files("mvm.image") / "kernel-config" / "patches"
    found = [p for p in root.iterdir() if p.name.endswith(".patch")] if root.is_dir() else []
    return [(p.name, p.read_bytes()) for p in sorted(found, key=lambda p: p.name)]


def parse_config(text: str) -> dict[str, str]:
    """``CONFIG_X=v`` and ``# CONFIG_X is not set`` lines as {name: value} (``n`` for unset)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = LINE.fullmatch(line.strip())
        if m is None:
            continue
        if m.group(1):
            out[m.group(1)] = m.group(2)
        else:
            out[m.group(3)] = "n"
    return out


def missing_options(fragment: str, final: str) -> list[str]:
    """Fragment options that ``olddefconfig`` dropped or changed (a dependency is
    missing): each as ``CONFIG_X=wanted (got …)``.  An empty list means every
    option the project asked for is in the kernel."""
    have = parse_config(final)
    bad = []
    for name, want in parse_config(fragment).items():
        got = have.get(name, "n")
        if got != want:
            bad.append(f"{name}={want} (got {got})")
    return bad


def config_hash(fragment: str, source_patches: list[tuple[str, bytes]] | None = None) -> str:
    """The configuration's identity: the fragment's options (not its comments) and
    the patches applied to the source."""
    opts = parse_config(fragment)
    h = hashlib.sha256(json.dumps(opts, sort_keys=True).encode())
    for name, data in patches() if source_patches is None else source_patches:
        h.update(f"\0{name}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


def build_key(source_version: str, cfg_hash: str, cc_version: str) -> str:
    """The cache directory name for one (source, config, compiler) triple."""
    if not re.fullmatch(r"[A-Za-z0-9.+~-]{1,64}", source_version):
        raise BuildError(f"{SOURCE_PACKAGE} has an unexpected version {source_version!r}")
    ident = json.dumps([SOURCE_PACKAGE, source_version, cfg_hash, cc_version])
    return f"{PREFIX}{source_version}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class BuiltKernel:
    """One cached mvm kernel build."""

    key: str
    path: Path  # the directory
    info: dict[str, Any]

    @property
    def image(self) -> Path:
        return self.path / "vmlinux"

    @property
    def version(self) -> str:
        return str(self.info.get("release", "unknown"))


def _stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _cc_path() -> Path | None:
    found = shutil.which(CC)
    return Path(found).resolve() if found else None


def _fast_facts(cfg_hash: str) -> dict[str, Any]:
    """What the pointer file must match to skip dpkg and gcc: the tarball's and
    the compiler's stat, and the config hash."""
    cc = _cc_path()
    return {
        "tarball": _stamp(SOURCE_TARBALL),
        "cc": [str(cc), _stamp(cc)] if cc else None,
        "config": cfg_hash,
    }


def load(path: Path) -> BuiltKernel | None:
    """The build in ``path`` if it is complete (``kernel.json`` is written last)."""
    try:
        info = json.loads((path / "kernel.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not (path / "vmlinux").is_file():
        return None
    return BuiltKernel(path.name, path, info)


def cached() -> list[BuiltKernel]:
    """Every complete mvm kernel build in the shared cache."""
    root = paths.kernels_dir()
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if d.name.startswith(PREFIX) and d.is_dir():
            k = load(d)
            if k is not None:
                out.append(k)
    return out


def source_version() -> str:
    """The installed ``linux-source-6.1`` package version (dpkg)."""
    if not SOURCE_TARBALL.is_file():
        raise BuildError(
            f"{SOURCE_TARBALL} is missing: the mvm kernel is built from {SOURCE_PACKAGE}",
            hint='run `make setup` (it installs the package), or use kernel = "debian"',
        )
    out = proc.run(["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE], timeout=60,
                   what=f"reading the {SOURCE_PACKAGE} version").stdout  # fmt: skip
    return out.decode().strip()


def cc_version() -> str:
    """The compiler's full version line (``gcc (Debian 12.2.0-14) 12.2.0``)."""
    out = proc.run([CC, "--version"], timeout=60, what="reading the compiler version").stdout
    lines = out.decode(errors="replace").splitlines()
    if not lines:
        raise BuildError(f"{CC} --version printed nothing")
    return lines[0].strip()


def current_key() -> str:
    """The key the installed source, this package's config and the compiler give now."""
    cfg = config_hash(fragment_text())
    return build_key(source_version(), cfg, cc_version())


def resolve(*, build: bool = True, force: bool = False, say: Say = _stderr) -> BuiltKernel:
    """The mvm kernel for this machine: cached, or built now (``build``) once."""
    root = paths.kernels_dir()
    cfg = config_hash(fragment_text())
    facts = _fast_facts(cfg)
    pointer = root / POINTER
    if not force:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(pointer.read_text())
            if data["facts"] == facts:
                k = load(root / str(data["key"]))
                if k is not None and k.key == data["key"]:
                    return k
    key = build_key(source_version(), cfg, cc_version())
    k = load(root / key)
    if k is None or force:
        if not build:
            raise BuildError(
                "the mvm kernel is not built yet",
                hint="run `mvmctl kernel build` (or `make setup`)",
            )
        k = _build_locked(key, force=force, say=say)
    paths.ensure_private_dir(root)
    write_json(pointer, {"key": key, "facts": facts})
    return k


def _build_locked(key: str, *, force: bool, say: Say) -> BuiltKernel:
    root = paths.ensure_private_dir(paths.kernels_dir())
    lock = root / f".{key}.lock"
    try:
        with locked(lock, blocking=False):
            return _build_once(key, root, force=force, say=say)
    except MvmError as exc:
        if "is locked by another mvmctl" not in exc.message:
            raise
    say(f"another mvmctl is building the mvm kernel {key}; waiting for it "
        f"(log: {log_path(key)}, at most {LOCK_TIMEOUT / 60:.0f} min)")  # fmt: skip
    with locked(lock, timeout=LOCK_TIMEOUT):
        done = load(root / key)
        if done is not None:
            return done
        return _build_once(key, root, force=False, say=say)  # the other build failed


def log_path(key: str) -> Path:
    return paths.kernels_dir() / "logs" / f"{key}.log"


def _build_once(key: str, root: Path, *, force: bool, say: Say) -> BuiltKernel:
    if not force:
        done = load(root / key)
        if done is not None:
            return done
    if not SOURCE_TARBALL.is_file():
        raise BuildError(f"{SOURCE_TARBALL} is missing", hint="run `make setup`")
    logfile = log_path(key)
    paths.ensure_private_dir(logfile.parent)
    started = time.monotonic()
    say(f"{PROGRESS}; log: {logfile}")
    work = private_tempdir(root, ".kbuild-")
    # SIGTERM (a CI timeout, `kill`) must unwind like Ctrl-C: kill make's process
    # group and remove the temporary tree, not leave compilers writing into it
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "ab", buffering=0) as out:
            src = work / "src"
            src.mkdir(mode=0o700)
            fragment = fragment_text()
            (work / FRAGMENT_NAME).write_text(fragment)
            _step(out, ["tar", "-xJf", SOURCE_TARBALL, "-C", src, "--strip-components=1",
                        "--no-same-owner"],
                  cwd=work, timeout=UNPACK_TIMEOUT, what="unpacking the kernel source")  # fmt: skip
            for name, data in patches():
                (work / name).write_bytes(data)
                _step(out, ["patch", "-p1", "--forward", "--batch", "-i", f"../{name}"],
                      cwd=src, what=f"applying {name}")  # fmt: skip
            jobs = str(os.cpu_count() or 1)
            _step(out, ["make", "-s", "tinyconfig"], cwd=src, what="make tinyconfig")
            _step(out, ["scripts/kconfig/merge_config.sh", "-m", ".config", f"../{FRAGMENT_NAME}"],
                  cwd=src, what="merging the mvm kernel configuration")  # fmt: skip
            _step(out, ["make", "-s", "olddefconfig"], cwd=src, what="make olddefconfig")
            final = (src / ".config").read_text()
            bad = missing_options(fragment, final)
            if bad:
                raise BuildError(
                    "the mvm kernel configuration lost options in olddefconfig (a dependency "
                    f"is missing from {FRAGMENT_NAME}): {', '.join(bad)}"
                )
            _step(out, ["make", "-s", f"-j{jobs}", "vmlinux"], cwd=src,
                  timeout=BUILD_TIMEOUT, what="building the mvm kernel")  # fmt: skip
            release = _step(out, ["make", "-s", "kernelrelease"], cwd=src,
                            what="reading the kernel release", capture=True).strip()  # fmt: skip
        from mvm.image.builder import sha256_file

        dest = work / "out"
        dest.mkdir(mode=0o700)
        _copy_private(src / "vmlinux", dest / "vmlinux")
        _copy_private(src / ".config", dest / "config")
        info = {
            "key": key,
            "release": release,
            "source": {"package": SOURCE_PACKAGE, "version": source_version()},
            "cc": cc_version(),
            "configHash": config_hash(fragment),
            "sha256": sha256_file(dest / "vmlinux"),
            "size": (dest / "vmlinux").stat().st_size,
            "buildSeconds": round(time.monotonic() - started, 1),
            "modules": False,
            "kaslr": False,  # RANDOMIZE_BASE is off: `nokaslr` would reach init as an argument
        }
        with atomic_file(dest / "kernel.json") as f:  # last: marks the build complete
            f.write(json.dumps(info, indent=2, sort_keys=True).encode())
        publish_dir(dest, root / key)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    say(f"built the mvm kernel {key} in {time.monotonic() - started:.0f}s")
    k = load(root / key)
    assert k is not None
    return k


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _step(
    out: Any,
    argv: list[str | Path],
    *,
    cwd: Path,
    what: str,
    timeout: float = 600.0,
    capture: bool = False,
) -> str:
    """Run one build step with its output appended to the log; the whole process
    group is killed on timeout or interrupt (make's compilers must not linger)."""
    out.write(f"$ {proc.printable(argv)}\n".encode())
    p = proc.spawn(argv, cwd=cwd, env=BUILD_ENV, stdout=subprocess.PIPE if capture else out,
                   stderr=out, umask=0o077, die_with_parent=True, error=BuildError,
                   what=what)  # fmt: skip
    try:
        stdout, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(p)
        raise BuildError(f"{what}: timed out after {timeout:.0f}s (log: {out.name})") from None
    except BaseException:
        _kill_group(p)
        raise
    if p.returncode != 0:
        raise BuildError(f"{what} failed (exit status {p.returncode})",
                         hint=f"see the log {out.name}")  # fmt: skip
    return (stdout or b"").decode(errors="replace")


def _kill_group(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(p.pid, signal.SIGKILL)
    proc.reap(p)


def _copy_private(src: Path, dest: Path) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(src, "rb") as fsrc, os.fdopen(fd, "wb") as fdst:
        shutil.copyfileobj(fsrc, fdst, 1 << 20)


def remove(key: str) -> Path:
    """Delete one cached build (by key); never anything outside the kernels dir."""
    if not re.fullmatch(rf"{PREFIX}[A-Za-z0-9.+~-]{{1,64}}-[0-9a-f]{{16}}", key):
        raise BuildError(f"{key!r} is not an mvm kernel key (see `mvmctl kernel list`)")
    root = paths.kernels_dir()
    path = root / key
    if not path.is_dir():
        raise BuildError(f"no cached mvm kernel {key}")
    with locked(root / f".{key}.lock", timeout=10):
        trash = root / f".old-{key}-{os.getpid()}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return path
