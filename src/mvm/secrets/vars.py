"""Secret generators ("vars", as in clan's ``clan.core.vars.generators``).

``mvmctl vars generate VM`` runs each ``[vars.generators.NAME]`` script of the
VM's project **on the host** and keeps what it wrote in the VM's var store
(:mod:`mvm.secrets.varstore`); ``[credentials] KEY = { var = "GEN/FILE" }``
then delivers a stored file to the guest at every start
(:func:`credentials_for`).

A script is untrusted-ish project text, so it runs with as little as
possible: ``/bin/sh -eu -c SCRIPT`` in an empty private directory (on tmpfs
when ``/dev/shm`` is usable), its own session, a minimal environment
(:func:`mvm.proc.child_env`: nothing of mvmctl's own, no credentials), and a
``PATH`` holding only symlinks to the declared ``runtime_inputs`` (a host
command, or every program an installed Debian package ships); a missing
input is an error before anything runs.  It must write exactly the declared
files into ``$out``: regular files (no symlinks, directories or devices),
names valid UTF-8, each at most 1 MiB.  Anything else fails the generator,
and a failure anywhere leaves every stored value as it was: all new values
are staged first and committed together.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mvm.config.schema import GeneratorSpec, VarCredentialSpec
from mvm.errors import VarsError
from mvm.log import get_logger
from mvm.proc import child_env
from mvm.secrets import varstore
from mvm.secrets.credentials import Credential
from mvm.secrets.varstore import VarFile

log = get_logger(__name__)

SCRIPT_TIMEOUT = 120.0
BIN_DIRS = ("/bin", "/usr/bin", "/sbin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")
SHELL = "/bin/sh"


@dataclass(frozen=True)
class Outcome:
    generator: str
    action: str  # "generated" | "regenerated" | "kept"


def state(vm: str, gens: Sequence[GeneratorSpec]) -> dict[str, str]:
    """Per generator: ``ok``, ``missing`` (never generated) or ``changed`` (the store's
    files differ from the declaration, e.g. a file was added to mvm.toml)."""
    stored = varstore.generators(vm)
    out = {}
    for g in gens:
        s = stored.get(g.name)
        if s is None:
            out[g.name] = "missing"
        elif set(s.files) != {f.name for f in g.files} or any(
            bool(s.files[f.name].get("secret", True)) != f.secret for f in g.files
        ):
            out[g.name] = "changed"
        else:
            out[g.name] = "ok"
    return out


def generate(
    vm: str,
    gens: Sequence[GeneratorSpec],
    *,
    regenerate: bool = False,
    only: str | None = None,
    timeout: float = SCRIPT_TIMEOUT,
) -> list[Outcome]:
    """Run the generators that need it (all of them with ``regenerate``; only ``only``
    when given) and commit every new value at once."""
    if only is not None and only not in {g.name for g in gens}:
        known = ", ".join(g.name for g in gens) or "none"
        raise VarsError(f"VM {vm} has no generator {only!r} (declared: {known})")
    with varstore.vm_lock(vm):
        varstore.sweep(vm)
        current = state(vm, gens)
        todo = [g for g in gens if (only is None or g.name == only)
                and (regenerate or current[g.name] != "ok")]  # fmt: skip
        staged: list[tuple[str, Path]] = []
        try:
            for g in todo:
                files = run_generator(g, timeout=timeout)
                digest = hashlib.sha256(g.script.encode()).hexdigest()
                staged.append((g.name, varstore.stage(vm, g.name, files, digest)))
            for name, path in staged:
                varstore.commit(vm, name, path)
            staged = []
        finally:
            for _name, path in staged:
                varstore.discard(path)
    done = {g.name for g in todo}
    return [
        Outcome(g.name, ("regenerated" if current[g.name] == "ok" else "generated")
                if g.name in done else "kept")
        for g in gens if only is None or g.name == only
    ]  # fmt: skip


def credentials_for(vm: str, decls: Sequence[VarCredentialSpec]) -> list[Credential]:
    """The VM's var credentials, read from its store; all missing ones named at once,
    with the seeds' instruction."""
    if not decls:
        return []
    stored = varstore.generators(vm)
    missing = sorted(
        {d.var for d in decls if d.file not in getattr(stored.get(d.generator), "files", {})}
    )
    if missing:
        raise VarsError(
            f"VM {vm}: var{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"not generated. Run 'mvmctl vars generate {vm}' first"
        )
    return [Credential(d.name, varstore.read(vm, d.generator, d.file).value, "var")
            for d in decls]  # fmt: skip


# -- running one generator -----------------------------------------------------


def run_generator(gen: GeneratorSpec, *, timeout: float = SCRIPT_TIMEOUT) -> dict[str, VarFile]:
    """Run ``gen``'s script in a fresh private directory and return its files."""
    work = Path(tempfile.mkdtemp(prefix="mvm-vars-", dir=_scratch_root()))
    try:
        bindir, out, cwd, tmp = (work / n for n in ("bin", "out", "cwd", "tmp"))
        for d in (bindir, out, cwd, tmp):
            os.mkdir(d, 0o700)
        link_inputs(gen.name, gen.runtime_inputs, bindir)
        env = child_env({"PATH": str(bindir), "out": str(out), "TMPDIR": str(tmp),
                         "HOME": str(cwd)})  # fmt: skip
        env.pop("SOURCE_DATE_EPOCH", None)
        _run_script(gen, env, cwd, work, timeout)
        return collect(gen, out)
    finally:
        with contextlib.suppress(OSError):
            for dirpath, _dirs, _files in os.walk(work):  # a script may chmod its dirs
                os.chmod(dirpath, 0o700)
        shutil.rmtree(work, ignore_errors=True)


def _scratch_root() -> str | None:
    """tmpfs when available (plaintext never reaches a disk), else the default TMPDIR."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


def _run_script(gen: GeneratorSpec, env: dict[str, str], cwd: Path, work: Path,
                timeout: float) -> None:  # fmt: skip
    log_path = work / "stderr"
    with open(log_path, "wb") as errf:
        try:
            proc = subprocess.Popen(
                [SHELL, "-eu", "-c", gen.script], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=errf, stderr=errf, start_new_session=True, umask=0o077,
            )  # fmt: skip
        except OSError as exc:
            raise VarsError(f"generator {gen.name}: cannot start {SHELL}: {exc.strerror}") from exc
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            with contextlib.suppress(OSError):  # anything it left running in the background
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    if code is None:
        raise VarsError(f"generator {gen.name}: script timed out after {timeout:.0f}s")
    if code != 0:
        raise VarsError(f"generator {gen.name}: script failed (exit status {code}): "
                        f"{_last_line(log_path)}")  # fmt: skip


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"


def link_inputs(generator: str, inputs: Sequence[str], bindir: Path) -> None:
    """Fill ``bindir`` with symlinks to each runtime input: a command found on the
    host's PATH, else every program of an installed Debian package of that name."""
    host_path = child_env()["PATH"]
    missing = []
    for name in inputs:
        found = shutil.which(name, path=host_path)
        programs = [Path(found)] if found else _package_programs(name)
        if not programs:
            missing.append(name)
            continue
        for prog in programs:
            link = bindir / prog.name
            if not link.exists() and not link.is_symlink():
                os.symlink(prog, link)
    if missing:
        raise VarsError(
            f"generator {generator}: runtime input{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} not found on this host (neither a command on PATH nor an "
            f"installed Debian package)",
            hint="install it on the host, or fix runtime_inputs in mvm.toml",
        )


def _package_programs(package: str) -> list[Path]:
    """Executables in the bin directories of an installed Debian package."""
    dpkg = shutil.which("dpkg-query", path=child_env()["PATH"])
    if dpkg is None:
        return []
    try:
        res = subprocess.run([dpkg, "-L", package], capture_output=True, timeout=30,
                             env=child_env(), stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    if res.returncode != 0:
        return []
    out = []
    for line in res.stdout.decode("utf-8", "replace").splitlines():
        p = Path(line.strip())
        if str(p.parent) not in BIN_DIRS:
            continue
        with contextlib.suppress(OSError):
            st = os.stat(p)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                out.append(p)
    return sorted(set(out))


def collect(gen: GeneratorSpec, out: Path) -> dict[str, VarFile]:
    """Exactly the declared files from ``out``: regular, not symlinks, ≤ 1 MiB each."""
    declared = {f.name: f for f in gen.files}
    if not stat.S_ISDIR(os.lstat(out).st_mode):
        raise VarsError(f"generator {gen.name}: the script replaced $out itself")
    names = os.listdir(os.fsencode(out))
    bad_names = []
    seen: set[str] = set()
    for raw in names:
        try:
            seen.add(raw.decode("utf-8"))
        except UnicodeDecodeError:
            bad_names.append(repr(raw)[2:-1])
    if bad_names:
        raise VarsError(f"generator {gen.name}: $out holds a file whose name is not UTF-8: "
                        f"{bad_names[0][:80]}")  # fmt: skip
    extra = sorted(seen - set(declared))
    if extra:
        shown = ", ".join(repr(e[:80]) for e in extra[:5])
        raise VarsError(f"generator {gen.name}: $out holds undeclared "
                        f"file{'s' if len(extra) > 1 else ''} {shown} "
                        f"(declared: {', '.join(sorted(declared))})")  # fmt: skip
    absent = sorted(set(declared) - seen)
    if absent:
        raise VarsError(f"generator {gen.name}: the script did not write "
                        f"{', '.join(absent)} to $out")  # fmt: skip
    files = {}
    for name, spec in declared.items():
        path = out / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            what = "is a symlink" if path.is_symlink() else (exc.strerror or str(exc))
            raise VarsError(f"generator {gen.name}: $out/{name} {what}") from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise VarsError(f"generator {gen.name}: $out/{name} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            if st.st_size > varstore.MAX_FILE:
                raise VarsError(f"generator {gen.name}: $out/{name} is {st.st_size} bytes, "
                                "over the 1 MiB limit")  # fmt: skip
            data = f.read(varstore.MAX_FILE + 1)
        if len(data) > varstore.MAX_FILE:
            raise VarsError(f"generator {gen.name}: $out/{name} is over the 1 MiB limit")
        files[name] = VarFile(name, spec.secret, spec.mode, data)
    return files
