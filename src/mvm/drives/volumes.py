"""Persistent data volumes: ext4 images under ``MVM_HOME/volumes/VM/`` that
survive ``down``/``up`` of the same VM name, created once (seeded from the
host directory), grown on request, never shrunk; listed and removed with
``mvmctl volume ls|rm`` and ``mvmctl down --volumes``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mvm import paths, proc
from mvm.drives.spec import MiB, VolumeSpec, _human
from mvm.errors import BuildError, DriveError, NotFoundError
from mvm.image import rootfs
from mvm.log import get_logger
from mvm.state.atomic import write_json

log = get_logger(__name__)


def volume_image(vm: str, guest: str) -> Path:
    """Where the data volume for (VM name, guest path) lives."""
    slug = guest.strip("/").replace("/", "-")[:40]
    digest = hashlib.sha256(guest.encode()).hexdigest()[:8]
    return paths.volumes_dir() / paths.validate_name(vm, "VM name") / f"{slug}-{digest}.ext4"


def ensure_volume(v: VolumeSpec, image: Path, uid: int) -> bool:
    """Create the data volume (seeded from ``v.host``) unless it exists; grow it if
    asked for more.  Return whether it was created now."""
    assert v.size is not None
    size_mib = -(-v.size // MiB)
    if image.exists():
        have = image.stat().st_size
        if size_mib * MiB < have:
            raise DriveError(
                f"data volume {v.guest} is {_human(have)}; it cannot shrink to {_human(v.size)} "
                f"(remove {image} to start over)"
            )
        if size_mib * MiB > have:
            _grow(image, size_mib, v.guest)
        return False
    paths.ensure_private_dir(image.parent)
    paths.ensure_private_dir(paths.volumes_dir())
    tmp = image.with_name(f".{image.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        with tempfile.TemporaryDirectory(dir=image.parent, prefix=".empty-") as empty:
            rootfs.make_ext4(v.host or Path(empty), tmp, {}, label="mvm-data",
                             size_mib=size_mib, default_owner=(uid, uid), journal=True,
                             what=f"creating data volume {v.guest}")  # fmt: skip
        write_json(_meta(image), {"guest": v.guest, "created_at": time.time()})
        os.replace(tmp, image)
    except BuildError as exc:
        raise DriveError(f"data volume {v.guest}: {exc.message}", log_tail=exc.log_tail) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    log.info("created data volume %s (%s) at %s", v.guest, _human(v.size), image)
    return True


def _meta(image: Path) -> Path:
    return image.with_suffix(".json")


@dataclass(frozen=True)
class VolumeInfo:
    """A data volume as ``mvmctl volume ls`` shows it."""

    vm: str
    guest: str
    path: Path
    size: int  # bytes (the image's apparent size: its capacity)
    used: int  # bytes actually allocated on the host

    def to_json(self) -> dict[str, object]:
        return {"vm": self.vm, "guest": self.guest, "path": str(self.path),
                "size": self.size, "used": self.used}  # fmt: skip


def list_volumes(vm: str | None = None) -> list[VolumeInfo]:
    """Every data volume (of ``vm``, or of every VM), sorted."""
    root = paths.volumes_dir()
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or not paths.NAME_RE.fullmatch(d.name) or (vm and d.name != vm):
            continue
        for img in sorted(d.glob("*.ext4")):
            guest = "/" + img.stem.rsplit("-", 1)[0]  # best effort without metadata
            with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
                recorded = json.loads(_meta(img).read_text()).get("guest")
                if isinstance(recorded, str) and recorded.startswith("/"):
                    guest = recorded
            st = img.stat()
            out.append(VolumeInfo(d.name, guest, img, st.st_size, st.st_blocks * 512))
    return out


def remove_volumes(vm: str, guest: str | None = None) -> list[VolumeInfo]:
    """Remove ``vm``'s data volumes (or only the one mounted at ``guest``)."""
    paths.validate_name(vm, "VM name")
    gone = [v for v in list_volumes(vm) if guest is None or v.guest == guest]
    if guest is not None and not gone:
        raise NotFoundError(f"VM {vm} has no data volume at {guest}")
    for v in gone:
        v.path.unlink(missing_ok=True)
        _meta(v.path).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (paths.volumes_dir() / vm).rmdir()
    return gone


def _grow(image: Path, size_mib: int, guest: str) -> None:
    try:
        proc.run(
            ["e2fsck", "-f", "-p", image],
            error=DriveError,
            ok=(0, 1),  # 1: fixed
            what=f"checking data volume {guest}",
        )
        os.truncate(image, size_mib * MiB)
        proc.run(["resize2fs", image], error=DriveError, what=f"growing data volume {guest}")
    except OSError as exc:
        raise DriveError(f"growing data volume {guest}: {exc.strerror}") from exc
