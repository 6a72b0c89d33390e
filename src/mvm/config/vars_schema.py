"""``[vars.generators.NAME]`` in mvm.toml: validated into :class:`GeneratorSpec`.

A generator's names end up as directory and file names in the host's var
store and in error messages, so they are held to a strict alphabet here,
before anything runs.  The script itself is opaque text: it runs on the
host, in an empty directory, with only the declared ``runtime_inputs`` on
PATH (:mod:`mvm.secrets.vars`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mvm.config.schema import GeneratorSpec, VarFileSpec

if TYPE_CHECKING:
    from mvm.config.loader import _Ctx

GEN_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
# not "meta.json" nor "*.age": the store keeps those names for itself (varstore)
FILE_RE = re.compile(r"\A(?!meta\.json\Z)(?!.*\.age\Z)[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
INPUT_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}\Z")
SCRIPT_MAX = 64 << 10
NAMES_HELP = "use A-Z, a-z, 0-9, '_' and '-' (max 64)"
FILE_HELP = (
    "use A-Z, a-z, 0-9, '_', '.' and '-' (max 128, not starting with '.' or '-'; "
    "not meta.json or *.age)"
)


def parse_generators(ctx: _Ctx, value: Any) -> tuple[GeneratorSpec, ...]:
    table = ctx.table(value, "vars")
    ctx.keys(table, "vars", {"generators"})
    gens = ctx.table(table.get("generators", {}), "vars.generators")
    return tuple(_generator(ctx, name, body) for name, body in gens.items())


def _generator(ctx: _Ctx, name: str, value: Any) -> GeneratorSpec:
    key = f"vars.generators.{name}"
    if not GEN_RE.fullmatch(name):
        raise ctx.err(key, f"generator names {NAMES_HELP}")
    body = ctx.table(value, key)
    ctx.keys(body, key, {"files", "runtime_inputs", "script"})
    files_raw = ctx.table(body.get("files", {}), f"{key}.files")
    if not files_raw:
        raise ctx.err(f"{key}.files", 'must declare at least one file, e.g. '
                      'files.api-key = { secret = true }')  # fmt: skip
    files = []
    for fname, fbody in files_raw.items():
        fkey = f"{key}.files.{fname}"
        if not FILE_RE.fullmatch(fname):
            raise ctx.err(fkey, f"file names {FILE_HELP}")
        spec = ctx.table(fbody, fkey)
        ctx.keys(spec, fkey, {"secret", "mode"})
        secret = spec.get("secret", True)
        if not isinstance(secret, bool):
            raise ctx.err(f"{fkey}.secret", "must be true or false")
        mode = _mode(ctx, spec.get("mode", "0400" if secret else "0444"), f"{fkey}.mode")
        files.append(VarFileSpec(fname, secret, mode))
    inputs = body.get("runtime_inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise ctx.err(f"{key}.runtime_inputs", 'must be a list of host commands or Debian '
                      'packages, e.g. ["openssl", "coreutils"]')  # fmt: skip
    for i in inputs:
        if not INPUT_RE.fullmatch(i):
            raise ctx.err(f"{key}.runtime_inputs", f"{i!r} is not a command or package name")
    if "script" not in body:
        raise ctx.err(f"{key}.script", 'is required: a shell script writing each file to "$out"')
    script = ctx.string(body["script"], f"{key}.script")
    if len(script.encode()) > SCRIPT_MAX or "\0" in script:
        raise ctx.err(f"{key}.script", f"must be text under {SCRIPT_MAX >> 10} KiB")
    return GeneratorSpec(name, tuple(files), script, tuple(dict.fromkeys(inputs)))


def _mode(ctx: _Ctx, value: Any, key: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        return int(value, 8)
    raise ctx.err(key, f'must be an octal string like "0400", got {value!r}')
