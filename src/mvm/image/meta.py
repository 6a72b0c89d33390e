"""``revision.json``: an image's metadata, typed and validated in one place.

Every reader of ``revision.json`` should go through :meth:`ImageMeta.from_json`
(or :func:`load`): the file may come from a registry or a hand-edited
``MVM_HOME``, and a value of the wrong type must stop with a one-line
``MetadataError`` that names the file and the key, not as a ``KeyError`` or
``TypeError`` deep inside ``up``.

What is written (``image/builder.py`` for images; ``templates/build.py`` adds
``projectName`` and ``template`` and sets ``name``/``defaults``) is kept key for
key: :meth:`ImageMeta.to_json` gives back exactly the object that was read.

Compatibility rules:

- ``schema`` is required; an unknown version is refused.  A writer that adds a
  key older readers *must* understand bumps it.
- Unknown **top-level** keys are kept (in ``extra``) and written back unchanged:
  a newer mvm may add informational keys within one schema, and dropping them
  would change the file's bytes and so its checksum.  Nothing here ever
  interprets them.  Nested objects (``uids``, ``defaults``, ``kernel``…) must
  have exactly their known keys, so a typo cannot hide there.
- ``hypervisor`` and ``guestFeatures`` were added after schema 1 was first
  written; when absent they stay absent (``backend`` is then ``qemu`` and
  ``features`` empty, which is what those older images mean).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mvm.config.schema import HYPERVISORS
from mvm.errors import MetadataError
from mvm.paths import NAME_RE

SCHEMA = 1
#: schema 2: an OCI image (``initPath``, ``image``): an mvm that only reads 1 would
#: boot the image's own /init, so it must refuse such an image
SCHEMAS = (1, 2)
#: A revision.json (or any small metadata file) larger than this is not ours.
MAX_BYTES = 1 << 20
ARTEFACTS: tuple[str, ...] = ("kernel", "initramfs.cpio", "rootfs.ext4")
ENTRYPOINT_KINDS: tuple[str, ...] = ("shell", "command", "services")
AGENT_BINARIES: tuple[str, ...] = ("stub", "real")  # stub: images built before the agent
VCPUS_RANGE = (1, 64)
MEMORY_RANGE = (64, 1 << 20)  # MiB
UID_RANGE = (0, 65534)
MAX_ARTEFACT_BYTES = 1 << 40  # 1 TiB: anything claiming more is not an image

HEX64 = re.compile(r"[0-9a-f]{64}")
INIT_RE = re.compile(r"/(?:\.mvm/)?init")
IMAGE_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
EXPOSED_RE = re.compile(r"[0-9]{1,5}/(?:tcp|udp|sctp)")
ISO_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
FEATURE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
ACCEL_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,15}")
DEB_RE = re.compile(r"[a-z0-9][a-z0-9+.-]{0,127}")
KERNEL_BOOTS = ("initramfs", "direct")
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}")

_KEYS = {
    "schema", "name", "accessible", "sealed", "entrypointKind", "hypervisor", "uids",
    "rootlessEntrypoint", "agentBinary", "guestFeatures", "expectedBootMs",
    "expectedBootMsByAccel", "inputHash", "kernel", "packages", "defaults", "checksums",
    "sizes", "createdAt", "buildSeconds", "mvmVersion", "projectName", "template",
    "initPath", "image",
}  # fmt: skip


@dataclass(frozen=True)
class Uids:
    agent: int
    entrypoint: int


@dataclass(frozen=True)
class Defaults:
    """What a VM from this image gets unless ``run``/``up`` says otherwise."""

    vcpus: int
    memory_mib: int


@dataclass(frozen=True)
class KernelInfo:
    version: str
    identity: str
    # how the runtime must start this kernel (absent in older revisions: the
    # Debian kernel's way, an initramfs and `nokaslr`)
    kaslr: bool | None = None  # False: no RANDOMIZE_BASE, so no `nokaslr` argument
    boot: str | None = None  # "direct": root=/dev/vda, no initramfs; else "initramfs"

    @property
    def direct_boot(self) -> bool:
        return self.boot == "direct"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "identity": self.identity}
        if self.kaslr is not None:
            out["kaslr"] = self.kaslr
        if self.boot is not None:
            out["boot"] = self.boot
        return out


@dataclass(frozen=True)
class TemplateInfo:
    """Set on template revisions: which template, its revision key and settings.

    ``settings`` is only checked to be a JSON object here; its rules live in
    :class:`mvm.templates.store.Settings`, which validates it when a revision
    is loaded.
    """

    name: str
    key: str
    settings: Mapping[str, Any]
    created_at: str


@dataclass(frozen=True)
class OciInfo:
    """Set on images built from an OCI image: what it was, and what it exposes."""

    ref: str
    digest: str
    exposed_ports: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageMeta:
    """The validated content of one ``revision.json``."""

    schema: int
    name: str
    accessible: bool
    sealed: bool
    entrypoint_kind: str
    uids: Uids
    rootless_entrypoint: bool
    agent_binary: str
    expected_boot_ms: int
    expected_boot_ms_by_accel: Mapping[str, int]
    input_hash: str
    kernel: KernelInfo
    packages: tuple[str, ...]
    defaults: Defaults
    checksums: Mapping[str, str]
    sizes: Mapping[str, int]
    created_at: str
    build_seconds: float
    mvm_version: str
    hypervisor: str | None = None
    guest_features: tuple[str, ...] | None = None
    project_name: str | None = None
    template: TemplateInfo | None = None
    init_path: str | None = None  # absent: /init
    image: OciInfo | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def init_exec(self) -> str:
        """The rootfs path the kernel (or the initramfs) starts as PID 1 (mvm's /init;
        ``/.mvm/init`` in an OCI image)."""
        return self.init_path or "/init"

    @property
    def guest_init(self) -> str:
        """The guest's PID 1 kind: "busybox" (mvm's /init; older images) or "systemd"."""
        return "systemd" if self.extra.get("init") == "systemd" else "busybox"

    @property
    def backend(self) -> str:
        """The hypervisor to boot with (images older than the key mean QEMU)."""
        return self.hypervisor or "qemu"

    @property
    def features(self) -> frozenset[str]:
        """What the image's /init understands (older images: nothing optional)."""
        return frozenset(self.guest_features or ())

    # -- reading -----------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: Any, where: str) -> ImageMeta:
        """Validate a decoded ``revision.json``; raise ``MetadataError`` naming ``where``."""
        v = _Check(where)
        obj = v.obj(data, "revision.json")
        schema = obj.get("schema")
        if schema not in SCHEMAS or isinstance(schema, bool):
            raise MetadataError(
                f"{where}: revision.json has unsupported schema {schema!r} "
                f"(this mvm reads schemas {', '.join(map(str, SCHEMAS))})",
                hint="rebuild it, or use the mvm version that wrote it",
            )
        accessible, sealed = v.boolean(obj, "accessible"), v.boolean(obj, "sealed")
        if sealed == accessible:
            raise v.bad("sealed", "must be the opposite of accessible")
        uids_obj = v.obj_exact(obj, "uids", {"agent", "entrypoint"})
        uids = Uids(v.integer(uids_obj, "agent", *UID_RANGE, "uids."),
                    v.integer(uids_obj, "entrypoint", *UID_RANGE, "uids."))  # fmt: skip
        rootless = v.boolean(obj, "rootlessEntrypoint")
        if rootless != (uids.entrypoint != 0):
            raise v.bad("rootlessEntrypoint", "does not match uids.entrypoint")
        defaults_obj = v.obj_exact(obj, "defaults", {"vcpus", "memory_mib"})
        kernel_obj = v.obj_exact(obj, "kernel", {"version", "identity"}, {"kaslr", "boot"})
        identity = v.text(kernel_obj, "identity", None, "kernel.", max_len=4096)
        if not identity.isprintable():
            raise v.bad("kernel.identity", "must be printable text")
        kernel = KernelInfo(
            v.text(kernel_obj, "version", VERSION_RE, "kernel."), identity,
            kaslr=v.boolean(kernel_obj, "kaslr", "kernel.") if "kaslr" in kernel_obj else None,
            boot=v.choice(kernel_obj, "boot", KERNEL_BOOTS, "kernel.")
            if "boot" in kernel_obj else None,
        )  # fmt: skip
        sums, sizes = v.artefact_map(obj, "checksums"), v.artefact_map(obj, "sizes")
        oci = v.oci(obj) if "image" in obj else None
        init_path = v.text(obj, "initPath", INIT_RE) if "initPath" in obj else None
        if (schema == 2) != (init_path is not None):
            raise v.bad("initPath", "is set exactly on schema 2 revisions")
        return cls(
            schema=schema,
            name=v.text(obj, "name", NAME_RE),
            accessible=accessible,
            sealed=sealed,
            entrypoint_kind=v.choice(obj, "entrypointKind", ENTRYPOINT_KINDS),
            uids=uids,
            rootless_entrypoint=rootless,
            agent_binary=v.choice(obj, "agentBinary", AGENT_BINARIES),
            expected_boot_ms=v.integer(obj, "expectedBootMs", 1, 3_600_000),
            expected_boot_ms_by_accel=v.int_map(
                obj, "expectedBootMsByAccel", ACCEL_RE, 1, 3_600_000
            ),
            input_hash=v.text(obj, "inputHash", HEX64),
            kernel=kernel,
            packages=v.str_list(obj, "packages", DEB_RE, 100_000),
            defaults=Defaults(
                v.integer(defaults_obj, "vcpus", *VCPUS_RANGE, "defaults."),
                v.integer(defaults_obj, "memory_mib", *MEMORY_RANGE, "defaults."),
            ),
            checksums={a: v.text(sums, a, HEX64, "checksums.") for a in ARTEFACTS},
            sizes={a: v.integer(sizes, a, 0, MAX_ARTEFACT_BYTES, "sizes.") for a in ARTEFACTS},
            created_at=v.text(obj, "createdAt", ISO_TIME),
            build_seconds=v.seconds(obj, "buildSeconds"),
            mvm_version=v.text(obj, "mvmVersion", VERSION_RE),
            hypervisor=v.choice(obj, "hypervisor", HYPERVISORS) if "hypervisor" in obj else None,
            guest_features=(
                v.str_list(obj, "guestFeatures", FEATURE_RE, 64) if "guestFeatures" in obj else None
            ),
            project_name=v.text(obj, "projectName", NAME_RE) if "projectName" in obj else None,
            template=v.template(obj) if "template" in obj else None,
            init_path=init_path,
            image=oci,
            extra={k: val for k, val in obj.items() if k not in _KEYS},
        )

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> ImageMeta:
        """Decode and validate; any JSON problem is a ``MetadataError`` too."""
        if len(raw) > MAX_BYTES:
            raise MetadataError(f"{where}: revision.json is larger than {MAX_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise MetadataError(f"{where}: revision.json is not valid JSON") from exc
        return cls.from_json(data, where)

    # -- writing -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON object; ``from_json(x).to_json() == x`` for every valid ``x``."""
        out: dict[str, Any] = dict(self.extra)
        out.update({
            "schema": self.schema, "name": self.name, "accessible": self.accessible,
            "sealed": self.sealed, "entrypointKind": self.entrypoint_kind,
            "uids": {"agent": self.uids.agent, "entrypoint": self.uids.entrypoint},
            "rootlessEntrypoint": self.rootless_entrypoint, "agentBinary": self.agent_binary,
            "expectedBootMs": self.expected_boot_ms,
            "expectedBootMsByAccel": dict(self.expected_boot_ms_by_accel),
            "inputHash": self.input_hash,
            "kernel": self.kernel.to_json(),
            "packages": list(self.packages),
            "defaults": {"vcpus": self.defaults.vcpus, "memory_mib": self.defaults.memory_mib},
            "checksums": dict(self.checksums), "sizes": dict(self.sizes),
            "createdAt": self.created_at, "buildSeconds": self.build_seconds,
            "mvmVersion": self.mvm_version,
        })  # fmt: skip
        if self.hypervisor is not None:
            out["hypervisor"] = self.hypervisor
        if self.guest_features is not None:
            out["guestFeatures"] = list(self.guest_features)
        if self.project_name is not None:
            out["projectName"] = self.project_name
        if self.template is not None:
            t = self.template
            out["template"] = {"name": t.name, "key": t.key, "settings": dict(t.settings),
                               "createdAt": t.created_at}  # fmt: skip
        if self.init_path is not None:
            out["initPath"] = self.init_path
        if self.image is not None:
            out["image"] = {"ref": self.image.ref, "digest": self.image.digest,
                            "exposedPorts": list(self.image.exposed_ports)}  # fmt: skip
        return out

    def encode(self) -> bytes:
        """The bytes mvm writes as ``revision.json`` (sorted keys, so stable)."""
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    def for_template(self, name: str, key: str, settings: Mapping[str, Any], created_at: str,
                     defaults: Defaults) -> ImageMeta:  # fmt: skip
        """This image's metadata as a revision of template ``name``."""
        return replace(
            self, name=name, project_name=self.project_name or self.name, defaults=defaults,
            template=TemplateInfo(name, key, dict(settings), created_at),
        )  # fmt: skip


def load(path: Path) -> ImageMeta:
    """Read and validate ``path`` (a ``revision.json``); the file is named in errors."""
    try:
        raw = read_capped(path, MAX_BYTES)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read revision.json ({exc.strerror or exc})") from exc
    return ImageMeta.from_bytes(raw, str(path))


def read_capped(path: Path, limit: int) -> bytes:
    """The bytes of a small regular file, refusing anything else.

    Metadata files are untrusted: a FIFO would block ``read`` forever, a
    symlink to ``/dev/zero`` or a huge file would fill memory.  So open
    without following a final symlink and without blocking, insist on a
    regular file, and read at most ``limit`` bytes.  Raises ``OSError``
    (``FileNotFoundError`` when missing; ``EFBIG``-style otherwise).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path.name} is larger than {limit} bytes")
    return data


class _Check:
    """Typed accessors that raise ``MetadataError`` naming the file and the key."""

    def __init__(self, where: str):
        self.where = where

    def bad(self, key: str, problem: str) -> MetadataError:
        return MetadataError(f"{self.where}: revision.json {key}: {problem}")

    def obj(self, data: Any, key: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise MetadataError(f"{self.where}: {key} must be a JSON object")
        return data

    def _get(self, obj: Mapping[str, Any], key: str, prefix: str) -> Any:
        if key not in obj:
            raise self.bad(prefix + key, "missing")
        return obj[key]

    def obj_exact(
        self, obj: Mapping[str, Any], key: str, keys: set[str], optional: frozenset[str] | set[str]
        = frozenset(),
    ) -> dict[str, Any]:  # fmt: skip
        value = self._get(obj, key, "")
        if not isinstance(value, dict) or not keys <= set(value) <= keys | set(optional):
            extra = f" (optionally {', '.join(sorted(optional))})" if optional else ""
            raise self.bad(key, f"must be an object with exactly {', '.join(sorted(keys))}{extra}")
        return value

    def boolean(self, obj: Mapping[str, Any], key: str, prefix: str = "") -> bool:
        value = self._get(obj, key, prefix)
        if not isinstance(value, bool):
            raise self.bad(prefix + key, f"must be true or false, not {value!r}")
        return value

    def integer(self, obj: Mapping[str, Any], key: str, lo: int, hi: int, prefix: str = "") -> int:
        value = self._get(obj, key, prefix)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.bad(prefix + key, f"must be an integer between {lo} and {hi}, "
                                         f"not {_short(value)}")  # fmt: skip
        return value

    def seconds(self, obj: Mapping[str, Any], key: str) -> float:
        value = self._get(obj, key, "")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not 0 <= value <= 1e7:
            raise self.bad(key, f"must be a number of seconds, not {_short(value)}")
        return value  # type: ignore[no-any-return]

    def text(self, obj: Mapping[str, Any], key: str, pattern: re.Pattern[str] | None,
            prefix: str = "", *, max_len: int = 256) -> str:  # fmt: skip
        value = self._get(obj, key, prefix)
        if not isinstance(value, str) or len(value) > max_len:
            raise self.bad(prefix + key, f"must be a string, not {_short(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.bad(prefix + key, f"invalid value {_short(value)}")
        return value

    def choice(
        self, obj: Mapping[str, Any], key: str, allowed: tuple[str, ...], prefix: str = ""
    ) -> str:
        value = self._get(obj, key, prefix)
        if not isinstance(value, str) or value not in allowed:
            raise self.bad(prefix + key,
                           f"must be one of {', '.join(allowed)}, not {_short(value)}")  # fmt: skip
        return value

    def str_list(self, obj: Mapping[str, Any], key: str, pattern: re.Pattern[str],
                 max_items: int) -> tuple[str, ...]:  # fmt: skip
        value = self._get(obj, key, "")
        if not isinstance(value, list) or len(value) > max_items:
            raise self.bad(key, f"must be a list of at most {max_items} strings")
        for item in value:
            if not isinstance(item, str) or not pattern.fullmatch(item):
                raise self.bad(key, f"invalid entry {_short(item)}")
        return tuple(value)

    def int_map(self, obj: Mapping[str, Any], key: str, pattern: re.Pattern[str], lo: int,
                hi: int) -> dict[str, int]:  # fmt: skip
        value = self._get(obj, key, "")
        if not isinstance(value, dict) or len(value) > 16:
            raise self.bad(key, "must be an object of at most 16 entries")
        for k in value:
            if not pattern.fullmatch(k):
                raise self.bad(key, f"invalid key {_short(k)}")
        return {k: self.integer(value, k, lo, hi, key + ".") for k in value}

    def artefact_map(self, obj: Mapping[str, Any], key: str) -> dict[str, Any]:
        return self.obj_exact(obj, key, set(ARTEFACTS))

    def oci(self, obj: Mapping[str, Any]) -> OciInfo:
        o = self.obj_exact(obj, "image", {"ref", "digest", "exposedPorts"})
        ref = self.text(o, "ref", None, "image.", max_len=1024)
        if not ref.isprintable():
            raise self.bad("image.ref", "must be printable text")
        return OciInfo(ref, self.text(o, "digest", IMAGE_DIGEST_RE, "image."),
                       self.str_list(o, "exposedPorts", EXPOSED_RE, 256))  # fmt: skip

    def template(self, obj: Mapping[str, Any]) -> TemplateInfo:
        t = self.obj_exact(obj, "template", {"name", "key", "settings", "createdAt"})
        settings = t["settings"]
        if not isinstance(settings, dict):
            raise self.bad("template.settings", "must be an object")
        return TemplateInfo(
            name=self.text(t, "name", NAME_RE, "template."),
            key=self.text(t, "key", HEX64, "template."),
            settings=settings,
            created_at=self.text(t, "createdAt", ISO_TIME, "template."),
        )


def _short(value: Any) -> str:
    """A value for a message: repr, cut short (hostile files can hold megabytes)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
