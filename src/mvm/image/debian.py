"""Debian packages into the rootfs: resolve the dependency closure with apt's
own solver (simulated install against an empty dpkg status), download the
.debs into the shared cache, unpack them into the image.  No root, no
maintainer scripts: packages are files, which is all a busybox guest needs.

Unpacking reads ``dpkg-deb --fsys-tarfile`` and writes each member through
:class:`~mvm.image.staging.Staging`, rather than ``dpkg-deb -x`` into the
tree: tar follows symlinks already in the directory it extracts into, so one
package's absolute symlink (``/usr/lib/x -> /usr/lib/y``) would send the next
package's files to the *host's* ``/usr/lib/y``.  Staging resolves it inside
the image, the way dpkg would on a real system.  Files are owned by root,
as ``dpkg-deb -x`` as a normal user leaves them.
"""

from __future__ import annotations

import io
import posixpath
import re
import tarfile
from pathlib import Path

from mvm import paths, proc
from mvm.config.guestpaths import name_problem
from mvm.errors import BuildError
from mvm.image.staging import Staging
from mvm.log import get_logger

log = get_logger(__name__)
INST_RE = re.compile(r"^Inst (\S+) \((\S+)")
_SYSTEMD_ESCAPED = re.compile(r"/(?:usr/)?lib/systemd/system/[A-Za-z0-9_.@\\-]+")


def resolve(packages: tuple[str, ...]) -> list[tuple[str, str]]:
    """Return ``[(package, version)]`` for ``packages`` and all their dependencies."""
    argv = [
        "apt-get", "-s", "-q", "-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1",
        "install", "--no-install-recommends", *packages,
    ]  # fmt: skip
    try:
        out = proc.run(argv, timeout=120, what="resolving Debian packages").stdout.decode()
    except BuildError as exc:
        msg = exc.message
        m = re.search(r"Unable to locate package (\S+)", exc.log_tail or "")
        if m:
            msg = f"unknown Debian package {m.group(1)!r} (packages in mvm.toml)"
        elif "has no installation candidate" in (exc.log_tail or ""):
            msg = "a package in mvm.toml has no installation candidate"
        raise BuildError(msg, hint="check the name with `apt-cache policy NAME`") from exc
    found = [(m.group(1), m.group(2)) for m in map(INST_RE.match, out.splitlines()) if m]
    if not found:
        raise BuildError(f"apt resolved no packages for {', '.join(packages)}")
    return found


def fetch(pkgs: list[tuple[str, str]]) -> list[Path]:
    """Download (once) and return the .deb files for ``pkgs``."""
    cache = paths.debs_dir()
    cache.mkdir(parents=True, exist_ok=True)

    def deb(name: str, version: str) -> Path | None:
        # apt-get download writes an epoch "1:" as "1%3a" in the file name
        ver = version.replace(":", "%3a")
        hits = list(cache.glob(f"{name}_{ver}_*.deb"))
        return hits[0] if hits else None

    missing = [f"{n}={v}" for n, v in pkgs if deb(n, v) is None]
    if missing:
        log.info("downloading %d Debian packages", len(missing))
        proc.run(["apt-get", "download", *missing], cwd=cache, timeout=900,
                 what="downloading Debian packages")  # fmt: skip
    out = []
    for n, v in pkgs:
        path = deb(n, v)
        if path is None:
            raise BuildError(f"apt-get download did not produce {n} {v}")
        out.append(path)
    return out


def extract(debs: list[Path], staging: Staging) -> None:
    """Unpack the files of ``debs`` (in order) into the image through ``staging``."""
    for deb in debs:
        data = proc.run(["dpkg-deb", "--fsys-tarfile", deb], what=f"reading {deb.name}").stdout
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for member in tar:
                    _unpack(tar, member, staging, deb.name)
        except tarfile.TarError as exc:
            raise BuildError(f"{deb.name}: not a valid package archive ({exc})") from exc


def _unpack(tar: tarfile.TarFile, m: tarfile.TarInfo, staging: Staging, deb: str) -> None:
    path = posixpath.normpath("/" + m.name)
    if path == "/":
        return
    problem = name_problem(deb, path)
    if problem:
        if _SYSTEMD_ESCAPED.fullmatch(path):
            # systemd's escaped unit names (system-systemd\x2dcryptsetup.slice): a
            # backslash debugfs cannot be told about, in units a microVM never starts
            log.debug("%s: skipping %s (escaped systemd unit name)", deb, path)
            return
        raise BuildError(problem)
    mode = m.mode & 0o7777
    if m.isdir():
        staging.mkdir(path, mode)
    elif m.issym():
        staging.symlink(path, m.linkname)
    elif m.islnk():
        staging.link(path, posixpath.normpath("/" + m.linkname))
    elif m.isreg():
        f = tar.extractfile(m)
        assert f is not None  # a regular member always has data
        staging.write(path, f, mode)
    else:
        raise BuildError(f"{deb}: {path!r} is a device or FIFO; mvm does not install those")
