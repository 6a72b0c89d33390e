"""The registry seam: an object store that push/pull talk to, and the factory
that picks one from the environment.

Backends only move bytes under ``/``-separated keys (relative to their
prefix); the push/pull protocol (what is uploaded in which order, when
``current`` moves, how pulls are verified) lives once in
:mod:`mvm.templates.sync`.  Every backend raises only ``RegistryError``
(translated at the backend's one seam) and never puts a credential in a
message, a log line or a repr.

A registry is untrusted: every read is capped (``max_bytes``), so a server
that serves more than the verified metadata says is cut off instead of
filling the disk, and small objects (``current``, ``checksums.json``,
``revision.json``, ``signature.json``) never exceed :data:`SMALL_OBJECT_MAX`.

Registry layout (under the prefix)::

    templates/NAME/current                   text: the revision id
    templates/NAME/revisions/REV/FILE        kernel, initramfs.cpio, rootfs.ext4, revision.json
    templates/NAME/revisions/REV/signature.json   who vouches for the revision
    templates/NAME/revisions/REV/checksums.json   written last: the revision's commit marker
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from mvm import paths
from mvm.errors import ConfigError, RegistryError

ENV = "MVM_TEMPLATE_REGISTRY"
S3_REQUIRED = ("ENDPOINT", "BUCKET", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY")
S3_OPTIONAL = ("REGION",)
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")  # fullmatch: "$" would accept a trailing newline
SMALL_OBJECT_MAX = 1 << 20

Callback = Callable[[int], None]


class Progress(Protocol):
    """Progress of one transfer; ``advance`` may be called from worker threads."""

    def begin(self, label: str, total: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def end(self) -> None: ...


class NullProgress:
    def begin(self, label: str, total: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    sha256: str | None  # recorded at upload time, when the backend can store it


def current_key(name: str) -> str:
    return f"templates/{name}/current"


def revisions_key(name: str) -> str:
    return f"templates/{name}/revisions/"


def revision_key(name: str, rev_id: str, filename: str) -> str:
    return f"templates/{name}/revisions/{rev_id}/{filename}"


def check_key(key: str) -> str:
    """Keys are built by us, but never let one escape the prefix."""
    parts = key.rstrip("/").split("/")
    if (
        not key
        or key.startswith("/")
        or not all(_SEGMENT.fullmatch(p) and p not in (".", "..") for p in parts)
    ):
        raise ConfigError(f"invalid registry key {key!r}")
    return key


def normalise_prefix(prefix: str) -> str:
    """``a/b/`` → ``a/b`` (validated); ``""`` stays empty."""
    prefix = prefix.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except ConfigError:
            raise ConfigError(
                f"invalid {ENV}_PREFIX {prefix!r}: "
                "use path segments of A-Z, a-z, 0-9, '.', '_', '-'"
            ) from None
    return prefix


class Registry(ABC):
    """An object store holding template revisions."""

    #: Where it is, for messages (never contains credentials).
    description: str = "registry"

    @abstractmethod
    def get_bytes(self, key: str, max_bytes: int = SMALL_OBJECT_MAX) -> bytes | None:
        """A small object's content, or None if it does not exist.

        An object larger than ``max_bytes`` is a ``RegistryError`` (see :func:`too_large`).
        """

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write a small object atomically (readers see old or new content)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size (and recorded sha256, if any) of an object, or None if missing."""

    @abstractmethod
    def upload(self, key: str, src: Path, sha256: str, progress: Callback) -> None:
        """Store a (large) file; it becomes visible only once complete."""

    @abstractmethod
    def download(self, key: str, dest: Path, progress: Callback, *, max_bytes: int) -> None:
        """Fetch an object into ``dest`` (a file in a staging directory).

        Stops with a ``RegistryError`` once more than ``max_bytes`` arrive, so a
        hostile or broken server cannot fill the disk.
        """

    @abstractmethod
    def list_dirs(self, key: str) -> list[str]:
        """Names of the immediate "subdirectories" under ``key`` (ending in ``/``)."""

    def verify_object(self, key: str, size: int, sha256: str) -> bool:
        """True if the stored object has this size and content."""
        info = self.stat(key)
        return info is not None and info.size == size and info.sha256 == sha256

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections (optional)."""


def too_large(registry: Registry, key: str, max_bytes: int) -> RegistryError:
    """The error for an object bigger than the verified metadata (or the small cap) allows."""
    return RegistryError(
        f"registry {registry.description}: {key} is larger than the {max_bytes} bytes "
        "expected; download stopped",
        hint="the registry copy is damaged or forged; re-push it from a good copy",
    )


def parse_location(url: str) -> Path:
    """``file:///abs/path`` or ``/abs/path`` → Path; anything else is an error."""
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"invalid {ENV} {url!r}: use file:///absolute/path")
        path = Path(unquote(parsed.path))
    elif "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"unsupported {ENV} scheme {scheme!r}: use file:///path, or set "
            f"{ENV}_ENDPOINT/_BUCKET/_ACCESS_KEY_ID/_SECRET_ACCESS_KEY for S3"
        )
    else:
        path = Path(url).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"invalid {ENV} {url!r}: the path must be absolute")
    return path


def from_env(env: Mapping[str, str] | None = None) -> Registry:
    """The registry configured by ``MVM_TEMPLATE_REGISTRY*`` (see docs/templates.md).

    S3 when any S3 variable is set (then all four of endpoint, bucket, access
    key id and secret are required); else ``MVM_TEMPLATE_REGISTRY`` as a local
    directory; else the embedded local registry in ``MVM_HOME/registry``.
    """
    env = os.environ if env is None else env
    s3 = {v: env.get(f"{ENV}_{v}", "").strip() for v in (*S3_REQUIRED, *S3_OPTIONAL)}
    prefix = normalise_prefix(env.get(f"{ENV}_PREFIX", ""))
    location = env.get(ENV, "").strip()
    if any(s3.values()):
        if location:
            raise ConfigError(f"both {ENV} and {ENV}_ENDPOINT/... are set: configure one registry")
        missing = [f"{ENV}_{v}" for v in S3_REQUIRED if not s3[v]]
        if missing:
            raise ConfigError(f"S3 registry configuration incomplete: {', '.join(missing)} not set")
        from mvm.templates.registry.s3 import S3Config, S3Registry

        return S3Registry(
            S3Config(
                endpoint=s3["ENDPOINT"],
                bucket=s3["BUCKET"],
                access_key_id=s3["ACCESS_KEY_ID"],
                secret_access_key=s3["SECRET_ACCESS_KEY"],
                region=s3["REGION"] or "us-east-1",
                prefix=prefix,
            )
        )
    from mvm.templates.registry.local import LocalRegistry

    root = parse_location(location) if location else paths.registry_dir()
    return LocalRegistry(root, prefix)
