"""Ed25519 signatures on template revisions: who built this revision?

Checksums and the revision id prove a revision is *self-consistent*; anyone
can make a self-consistent revision under a new id.  A signature proves
which key vouched for it.  What is signed is::

    b"mvm template signature v1\\0" + NAME + b"\\0" + REVISION + b"\\0" + DIGEST

where DIGEST is :func:`mvm.templates.integrity.digest` of the revision's
``checksums.json`` (which covers every artefact and ``revision.json``).  The
domain prefix keeps the signature from meaning anything in another protocol,
and binding NAME and REVISION means a signature copied onto another template
or revision does not verify.

Files:

- ``MVM_HOME/keys/signing-key.pem`` (0600): this user's private key, PKCS#8
  PEM, made on first use; ``signing-key.pub`` holds its public line, so
  reading it does not need to load ``cryptography`` (37 ms) on ``up``.
- ``REV/signature.json`` next to ``checksums.json``, locally and in the
  registry: ``{"schema": 1, "template", "revision", "key", "signature"}``.

Public keys are one line, ``mvm-ed25519:`` + base64 of the 32 raw bytes.
Which keys are *trusted* is :mod:`mvm.templates.trust`'s business.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvm import paths
from mvm.errors import ConfigError, ConflictError, IntegrityError
from mvm.image.meta import MAX_BYTES, read_capped
from mvm.state.atomic import atomic_file
from mvm.templates import integrity, store

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PREFIX = "mvm-ed25519:"
PUBLIC_KEY_RE = re.compile(r"mvm-ed25519:([A-Za-z0-9+/]{43}=)")
SIGNATURE_RE = re.compile(r"[A-Za-z0-9+/]{86}==")
DOMAIN = b"mvm template signature v1\0"
SIGNATURE = "signature.json"
SCHEMA = 1


def keys_dir() -> Path:
    return paths.home() / "keys"


def private_key_path() -> Path:
    return keys_dir() / "signing-key.pem"


def public_key_path() -> Path:
    return keys_dir() / "signing-key.pub"


def parse_public_key(text: str, where: str) -> str:
    """The canonical ``mvm-ed25519:…`` line for ``text``, or ``ConfigError`` naming ``where``."""
    text = text.strip()
    m = PUBLIC_KEY_RE.fullmatch(text)
    if not m:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ConfigError(
            f"{where}: {shown!r} is not a public key (expected mvm-ed25519:BASE64, "
            "as printed by `mvmctl template key show`)"
        )
    return _canonical(m.group(1))


def _canonical(b64: str) -> str:
    """One spelling per key (base64 has several for the same 32 bytes)."""
    return PREFIX + base64.b64encode(base64.b64decode(b64)).decode()


def message(name: str, rev_id: str, checksums: dict[str, str]) -> bytes:
    return DOMAIN + f"{name}\0{rev_id}\0{integrity.digest(checksums)}".encode()


# -- this user's key -------------------------------------------------------------------------


def _public_line(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization as ser

    raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode()


def _check_private(path: Path) -> None:
    """A private key others can read is a leaked key: refuse it, as ssh does."""
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ConfigError(
            f"signing key {path} must be a regular file owned by you with mode 0600 "
            f"(it is {stat.filemode(st.st_mode)})",
            hint=f"chmod 600 {path}, or make a new key with `mvmctl template key generate --force`",
        )


def _load_private() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = private_key_path()
    _check_private(path)
    try:
        key = ser.load_pem_private_key(read_capped(path, 64 << 10), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"signing key {path} is not an unencrypted PEM ed25519 key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path} is not an ed25519 key")
    return key


def _write_key(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization as ser

    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    line = _public_line(key)
    with atomic_file(private_key_path(), 0o600) as f:
        f.write(pem)
    with atomic_file(public_key_path(), 0o600) as f:
        f.write((line + "\n").encode())
    return line


def own_public_key(*, create: bool) -> str | None:
    """This user's public key line; with ``create``, make the key pair on first use."""
    pub, priv = public_key_path(), private_key_path()
    try:
        return parse_public_key(read_capped(pub, 4096).decode(errors="replace"), str(pub))
    except (OSError, ConfigError):
        pass  # missing or damaged: derive it from the private key (or make one)
    if not create and not priv.exists():
        return None
    with store.private_lock(keys_dir() / ".lock"):
        if priv.exists():
            key = _load_private()
            line = _public_line(key)
            with atomic_file(pub, 0o600) as f:
                f.write((line + "\n").encode())
            return line
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return _write_key(Ed25519PrivateKey.generate())


def generate(*, force: bool = False) -> str:
    """Make a new key pair; an existing one is replaced only with ``force``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    with store.private_lock(keys_dir() / ".lock"):
        if private_key_path().exists() and not force:
            raise ConflictError(
                f"a signing key already exists: {private_key_path()}",
                hint="`mvmctl template key show` prints it; --force replaces it (revisions "
                "signed with the old key then verify only where the old key is trusted)",
            )
        return _write_key(Ed25519PrivateKey.generate())


# -- signatures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """The content of ``signature.json``."""

    template: str
    revision: str
    key: str
    value: str  # base64 of the 64-byte signature

    def encode(self) -> bytes:
        data = {"schema": SCHEMA, "template": self.template, "revision": self.revision,
                "key": self.key, "signature": self.value}  # fmt: skip
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, raw: bytes, where: str) -> Signature:
        """Parse ``signature.json``; anything odd is an ``IntegrityError`` naming ``where``."""
        try:
            data: Any = json.loads(raw)
        except (ValueError, RecursionError):
            data = None
        keys = {"schema", "template", "revision", "key", "signature"}
        if (
            not isinstance(data, dict)
            or set(data) != keys
            or data["schema"] != SCHEMA
            or not all(isinstance(data[k], str) for k in keys - {"schema"})
            or not SIGNATURE_RE.fullmatch(data["signature"])
            or not PUBLIC_KEY_RE.fullmatch(data["key"])
        ):
            raise IntegrityError(f"{where}: {SIGNATURE} is malformed")
        return cls(data["template"], data["revision"], data["key"], data["signature"])


def sign(name: str, rev_id: str, checksums: dict[str, str]) -> Signature:
    """Sign a revision with this user's key (made on first use)."""
    own_public_key(create=True)
    key = _load_private()
    value = key.sign(message(name, rev_id, checksums))
    return Signature(name, rev_id, _public_line(key), base64.b64encode(value).decode())


@dataclass(frozen=True)
class Provenance:
    """Who vouched for a revision: ``signer`` when a signature verified, else why not."""

    signer: str | None
    problem: str | None = None  # None with no signer means "unsigned"

    @property
    def summary(self) -> str:
        if self.signer:
            return f"signed by {self.signer}"
        return f"unsigned ({self.problem})" if self.problem else "unsigned"


UNSIGNED = Provenance(None)


def check(raw: bytes | None, name: str, rev_id: str, checksums: dict[str, str],
          where: str) -> Provenance:  # fmt: skip
    """Verify the bytes of a ``signature.json`` (None: there is none) for this revision."""
    if raw is None:
        return UNSIGNED
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        sig = Signature.decode(raw, where)
    except IntegrityError:
        return Provenance(None, f"{SIGNATURE} is malformed")
    if (sig.template, sig.revision) != (name, rev_id):
        return Provenance(None, f"the signature is for {sig.template} {sig.revision}")
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig.key[len(PREFIX) :]))
        public.verify(base64.b64decode(sig.value), message(name, rev_id, checksums))
    except (InvalidSignature, ValueError, binascii.Error):
        return Provenance(None, f"the signature by {sig.key} does not match this revision")
    return Provenance(_canonical(sig.key[len(PREFIX) :]))


def read_local(rev_dir: Path) -> bytes | None:
    """The revision's ``signature.json`` bytes, or None if it has none."""
    try:
        return read_capped(rev_dir / SIGNATURE, MAX_BYTES)
    except FileNotFoundError:
        return None
    except OSError:
        return b""  # there but unreadable: reported as malformed, never trusted


def local_provenance(
    rev_dir: Path, name: str, rev_id: str, checksums: dict[str, str]
) -> Provenance:
    return check(read_local(rev_dir), name, rev_id, checksums, f"template {name} revision {rev_id}")


def write_local(rev_dir: Path, raw: bytes) -> None:
    """Store a (verified) signature with a revision, atomically."""
    with atomic_file(rev_dir / SIGNATURE, 0o600) as f:
        f.write(raw)


def ensure_signed(rev_dir: Path, name: str, rev_id: str, checksums: dict[str, str]) -> Provenance:
    """Sign a revision with this user's key unless a valid signature is already there."""
    prov = local_provenance(rev_dir, name, rev_id, checksums)
    if prov.signer:
        return prov
    write_local(rev_dir, sign(name, rev_id, checksums).encode())
    return local_provenance(rev_dir, name, rev_id, checksums)
