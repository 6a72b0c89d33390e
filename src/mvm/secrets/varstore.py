"""The host's var store: each VM's generated files, secret ones encrypted at rest.

Layout (everything 0700/0600)::

    MVM_HOME/vars/identity          the host's age identity (X25519, 0600)
    MVM_HOME/vars/VM/GEN/meta.json  which files, secret or not, mode, size, when
    MVM_HOME/vars/VM/GEN/FILE.age   a secret file, age-encrypted to the host identity
    MVM_HOME/vars/VM/GEN/FILE       a public file, plain

Why encrypted when the directory is already private: backups, disk images and
a stray ``grep -r`` see the store; only mvmctl with the identity reads it.

A generator's directory is replaced whole (:func:`commit`): the new values are
written into a sibling directory and exchanged with the old one in one
``renameat2(RENAME_EXCHANGE)``, so a reader sees either every old value or
every new one, and the old directory is removed right after.  Export and
import move a VM's store between hosts as one age-encrypted bundle (to an age
recipient or a passphrase), never as plaintext.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyrage
from pyrage import passphrase as age_passphrase
from pyrage import x25519

from mvm import paths
from mvm.config.vars_schema import FILE_RE, GEN_RE
from mvm.errors import VarsError
from mvm.state.atomic import locked

SCHEMA = 1
BUNDLE_KIND = "mvm-vars"
MAX_FILE = 1 << 20  # a var becomes a credential: systemd's 1 MiB limit
MAX_BUNDLE = 64 << 20
META = "meta.json"
IDENTITY = "identity"
AGE_MAGIC = b"age-encryption.org/v1\n"


@dataclass(frozen=True)
class VarFile:
    """One stored file (its value only in memory, never in ``repr``)."""

    name: str
    secret: bool
    mode: int
    value: bytes = field(repr=False)


@dataclass(frozen=True)
class StoredGenerator:
    name: str
    files: dict[str, dict[str, Any]]  # name -> {secret, mode, size}
    generated_at: str
    script_sha256: str


def root() -> Path:
    return paths.home() / "vars"


def vm_root(vm: str) -> Path:
    return root() / paths.validate_name(vm, "VM name")


@contextlib.contextmanager
def vm_lock(vm: str) -> Iterator[None]:
    """One writer per VM store (generate, import, remove); readers need no lock."""
    paths.ensure_private_dir(root())
    with locked(root() / f".{paths.validate_name(vm, 'VM name')}.lock", timeout=120):
        yield


# -- the host identity ---------------------------------------------------------


def host_identity() -> x25519.Identity:
    """The host's age identity, created on first use (0600, under MVM_HOME)."""
    path = root() / IDENTITY
    paths.ensure_private_dir(root())
    with locked(root() / ".identity.lock", timeout=30):
        if not path.exists():
            ident = x25519.Identity.generate()
            tmp = path.with_name(f".{IDENTITY}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"# mvm host identity (age); keep private\n{ident}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            return ident
    return read_identity(path)


def read_identity(path: Path) -> x25519.Identity:
    """An age identity file (``AGE-SECRET-KEY-…`` lines, ``#`` comments); the host's
    own one must not be readable by anyone else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise VarsError(f"cannot read identity {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise VarsError(f"identity {path} is not a regular file")
        if st.st_mode & 0o077 and path == root() / IDENTITY:
            raise VarsError(f"identity {path} is readable by others", hint=f"chmod 600 {path}")
        data = f.read(1 << 16)
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                return x25519.Identity.from_str(line)
            except pyrage.IdentityError as exc:
                raise VarsError(f"identity {path}: not a valid age identity") from exc
    raise VarsError(f"identity {path}: no AGE-SECRET-KEY line")


def host_recipient() -> str:
    """The public half of the host identity (``age1…``): export to it from another host."""
    return str(host_identity().to_public())


def parse_recipient(text: str) -> x25519.Recipient:
    try:
        return x25519.Recipient.from_str(text.strip())
    except pyrage.RecipientError as exc:
        raise VarsError(f"invalid age recipient (expected age1…): {exc}") from exc


# -- reading -------------------------------------------------------------------


def generators(vm: str) -> dict[str, StoredGenerator]:
    """What the store holds for ``vm`` (missing store → empty)."""
    base = vm_root(vm)
    out: dict[str, StoredGenerator] = {}
    if not base.is_dir():
        return out
    for d in sorted(base.iterdir()):
        if d.name.startswith(".") or not GEN_RE.fullmatch(d.name) or d.is_symlink():
            continue
        meta = _read_meta(d)
        if meta is not None:
            out[d.name] = meta
    return out


def _read_meta(d: Path) -> StoredGenerator | None:
    try:
        raw = json.loads(_read_capped(d / META, 1 << 20))
    except (OSError, ValueError, VarsError):
        return None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        return None
    files = raw.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and FILE_RE.fullmatch(k) and isinstance(v, dict)
        for k, v in files.items()
    ):
        return None
    return StoredGenerator(d.name, files, str(raw.get("generated_at", "")),
                           str(raw.get("script_sha256", "")))  # fmt: skip


def read(vm: str, generator: str, name: str) -> VarFile:
    """One stored file, decrypted if secret; ``VarsError`` when it is missing."""
    gens = generators(vm)
    gen = gens.get(generator)
    if gen is None or name not in gen.files:
        raise VarsError(f"VM {vm}: var {generator}/{name} is not generated",
                        hint=f"Run 'mvmctl vars generate {vm}' first")  # fmt: skip
    info = gen.files[name]
    secret = bool(info.get("secret", True))
    d = vm_root(vm) / generator
    raw = _read_capped(d / (f"{name}.age" if secret else name), MAX_FILE + 4096)
    if secret:
        try:
            raw = pyrage.decrypt(raw, [host_identity()])
        except pyrage.DecryptError as exc:
            raise VarsError(
                f"VM {vm}: var {generator}/{name} cannot be decrypted with this host's identity",
                hint="was the store copied from another host? use `mvmctl vars export/import`",
            ) from exc
    return VarFile(name, secret, _int_mode(info.get("mode")), raw)


def read_all(vm: str) -> dict[str, dict[str, VarFile]]:
    return {g: {f: read(vm, g, f) for f in gen.files} for g, gen in generators(vm).items()}


def _int_mode(value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        return int(value, 8) & 0o777
    return 0o400


def _read_capped(path: Path, cap: int) -> bytes:
    """Read a regular file (no symlink followed), at most ``cap`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise VarsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise VarsError(f"{path} is not a regular file")
        data = f.read(cap + 1)
    if len(data) > cap:
        raise VarsError(f"{path} is larger than {cap} bytes")
    return data


# -- writing -------------------------------------------------------------------


def stage(vm: str, generator: str, files: Mapping[str, VarFile], script_sha256: str) -> Path:
    """Write one generator's new values into a hidden sibling directory (secret files
    encrypted to the host identity); :func:`commit` makes them current."""
    base = paths.ensure_private_dir(vm_root(vm))
    tmp = base / f".new-{generator}-{os.getpid()}-{time.monotonic_ns()}"
    os.mkdir(tmp, 0o700)
    try:
        recipient = host_identity().to_public()
        meta: dict[str, Any] = {"schema": SCHEMA, "generator": generator, "files": {},
                                "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "script_sha256": script_sha256}  # fmt: skip
        for name, vf in sorted(files.items()):
            data = pyrage.encrypt(vf.value, [recipient]) if vf.secret else vf.value
            _write_new(tmp / (f"{name}.age" if vf.secret else name), data)
            meta["files"][name] = {"secret": vf.secret, "mode": f"{vf.mode:04o}",
                                   "size": len(vf.value)}  # fmt: skip
        _write_new(tmp / META, json.dumps(meta, indent=2, sort_keys=True).encode() + b"\n")
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def commit(vm: str, generator: str, staged: Path) -> None:
    """Make ``staged`` the generator's current directory (one exchange, then the old
    values are deleted)."""
    dest = vm_root(vm) / generator
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise VarsError(f"{dest} is not a directory; remove it")
    if dest.exists():
        _exchange(staged, dest)
        shutil.rmtree(staged, ignore_errors=True)  # now holds the old values
    else:
        os.rename(staged, dest)
    _fsync_dir(dest.parent)


def discard(staged: Path) -> None:
    shutil.rmtree(staged, ignore_errors=True)


def remove(vm: str, generator: str | None = None) -> None:
    """Delete a VM's stored vars (all, or one generator's)."""
    target = vm_root(vm) if generator is None else vm_root(vm) / generator
    if target.exists():
        shutil.rmtree(target)


def sweep(vm: str) -> None:
    """Remove staging directories of writers that died (their pid is gone)."""
    base = vm_root(vm)
    if not base.is_dir():
        return
    for d in base.glob(".new-*"):
        parts = d.name.split("-")
        pid = next((p for p in parts[2:] if p.isdigit()), None)
        if pid is None or int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


RENAME_EXCHANGE = 2
AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically (renameat2); two renames where it is missing."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
        if rc == 0:
            return
    aside = b.with_name(f".old-{b.name}-{os.getpid()}")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


# -- export / import -----------------------------------------------------------


def export_bundle(vm: str, *, recipient: str | None = None, passphrase: str | None = None) -> bytes:
    """The VM's whole store as one age file (to ``recipient`` or ``passphrase``)."""
    if (recipient is None) == (passphrase is None):
        raise VarsError("export needs exactly one of --recipient or --passphrase")
    stored = read_all(vm)
    if not stored:
        raise VarsError(f"VM {vm} has no generated vars to export",
                        hint=f"Run 'mvmctl vars generate {vm}' first")  # fmt: skip
    gens = generators(vm)
    doc = {
        "kind": BUNDLE_KIND, "schema": SCHEMA, "vm": vm,
        "generators": {
            g: {"script_sha256": gens[g].script_sha256, "generated_at": gens[g].generated_at,
                "files": {f: {"secret": v.secret, "mode": f"{v.mode:04o}",
                              "value": base64.b64encode(v.value).decode()}
                          for f, v in files.items()}}
            for g, files in stored.items()
        },
    }  # fmt: skip
    plain = json.dumps(doc, sort_keys=True).encode()
    if recipient is not None:
        return bytes(pyrage.encrypt(plain, [parse_recipient(recipient)]))
    assert passphrase is not None
    if not passphrase:
        raise VarsError("the passphrase is empty")
    return bytes(age_passphrase.encrypt(plain, passphrase))


def needs_passphrase(data: bytes) -> bool:
    """Whether an age file is passphrase-encrypted (its header has an scrypt stanza)."""
    head = data[:4096]
    return head.startswith(AGE_MAGIC) and b"\n-> scrypt " in head


def import_bundle(vm: str, data: bytes, *, passphrase: str | None = None,
                  identity: Path | None = None) -> list[str]:  # fmt: skip
    """Replace the VM's stored generators with a bundle's; returns their names.

    Everything is checked and staged before the first generator is replaced."""
    if len(data) > MAX_BUNDLE:
        raise VarsError(f"bundle larger than {MAX_BUNDLE >> 20} MiB")
    if not data.startswith(AGE_MAGIC):
        raise VarsError("not an age-encrypted mvm vars bundle")
    try:
        if needs_passphrase(data):
            if passphrase is None:
                raise VarsError("the bundle is passphrase-encrypted: give --passphrase "
                                "(or MVM_VARS_PASSPHRASE)")  # fmt: skip
            plain = age_passphrase.decrypt(data, passphrase)
        else:
            ident = read_identity(identity) if identity else host_identity()
            plain = pyrage.decrypt(data, [ident])
    except pyrage.DecryptError as exc:
        raise VarsError(f"cannot decrypt the bundle: {exc}") from exc
    gens = _parse_bundle(bytes(plain))
    with vm_lock(vm):
        sweep(vm)
        staged: list[tuple[str, Path]] = []
        try:
            for g, (files, script_sha) in gens.items():
                staged.append((g, stage(vm, g, files, script_sha)))
            for g, path in staged:
                commit(vm, g, path)
            staged = []
        finally:
            for _g, path in staged:
                discard(path)
    return sorted(gens)


def _parse_bundle(plain: bytes) -> dict[str, tuple[dict[str, VarFile], str]]:
    try:
        doc = json.loads(plain)
    except ValueError as exc:
        raise VarsError("the bundle is not an mvm vars bundle (bad JSON)") from exc
    if not isinstance(doc, dict) or doc.get("kind") != BUNDLE_KIND:
        raise VarsError("the bundle is not an mvm vars bundle")
    if doc.get("schema") != SCHEMA:
        raise VarsError(f"vars bundle schema {doc.get('schema')!r} is not supported")
    raw_gens = doc.get("generators")
    if not isinstance(raw_gens, dict) or not raw_gens:
        raise VarsError("the bundle holds no generators")
    out: dict[str, tuple[dict[str, VarFile], str]] = {}
    for g, body in raw_gens.items():
        if not isinstance(g, str) or not GEN_RE.fullmatch(g) or not isinstance(body, dict):
            raise VarsError(f"bundle: invalid generator name {str(g)[:80]!r}")
        files = body.get("files")
        if not isinstance(files, dict) or not files:
            raise VarsError(f"bundle: generator {g} has no files")
        parsed: dict[str, VarFile] = {}
        for f, spec in files.items():
            if not isinstance(f, str) or not FILE_RE.fullmatch(f) or not isinstance(spec, dict):
                raise VarsError(f"bundle: generator {g}: invalid file name {str(f)[:80]!r}")
            secret, mode, value = spec.get("secret"), spec.get("mode"), spec.get("value")
            if not isinstance(secret, bool) or not isinstance(value, str):
                raise VarsError(f"bundle: {g}/{f}: malformed entry")
            if not isinstance(mode, str) or not mode.isdigit() or not set(mode) <= set("01234567"):
                raise VarsError(f"bundle: {g}/{f}: malformed mode")
            try:
                data = base64.b64decode(value, validate=True)
            except ValueError as exc:
                raise VarsError(f"bundle: {g}/{f}: malformed value") from exc
            if len(data) > MAX_FILE:
                raise VarsError(f"bundle: {g}/{f}: over the 1 MiB limit")
            parsed[f] = VarFile(f, secret, int(mode, 8) & 0o777, data)
        sha = body.get("script_sha256", "")
        out[g] = (parsed, sha if isinstance(sha, str) else "")
    return out
