"""Firecracker under its ``jailer``: chroot, uid/gid, cgroups, seccomp.

Opt-in hardening: ``--jailer`` on ``run``/``up``, ``[firecracker] jailer = true``
in mvm.toml, or ``MVM_FIRECRACKER_JAILER=1`` in mvmctl's environment turns it
on; how it confines is a host setting, read from that environment:

* the jailer binary: ``MVM_JAILER``, or
  ``jailer`` next to the firecracker binary, or on PATH.  It needs root: it
  builds the chroot, creates ``/dev/kvm``, ``/dev/net/tun``… with mknod,
  joins cgroups, then drops to the uid/gid;
* ``MVM_FIRECRACKER_UID`` / ``MVM_FIRECRACKER_GID`` (default 0): whom
  Firecracker runs as.  With a non-zero uid the files it must open are
  *copied* into the jail owned by that uid (images under MVM_HOME are private
  to their owner); with uid 0 they are hard links (no copy);
* ``MVM_FIRECRACKER_CGROUP=FILE=VALUE[,…]`` and
  ``MVM_FIRECRACKER_CGROUP_VERSION=1|2`` (default 1): cgroup limits;
* ``MVM_FIRECRACKER_SECCOMP=off`` — ``--no-seccomp`` (Firecracker 1.x has no
  ``--seccomp-level``; its default filter is the strictest), with or without
  the jailer.

The chroot base is the VM's run directory (``RUN_DIR/jail``), so removing the
VM removes its jail.  Inside the jail every path the API names is relative to
the jail root; the run directory keeps symlinks to the sockets and logs so the
rest of mvm sees the usual layout.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from mvm.errors import BackendError

ENABLE = "MVM_FIRECRACKER_JAILER"
BASE = "jail"


def jail_id(run_dir: Path) -> str:
    """The jail's id is the run directory's name (a VM name), so the jail is found
    from the run directory alone (attach, snapshot, the relay's cgroup cleanup)."""
    name = run_dir.name
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", name):
        raise BackendError(f"jailer: the run directory name {name!r} is not a jail id "
                           "(1-64 of A-Z, a-z, 0-9, -)")  # fmt: skip
    return name


def seccomp_args() -> list[str]:
    value = os.environ.get("MVM_FIRECRACKER_SECCOMP", "").strip().lower()
    if value in ("", "on", "default"):
        return []
    if value == "off":
        return ["--no-seccomp"]
    raise BackendError(f"MVM_FIRECRACKER_SECCOMP={value!r}: use on or off")


def _id(var: str) -> int:
    raw = os.environ.get(var, "0").strip() or "0"
    if not raw.isdigit() or int(raw) > 65534:
        raise BackendError(f"{var}={raw!r} is not a uid/gid (0-65534)")
    return int(raw)


@dataclass(frozen=True)
class Jail:
    jailer: str
    uid: int = 0
    gid: int = 0
    cgroup_version: int = 1
    cgroups: tuple[str, ...] = ()

    @staticmethod
    def root(run_dir: Path, name: str) -> Path:
        return run_dir / BASE / "firecracker" / name / "root"

    def argv(self, binary: str, name: str, run_dir: Path, fc_args: list[str]) -> list[str]:
        cg = [a for c in self.cgroups for a in ("--cgroup", c)]
        return [
            self.jailer, "--id", name, "--exec-file", binary, "--uid", str(self.uid),
            "--gid", str(self.gid), "--chroot-base-dir", str(run_dir / BASE),
            "--cgroup-version", str(self.cgroup_version), *cg, "--", *fc_args,
        ]  # fmt: skip

    def place(self, src: Path, root: Path, name: str, *, writable: bool = False) -> Path:
        """Put ``src`` into the jail as ``/name``; return the in-jail path."""
        dest = root / name
        dest.unlink(missing_ok=True)
        try:
            if self.uid == 0:
                try:
                    os.link(src, dest)
                except OSError:  # another filesystem
                    shutil.copyfile(src, dest)
            else:
                shutil.copyfile(src, dest)
                os.chown(dest, self.uid, self.gid)
                dest.chmod(0o600 if writable else 0o400)
        except OSError as exc:
            raise BackendError(f"jailer: cannot place {src.name} in the jail: "
                               f"{exc.strerror or exc}") from exc  # fmt: skip
        return Path("/") / name

    def own(self, path: Path) -> None:
        """A file or socket the jailed Firecracker must open, given to its uid."""
        if self.uid or self.gid:
            with contextlib.suppress(OSError):
                os.chown(path, self.uid, self.gid)


def settings(wanted: bool = False) -> Jail | None:
    """The jail to use (None: run Firecracker directly): ``wanted`` (``--jailer``,
    mvm.toml's ``[firecracker] jailer``) or ``MVM_FIRECRACKER_JAILER``; the uid, gid,
    cgroups from the environment."""
    env = os.environ.get(ENABLE, "").strip().lower() in ("1", "true", "yes", "on")
    if not (wanted or env):
        return None
    from mvm.backends.firecracker.machine import jailer_binary

    jailer = jailer_binary()
    if jailer is None:
        raise BackendError(
            "the jailer was asked for, but none was found",
            hint="set MVM_JAILER=/path/to/jailer (it ships with Firecracker)",
        )
    if os.geteuid() != 0:
        raise BackendError(
            "the jailer was asked for, but it needs root (chroot, mknod, cgroups)",
            hint=f"drop --jailer / [firecracker] jailer / {ENABLE}, or run mvmctl as root",
        )
    version = os.environ.get("MVM_FIRECRACKER_CGROUP_VERSION", "1").strip() or "1"
    if version not in ("1", "2"):
        raise BackendError(f"MVM_FIRECRACKER_CGROUP_VERSION={version!r}: use 1 or 2")
    raw = os.environ.get("MVM_FIRECRACKER_CGROUP", "")
    cgroups = tuple(c.strip() for c in raw.split(",") if c.strip())
    for c in cgroups:
        key, eq, value = c.partition("=")
        if not eq or not key or not value or "/" in key or not c.isprintable():
            raise BackendError(f"MVM_FIRECRACKER_CGROUP: {c!r} is not FILE=VALUE")
    return Jail(jailer, _id("MVM_FIRECRACKER_UID"), _id("MVM_FIRECRACKER_GID"), int(version),
                cgroups)  # fmt: skip


def doctor() -> str:
    """One line for ``mvmctl doctor``: whether the jailer is found, usable, in use."""
    from mvm.backends.firecracker.machine import jailer_binary

    jailer = jailer_binary()
    if jailer is None:
        return "not found (MVM_JAILER, or `jailer` next to firecracker or on PATH)"
    if os.geteuid() != 0:
        return f"{jailer}: cannot be used (it needs root: chroot, mknod, cgroups)"
    try:
        jail = settings()
    except BackendError as exc:
        return f"{jailer}: misconfigured: {exc.message}"
    if jail is None:
        return f"{jailer}: usable, off (--jailer, [firecracker] jailer = true or {ENABLE}=1)"
    return f"{jailer}: on (uid {jail.uid}, gid {jail.gid}, cgroup v{jail.cgroup_version})"


def release_cgroups(name: str) -> None:
    """Remove the cgroups the jailer made for VM ``name`` once its Firecracker is gone
    (the jailer leaves ``…/firecracker/NAME`` behind).  rmdir only succeeds on an
    empty cgroup, so a live one (another VM of that name) is never touched."""
    base = Path("/sys/fs/cgroup")
    for d in (base / "firecracker" / name, *base.glob(f"*/firecracker/{name}")):
        with contextlib.suppress(OSError):
            d.rmdir()
            d.parent.rmdir()  # the jailer's parent too, once no VM is left in it
