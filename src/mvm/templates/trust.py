"""Which signing keys this user trusts, and what follows for a revision.

Trusted keys come from two places:

- ``MVM_TEMPLATE_TRUSTED_KEYS``: comma-separated items, each a key
  (``mvm-ed25519:…``) or the path of a file with one key per line (``#``
  starts a comment);
- the trust file ``MVM_HOME/keys/trusted`` (same format), managed with
  ``mvmctl template trust add|list|remove``.

This user's own key (:mod:`mvm.templates.signing`) is always trusted.  Trust
is *configured* when either source is non-empty (the own key alone does not
count, so a fresh install refuses nothing).  When it is configured, ``pull``
and ``up --template`` accept only revisions with a valid signature by a
trusted key; when it is not, nothing is refused and ``verify``/``info`` just
say who signed.

Reading the policy costs no ``cryptography`` import: keys are compared as
canonical text lines, and signatures are checked only when needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mvm.errors import ConfigError, NotFoundError, TrustError
from mvm.image.meta import MAX_BYTES, read_capped
from mvm.state.atomic import atomic_file
from mvm.templates import signing, store
from mvm.templates.signing import Provenance

ENV = "MVM_TEMPLATE_TRUSTED_KEYS"
OWN = "your key"
FILE_SOURCE = "trust file"


def trust_file() -> Path:
    return signing.keys_dir() / "trusted"


def parse_lines(text: str, where: str) -> list[tuple[str, str]]:
    """``(key, comment)`` for each key line; ``where:LINE`` names a bad one."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        body, _, comment = line.partition("#")
        if body.strip():
            out.append((signing.parse_public_key(body, f"{where}:{n}"), comment.strip()))
    return out


def _read_key_file(path: Path, what: str) -> list[tuple[str, str]]:
    try:
        raw = read_capped(path, MAX_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file {str(path)!r}") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from exc
    return parse_lines(raw.decode(errors="replace"), str(path))


def file_entries() -> list[tuple[str, str]]:
    """The trust file's ``(key, comment)`` entries (none when it does not exist)."""
    try:
        return _read_key_file(trust_file(), "trust file")
    except ConfigError:
        if not trust_file().exists():
            return []
        raise


def env_entries(env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(key, source)`` for every key ``MVM_TEMPLATE_TRUSTED_KEYS`` names."""
    value = (os.environ if env is None else env).get(ENV, "")
    out: list[tuple[str, str]] = []
    for item in (i.strip() for i in value.split(",")):
        if not item:
            continue
        if item.startswith(signing.PREFIX):
            out.append((signing.parse_public_key(item, ENV), ENV))
        else:
            path = Path(item).expanduser()
            out += [(k, str(path)) for k, _ in _read_key_file(path, ENV)]
    return out


@dataclass(frozen=True)
class Policy:
    """The trusted keys (key → where it came from) and whether trust is configured."""

    keys: Mapping[str, str]
    configured: bool

    def trusted(self, prov: Provenance) -> bool:
        return prov.signer is not None and prov.signer in self.keys

    def describe(self, prov: Provenance) -> str:
        """``signed by KEY (trusted: SOURCE)``, ``… (not trusted)`` or ``unsigned (…)``."""
        if prov.signer is None:
            return prov.summary
        source = self.keys.get(prov.signer)
        return f"{prov.summary} ({f'trusted: {source}' if source else 'not trusted'})"

    def enforce(self, prov: Provenance, where: str) -> None:
        """Raise ``TrustError`` if trust is configured and ``prov`` is not trusted."""
        if not self.configured or self.trusted(prov):
            return
        if prov.signer is not None:
            raise TrustError(
                f"{where}: signed by {prov.signer}, which is not a trusted key",
                hint="if you know whose key it is: `mvmctl template trust add KEY`",
            )
        raise TrustError(
            f"{where}: {prov.summary}, and trust is configured ({ENV} or {trust_file()}): "
            "only revisions signed by a trusted key are accepted",
            hint="ask its publisher to push it again (push signs), or sign your own build "
            "with `mvmctl template sign NAME`",
        )


def load_policy(env: Mapping[str, str] | None = None) -> Policy:
    keys: dict[str, str] = {}
    for key, source in env_entries(env):
        keys.setdefault(key, source)
    for key, _ in file_entries():
        keys.setdefault(key, FILE_SOURCE)
    configured = bool((os.environ if env is None else env).get(ENV, "").strip()) or bool(keys)
    own = signing.own_public_key(create=False)
    if own is not None:
        keys[own] = OWN
    return Policy(keys, configured)


def _write_file(entries: list[tuple[str, str]]) -> None:
    lines = [f"{k}  # {c}" if c else k for k, c in entries]
    text = "# keys trusted to sign templates (mvmctl template trust add|remove)\n"
    with atomic_file(trust_file(), 0o600) as f:
        f.write((text + "".join(line + "\n" for line in lines)).encode())


def add(key: str, comment: str = "") -> tuple[str, bool]:
    """Trust ``key`` (canonical form returned); False if it was already trusted."""
    key = signing.parse_public_key(key, "key")
    comment = " ".join(comment.replace("#", " ").split())
    with store.private_lock(signing.keys_dir() / ".lock"):
        entries = file_entries()
        if any(k == key for k, _ in entries):
            return key, False
        _write_file([*entries, (key, comment)])
    return key, True


def remove(key: str) -> str:
    key = signing.parse_public_key(key, "key")
    with store.private_lock(signing.keys_dir() / ".lock"):
        entries = file_entries()
        kept = [(k, c) for k, c in entries if k != key]
        if len(kept) == len(entries):
            raise NotFoundError(
                f"{key} is not in the trust file {trust_file()}",
                hint="`mvmctl template trust list` shows every trusted key and where it is from",
            )
        _write_file(kept)
    return key
