"""Root filesystems from OCI images (``image = "…"`` in mvm.toml, ``--image``).

What we chose, and why (docs/oci.md has the user's side):

* **skopeo** converts whatever the user has (an ``oci-archive`` or
  ``docker-archive`` tarball, an OCI layout, a registry) into a private OCI
  layout in the build's 0700 work directory.  It gets a minimal environment
  (``HOME`` is the work directory, so no credentials file of the user's is
  read) and, for local transports, a policy file that accepts the content:
  the manifest digest, not a signature, is what the build pins.
* **umoci** ``raw unpack --rootless`` applies the layers: whiteouts and opaque
  directories, hard links, modes, and hostile entries (``..``, absolute
  paths, a symlink followed by an entry written through it) stay inside the
  bundle; device nodes become empty files.  A well-kept unpacker made for
  exactly this beats a hand-written one.  Rootless, umoci records each
  entry's real owner in the ``user.rootlesscontainers`` xattr; we read it
  (the owners go to ``debugfs`` like every other image's) and remove it so
  ``mkfs.ext4 -d`` does not copy it into the image.
* The unpacked ``rootfs`` **is** the build's staging tree: every write mvm
  makes on top of it goes through :class:`~mvm.image.staging.Staging`, whose
  threat model is a hostile tree (it never follows a symlink on the host).
* The manifest and config are untrusted JSON: read capped, checked against
  their digests, and every field used is type- and size-checked.

The image's config maps onto the spec (:func:`apply`): ``Entrypoint`` +
``Cmd`` → the entrypoint command, ``Env``, ``User`` (numeric or resolved in
the image's ``/etc/passwd``), ``WorkingDir``, ``ExposedPorts`` (recorded and
shown, never published).  Whatever mvm.toml says explicitly wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
import tarfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mvm import proc
from mvm.config.guestpaths import unsafe_name
from mvm.config.imageref import ImageSource
from mvm.config.schema import Entrypoint, GuestSpec, Uids
from mvm.errors import BuildError
from mvm.image.fdwalk import DIR_FLAGS, walk
from mvm.image.hashcache import ContentHashes
from mvm.image.meta import read_capped
from mvm.image.staging import Staging

TAG = "mvm"
INDEX_MAX = 1 << 20
MANIFEST_MAX = 4 << 20
CONFIG_MAX = 8 << 20  # configs carry the build history
ARGV_MAX = 256
ARG_MAX = 8192
ENV_MAX = 1024
PORTS_MAX = 256
PASSWD_MAX = 4 << 20
XATTR = "user.rootlesscontainers"
ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,255}\Z")
PORT_RE = re.compile(r"\A([0-9]{1,5})(?:/(tcp|udp|sctp))?\Z")
USER_RE = re.compile(r"\A[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}\Z")
DIGEST_RE = re.compile(r"\Asha256:([0-9a-f]{64})\Z")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UID_MAX = 65534
LAYERS_MAX = 256
_BLOB_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
SKOPEO_TIMEOUT = 1800.0
REGISTRY_TIMEOUT = 120  # seconds for one manifest lookup
UMOCI_TIMEOUT = 1800.0
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


@dataclass(frozen=True)
class ImageConfig:
    """The part of an image's config mvm uses, validated."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    user: str = ""
    workdir: str = ""
    exposed_ports: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unpacked:
    """An image unpacked into ``root``, with its owners and what it said about itself."""

    root: Path
    digest: str  # the manifest digest ("sha256:…")
    config: ImageConfig
    owners: dict[str, tuple[int, int]]  # guest path -> (uid, gid), non-root only


# -- identity (the input hash) ---------------------------------------------------------------


def identity(src: ImageSource, hashes: ContentHashes) -> str:
    """What the input hash takes from the image, cheaply: an archive's content hash
    (remembered per dev/ino/mtime), a layout's ``index.json`` (the blobs it names are
    content-addressed), a registry's manifest digest (one ``skopeo inspect``)."""
    if src.transport in ("oci-archive", "docker-archive"):
        assert src.path is not None
        fd = _open_regular(src.path, src.ref)
        try:
            return "sha256:" + hashes.of_fd(fd, os.fstat(fd))
        finally:
            os.close(fd)
    if src.transport == "oci":
        assert src.path is not None
        try:
            raw = read_capped(src.path / "index.json", INDEX_MAX)
        except OSError as exc:
            raise BuildError(f"image {src.ref}: cannot read index.json ({exc})") from exc
        return "sha256:" + hashlib.sha256(raw + f"\0{src.tag or ''}".encode()).hexdigest()
    out = _skopeo(["--command-timeout", f"{REGISTRY_TIMEOUT}s", "inspect", "--raw",
                   src.skopeo_ref()], Path("/nonexistent"), src, network=True)  # fmt: skip
    if len(out) > MANIFEST_MAX:
        raise BuildError(f"image {src.ref}: manifest larger than {MANIFEST_MAX} bytes")
    return "sha256:" + hashlib.sha256(out).hexdigest()


def _open_regular(path: Path, what: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BuildError(f"image {what}: cannot open {str(path)!r} ({exc.strerror})") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BuildError(f"image {what}: {str(path)!r} is not a regular file")
    return fd


# -- pull and unpack --------------------------------------------------------------------------


def _skopeo(args: list[str], home: Path, src: ImageSource, *, network: bool = False) -> bytes:
    # HOME and TMPDIR are the build's private work directory: no credentials file of the
    # user's is read, and an oci-archive is extracted there, not in /var/tmp
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(home), "XDG_CONFIG_HOME": str(home),
           "TMPDIR": str(home)}  # fmt: skip
    argv = ["skopeo", "--tmpdir", str(home), *args]
    what = f"reading image {src.ref} (skopeo)"
    return proc.run(argv, env=env, network=network, timeout=SKOPEO_TIMEOUT, what=what).stdout


def unpack(src: ImageSource, work: Path) -> Unpacked:
    """Copy ``src`` into a private layout under ``work`` and unpack it; the rootfs is
    ``work/bundle/rootfs``, owned by us, with the image's owners returned apart."""
    layout = work / "layout"
    policy = work / "policy.json"
    fd = os.open(policy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
    pol = (["--command-timeout", f"{int(SKOPEO_TIMEOUT)}s"] if src.transport == "docker"
           else ["--policy", str(policy)])  # fmt: skip
    _skopeo([*pol, "copy", "-q", "--", src.skopeo_ref(), f"oci:{layout}:{TAG}"], work, src,
            network=src.transport == "docker")  # fmt: skip
    digest, config, layers = read_layout(layout, src.ref)
    for layer in layers:
        scan_layer(layout, layer, src.ref)
    bundle = work / "bundle"
    bundle.mkdir(mode=0o700)
    root = bundle / "rootfs"
    # `raw unpack`: the rootfs only (plain `unpack` also hashes every file into an mtree
    # manifest for repacking, which doubled the time and is never used here)
    proc.run(["umoci", "raw", "unpack", "--rootless", "--image", f"{layout}:{TAG}", str(root)],
             env={"HOME": str(work), "TMPDIR": str(work)}, timeout=UMOCI_TIMEOUT,
             what=f"unpacking image {src.ref} (umoci)")  # fmt: skip
    owners = take_owners(root)
    return Unpacked(root, digest, config, owners)


def _blob(layout: Path, digest: Any, limit: int, what: str) -> bytes:
    m = DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if m is None:
        raise BuildError(f"{what}: not a sha256 digest: {str(digest)[:80]!r}")
    try:
        raw = read_capped(layout / "blobs" / "sha256" / m.group(1), limit)
    except OSError as exc:
        raise BuildError(f"{what}: cannot read blob {digest} ({exc})") from exc
    if hashlib.sha256(raw).hexdigest() != m.group(1):
        raise BuildError(f"{what}: blob {digest} does not match its digest")
    return raw


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BuildError(f"{what}: not valid JSON") from exc
    if not isinstance(data, dict):
        raise BuildError(f"{what}: not a JSON object")
    return data


def read_layout(layout: Path, ref: str) -> tuple[str, ImageConfig, list[dict[str, Any]]]:
    """The manifest digest, validated config and layer descriptors of the one image
    in ``layout``."""
    what = f"image {ref}"
    try:
        index = _json(read_capped(layout / "index.json", INDEX_MAX), f"{what}: index.json")
    except OSError as exc:
        raise BuildError(f"{what}: cannot read index.json ({exc})") from exc
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or len(manifests) != 1 or not isinstance(manifests[0], dict):
        raise BuildError(f"{what}: expected exactly one manifest in the copied layout")
    digest = manifests[0].get("digest")
    manifest = _json(_blob(layout, digest, MANIFEST_MAX, f"{what}: manifest"), f"{what}: manifest")
    if manifest.get("mediaType", MANIFEST_TYPES[0]) not in MANIFEST_TYPES:
        kind = str(manifest.get("mediaType"))[:80]
        raise BuildError(f"{what}: unsupported manifest type {kind!r}")
    cfg_desc = manifest.get("config")
    if not isinstance(cfg_desc, dict):
        raise BuildError(f"{what}: manifest has no config")
    config = _json(_blob(layout, cfg_desc.get("digest"), CONFIG_MAX, f"{what}: config"),
                   f"{what}: config")  # fmt: skip
    layers = manifest.get("layers")
    if (
        not isinstance(layers, list)
        or len(layers) > LAYERS_MAX
        or not all(isinstance(x, dict) for x in layers)
    ):
        raise BuildError(f"{what}: manifest layers must be a list of at most {LAYERS_MAX}")
    return str(digest), parse_config(config, what), layers


def scan_layer(layout: Path, layer: dict[str, Any], ref: str) -> None:
    """Refuse what no container runtime would put in a rootfs either: an entry or a
    hard link whose name climbs out of the root with ``..``, and device nodes
    (outside ``/dev``, which the guest mounts over).  Everything else hostile (absolute
    names, symlinks pointing out, entries written through a symlink) umoci resolves
    inside the rootfs, as runtimes do."""
    raw = layer.get("digest")
    m = DIGEST_RE.fullmatch(raw) if isinstance(raw, str) else None
    if m is None:
        raise BuildError(f"image {ref}: layer digest {str(raw)[:80]!r} is not sha256")
    digest = m.group(0)
    kind = layer.get("mediaType", "")
    if not isinstance(kind, str) or not kind.endswith(("tar", "tar+gzip", ".tar", ".tar.gzip")):
        raise BuildError(f"image {ref}: layer {digest[:19]}: unsupported type {str(kind)[:80]!r}")
    try:
        fd = os.open(layout / "blobs" / "sha256" / m.group(1), _BLOB_FLAGS)
    except OSError as exc:
        raise BuildError(f"image {ref}: layer {digest[:19]}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BuildError(f"image {ref}: layer {digest[:19]} is not a regular file")
        try:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    _check_member(member, ref, digest[:19])
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BuildError(f"image {ref}: layer {digest[:19]} is not a valid tar: {exc}") from exc


def _escapes(name: str) -> bool:
    depth = 0
    for part in name.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _check_member(member: tarfile.TarInfo, ref: str, layer: str) -> None:
    name = member.name
    shown = name[:120]
    if "\0" in name or _escapes(name.lstrip("/")):
        raise BuildError(f"image {ref}: layer {layer}: entry {shown!r} climbs out of the root "
                         "(path traversal); refused")  # fmt: skip
    if member.islnk() and _escapes(member.linkname.lstrip("/")):
        raise BuildError(f"image {ref}: layer {layer}: hard link {shown!r} -> "
                         f"{member.linkname[:120]!r} points out of the root; refused")  # fmt: skip
    if (member.ischr() or member.isblk()) and not _under_dev(name):
        raise BuildError(f"image {ref}: layer {layer}: device node {shown!r}: images cannot "
                         "carry devices (the guest's /dev is devtmpfs); refused")  # fmt: skip


def _under_dev(name: str) -> bool:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return len(parts) > 1 and parts[0] == "dev"


def parse_config(data: dict[str, Any], what: str) -> ImageConfig:
    """Validate the fields of an image config mvm uses (the rest is ignored)."""
    arch, os_ = data.get("architecture", "amd64"), data.get("os", "linux")
    if arch not in ("amd64", "x86_64") or os_ != "linux":
        raise BuildError(f"{what}: built for {str(os_)[:20]}/{str(arch)[:20]}; "
                         "mvm boots linux/amd64 guests")  # fmt: skip
    c = data.get("config")
    c = {} if c is None else c
    if not isinstance(c, dict):
        raise BuildError(f"{what}: config.config must be an object")

    def argv(key: str) -> tuple[str, ...]:
        v = c.get(key) or []
        if (
            not isinstance(v, list)
            or len(v) > ARGV_MAX
            or not all(isinstance(a, str) and len(a) <= ARG_MAX and "\0" not in a for a in v)
        ):
            raise BuildError(f"{what}: config {key} must be a list of at most {ARGV_MAX} strings")
        return tuple(v)

    env: list[tuple[str, str]] = []
    raw_env = c.get("Env") or []
    if not isinstance(raw_env, list) or len(raw_env) > ENV_MAX:
        raise BuildError(f"{what}: config Env must be a list of at most {ENV_MAX} strings")
    for item in raw_env:
        if not isinstance(item, str) or "=" not in item or "\0" in item or len(item) > ARG_MAX:
            raise BuildError(f"{what}: config Env entry {str(item)[:60]!r} is not NAME=VALUE")
        name, _, value = item.partition("=")
        if not ENV_NAME.fullmatch(name):
            raise BuildError(f"{what}: config Env name {name[:60]!r} is not a shell variable name")
        env = [e for e in env if e[0] != name] + [(name, value)]
    user = c.get("User") or ""
    if not isinstance(user, str) or len(user) > 129:
        raise BuildError(f"{what}: config User must be a short string")
    workdir = c.get("WorkingDir") or ""
    if not isinstance(workdir, str) or len(workdir) > 4095 or "\0" in workdir:
        raise BuildError(f"{what}: config WorkingDir must be a path")
    if workdir:
        if not workdir.startswith("/"):
            workdir = "/" + workdir  # what runtimes do with a relative WorkingDir
        workdir = posixpath.normpath(workdir)
        if unsafe_name(workdir):
            raise BuildError(f"{what}: config WorkingDir {workdir[:60]!r}: unsupported name")
    ports = c.get("ExposedPorts") or {}
    if not isinstance(ports, dict) or len(ports) > PORTS_MAX:
        raise BuildError(f"{what}: config ExposedPorts must be an object of at most "
                         f"{PORTS_MAX} ports")  # fmt: skip
    exposed = []
    for p in ports:
        m = PORT_RE.fullmatch(p)
        if m is None or not 1 <= int(m.group(1)) <= 65535:
            raise BuildError(f"{what}: config ExposedPorts entry {p[:20]!r} is not PORT/PROTO")
        exposed.append(f"{int(m.group(1))}/{m.group(2) or 'tcp'}")
    return ImageConfig(argv("Entrypoint"), argv("Cmd"), tuple(env), user, workdir,
                       tuple(sorted(set(exposed))))  # fmt: skip


def take_owners(root: Path) -> dict[str, tuple[int, int]]:
    """Read (and remove) the owners umoci recorded in ``user.rootlesscontainers``."""
    owners: dict[str, tuple[int, int]] = {}
    fd = os.open(root, DIR_FLAGS)
    try:
        for e in walk(fd):
            # /proc/self/fd/N names the open parent; the last component is not followed
            path = f"/proc/self/fd/{e.dir_fd}/{e.name}"
            try:
                raw = os.getxattr(path, XATTR, follow_symlinks=False)
            except OSError:
                continue
            uid, gid = _decode_owner(raw)
            if uid > UID_MAX or gid > UID_MAX:
                raise BuildError(f"image file /{e.rel}: owner {uid}:{gid} is out of range")
            os.removexattr(path, XATTR, follow_symlinks=False)
            if (uid, gid) != (0, 0):
                owners["/" + e.rel] = (uid, gid)
    finally:
        os.close(fd)
    return owners


def _decode_owner(raw: bytes) -> tuple[int, int]:
    """The rootlesscontainers protobuf: field 1 uid, field 2 gid (varints, 0 omitted)."""
    vals = {1: 0, 2: 0}
    i = 0
    while i < len(raw):
        key, i = _varint(raw, i)
        if key & 7 != 0:
            raise BuildError("image: malformed user.rootlesscontainers xattr")
        value, i = _varint(raw, i)
        if key >> 3 in vals:
            vals[key >> 3] = value
    return vals[1], vals[2]


def _varint(raw: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(raw) or shift > 35:
            raise BuildError("image: malformed user.rootlesscontainers xattr")
        b = raw[i]
        i += 1
        out |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return out, i


# -- config → spec ---------------------------------------------------------------------------


def parse_passwd(data: bytes) -> list[list[str]]:
    """The well-formed lines of a passwd file (seven fields, numeric uid)."""
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        f = line.split(":")
        if len(f) == 7 and f[2].isdigit() and f[3].isdigit():
            out.append(f)
    return out


def resolve_user(user: str, passwd: list[list[str]], what: str) -> int:
    """``User`` (``uid``, ``name``, ``uid:gid``, ``name:group``) → the uid."""
    name = user.split(":", 1)[0]
    if name.isdigit():
        uid = int(name)
    else:
        if not USER_RE.fullmatch(name):
            raise BuildError(f"{what}: config User {user[:40]!r} is not a user name or uid")
        found = [int(f[2]) for f in passwd if f[0] == name]
        if not found:
            raise BuildError(f"{what}: config User {name!r} is not in the image's /etc/passwd")
        uid = found[0]
    if uid > UID_MAX:
        raise BuildError(f"{what}: config User {user[:40]!r}: uid out of range (0..{UID_MAX})")
    return uid


def apply(spec: GuestSpec, cfg: ImageConfig, st: Staging, ref: str) -> GuestSpec:
    """``spec`` with what the image's config says, where mvm.toml did not say it."""
    what = f"image {ref}"
    passwd = parse_passwd(st.read("/etc/passwd", PASSWD_MAX) or b"")
    entrypoint = spec.entrypoint
    if "entrypoint" not in spec.explicit:
        argv = cfg.entrypoint + cfg.cmd
        if not argv:
            raise BuildError(f"{what} has no Entrypoint or Cmd",
                             hint="set [entrypoint] command = [...] in mvm.toml")  # fmt: skip
        entrypoint = Entrypoint("command", command=argv)
    uid = spec.uids.entrypoint
    if "uid" not in spec.explicit:
        uid = resolve_user(cfg.user, passwd, what) if cfg.user else 0
        if uid == 0 and spec.sealed:
            raise BuildError(
                f"{what} runs as root (User is {cfg.user or 'unset'}), and a sealed image "
                "refuses a root entrypoint",
                hint="say so explicitly in mvm.toml: [uids] entrypoint = 0 (or dev = true)",
            )
    if uid == spec.uids.agent:
        raise BuildError(f"{what} runs as uid {uid}, which is mvm's agent uid",
                         hint="choose another agent uid: [uids] agent = N in mvm.toml")  # fmt: skip
    homes = [f[5] for f in passwd if int(f[2]) == uid and f[5].startswith("/")]
    home = posixpath.normpath(homes[0]) if homes else ("/root" if uid == 0 else "/")
    if unsafe_name(home) or ".." in home.split("/"):
        home = "/"
    # a sealed image's home is a private tmpfs, unless that would hide the image's files
    tmpfs = home != "/" and not st.listdir(home)
    env = cfg.env
    if not any(k == "PATH" for k, _v in env):
        env = (("PATH", DEFAULT_PATH), *env)
    return replace(
        spec, entrypoint=entrypoint, uids=Uids(spec.uids.agent, uid), env=env,
        workdir=cfg.workdir or "/", home_dir=home, home_tmpfs=tmpfs,
        exposed_ports=cfg.exposed_ports,
    )  # fmt: skip
