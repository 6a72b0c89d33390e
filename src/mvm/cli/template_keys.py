"""``mvmctl template key|trust|sign``: signing keys and the keys this user trusts.

Thin wrappers over :mod:`mvm.templates.signing` and :mod:`mvm.templates.trust`
(see docs/templates.md, "Signatures and trust").  Public keys print as one
line, ``mvm-ed25519:BASE64``, so they can be pasted into a trust file or
``MVM_TEMPLATE_TRUSTED_KEYS``.
"""

from __future__ import annotations

import click

from mvm.cli.render import emit_json, table
from mvm.cli.template_cmds import NAME, template


@template.group("key")
def key() -> None:
    """This user's signing key (made on first use)."""


@key.command("show")
def key_show() -> None:
    """Print this user's public key (creating the key pair on first use)."""
    from mvm.templates import signing

    created = not signing.private_key_path().exists()
    click.echo(signing.own_public_key(create=True))
    if created:
        click.echo(f"created {signing.private_key_path()}", err=True)


@key.command("generate")
@click.option("--force", is_flag=True, help="Replace an existing key.")
def key_generate(force: bool) -> None:
    """Make a new signing key pair and print its public key."""
    from mvm.templates import signing

    click.echo(signing.generate(force=force))


@template.group("trust")
def trust_group() -> None:
    """Keys whose signatures this user accepts (see MVM_TEMPLATE_TRUSTED_KEYS too)."""


@trust_group.command("add")
@click.argument("public_key", metavar="KEY")
@click.option("--comment", default="", help="A note kept next to the key (whose it is).")
def trust_add(public_key: str, comment: str) -> None:
    """Trust KEY (mvm-ed25519:…) to sign templates."""
    from mvm.templates import trust

    canonical, added = trust.add(public_key, comment)
    click.echo(f"{canonical}: {'trusted' if added else 'already trusted'}")


@trust_group.command("remove")
@click.argument("public_key", metavar="KEY")
def trust_remove(public_key: str) -> None:
    """Stop trusting KEY (only keys in the trust file; not MVM_TEMPLATE_TRUSTED_KEYS)."""
    from mvm.templates import trust

    click.echo(f"{trust.remove(public_key)}: removed")


@trust_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def trust_list(as_json: bool) -> None:
    """Every trusted key and where it comes from; says whether trust is enforced."""
    from mvm.templates import trust

    policy = trust.load_policy()
    comments = dict(trust.file_entries())
    rows = [{"key": k, "source": src, "comment": comments.get(k, "")}
            for k, src in sorted(policy.keys.items())]  # fmt: skip
    if as_json:
        emit_json({"configured": policy.configured, "keys": rows})
        return
    if rows:
        table(["KEY", "SOURCE", "COMMENT"], [[r["key"], r["source"], r["comment"]] for r in rows])
    state = "configured: pull and up --template accept only revisions signed by these keys"
    click.echo(
        f"trust {state}"
        if policy.configured
        else "trust not configured: nothing is refused (add a key to enforce signatures)"
    )


@template.command("sign")
@NAME
@click.option("--revision", default=None, help="Revision id (default: current).")
def sign(name: str, revision: str | None) -> None:
    """Sign a revision with your key (you vouch for it), unless it is validly signed."""
    from mvm.templates import signing, store

    with store.lock(name):
        rev = store.verify(name, store.resolve_local(name, revision) if revision else None)
        prov = signing.ensure_signed(rev.path, name, rev.id, rev.checksums)
    click.echo(f"{name}: {rev.id} {prov.summary}")
