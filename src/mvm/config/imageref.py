"""Image references: where a project's root filesystem comes from when it is an
OCI image (``image = "…"`` in mvm.toml, ``--image`` on the command line).

Four forms, the transports ``skopeo`` names them by:

* ``oci-archive:PATH`` and ``docker-archive:PATH``: a tarball written by
  ``podman save --format oci-archive|docker-archive`` (or ``docker save``);
* ``oci:DIR[:TAG]``: an OCI image layout directory;
* ``docker://NAME[:TAG|@DIGEST]``: a registry, where the host can reach one.

A path in mvm.toml is relative to the project directory and must stay inside
it once symlinks are resolved (like ``copy.from``): a project must not reach
the host's other files.  A path given on the command line is the user's own
choice and is only resolved.  Paths may not hold ``:`` (skopeo would read what
follows as a tag) and nothing may hold whitespace or control characters.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mvm.errors import ConfigError

Transport = Literal["oci-archive", "docker-archive", "oci", "docker"]
TRANSPORTS: tuple[str, ...] = ("oci-archive", "docker-archive", "oci", "docker")
REF_MAX = 1024
TAG_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
# registry/name[:tag][@sha256:…]: the characters of the reference grammar, no more
REMOTE_RE = re.compile(r"\A[a-z0-9][a-z0-9._/:@-]{0,511}\Z", re.IGNORECASE)
_BAD = re.compile(r"[\s\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ImageSource:
    """One parsed image reference."""

    ref: str  # as written: shown and recorded in revision.json
    transport: Transport
    path: Path | None = None  # absolute, for the local transports
    tag: str | None = None  # oci: layouts only
    remote: str | None = None  # docker://: the part after the scheme

    @property
    def local(self) -> bool:
        return self.path is not None

    def skopeo_ref(self) -> str:
        """The reference as skopeo's command line takes it."""
        if self.transport == "docker":
            return f"docker://{self.remote}"
        assert self.path is not None
        if self.transport == "oci" and self.tag:
            return f"oci:{self.path}:{self.tag}"
        return f"{self.transport}:{self.path}"


def parse_image_ref(raw: object, base: Path, *, confine: bool, what: str) -> ImageSource:
    """Parse ``raw``; ``base`` is the directory relative paths start from, and with
    ``confine`` the path must stay inside it.  Errors start with ``what``."""

    def err(msg: str) -> ConfigError:
        return ConfigError(f"{what}: {msg}")

    if not isinstance(raw, str) or not raw:
        raise err('must be a string like "oci-archive:app.tar", "docker-archive:app.tar", '
                  '"oci:layout-dir[:tag]" or "docker://registry/name:tag"')  # fmt: skip
    if len(raw) > REF_MAX or _BAD.search(raw):
        raise err(f"{raw[:60]!r}: whitespace, control characters and references over "
                  f"{REF_MAX} characters are not allowed")  # fmt: skip
    if raw.startswith("docker://"):
        remote = raw[len("docker://") :]
        if not REMOTE_RE.fullmatch(remote) or ".." in remote or "//" in remote:
            raise err(f"{raw!r} is not a registry reference (docker://registry/name:tag)")
        return ImageSource(raw, "docker", remote=remote)
    transport, sep, rest = raw.partition(":")
    if not sep or transport not in ("oci-archive", "docker-archive", "oci"):
        raise err(f"{raw!r}: unknown transport; use oci-archive:PATH, docker-archive:PATH, "
                  "oci:DIR[:TAG] or docker://NAME")  # fmt: skip
    tag = None
    if transport == "oci" and ":" in rest:
        rest, _, tag = rest.rpartition(":")
        if not TAG_RE.fullmatch(tag):
            raise err(f"{raw!r}: {tag!r} is not a valid tag")
    if not rest:
        raise err(f"{raw!r}: no path")
    if ":" in rest:
        raise err(f"{raw!r}: paths with ':' are not supported")
    path = _resolve(base / rest, err)
    if confine and not path.is_relative_to(base):
        raise err(f"{rest!r} resolves to {str(path)!r}, outside the project directory "
                  f"{str(base)!r}")  # fmt: skip
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise err(f"{str(path)!r} does not exist") from None
    except OSError as exc:
        raise err(f"{str(path)!r}: {exc.strerror}") from exc
    if transport == "oci" and not stat.S_ISDIR(mode):
        raise err(f"{str(path)!r} is not a directory (an OCI layout)")
    if transport != "oci" and not stat.S_ISREG(mode):
        raise err(f"{str(path)!r} is not a regular file (an image archive)")
    return ImageSource(raw, transport, path=path, tag=tag)  # type: ignore[arg-type]


def _resolve(path: Path, err: Callable[[str], ConfigError]) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise err(f"{str(path)!r}: cannot resolve ({exc})") from exc
