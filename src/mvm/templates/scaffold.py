"""``template init``: a minimal project directory that builds and runs as is."""

from __future__ import annotations

import shutil
from pathlib import Path

from mvm.errors import ConflictError, MvmError

MVM_TOML = """\
# The "{name}" template's project.  Build and start it with:
#   mvmctl template build {name}
#   mvmctl up --template {name} --name {name}-1 && mvmctl logs -f {name}-1
name = "{name}"
vcpus = 1
memory_mib = 256

[entrypoint]
command = ["/bin/sh", "-c", "echo hello from {name} on $(uname -r) as uid $(id -u)"]

# Alternative images of the same project, chosen with `--profile`:
[profiles.debug]
dev = true
entrypoint = {{ shell = "/bin/sh" }}
"""

GITIGNORE = """\
# mvm keeps images and templates in MVM_HOME (~/.mvm); nothing is built here.
*.ext4
*.cpio
*.img
.mvm/
"""

README = """\
# {name}

A microVM template built by [mvm](https://example.invalid/mvm) from `mvm.toml`.

```sh
mvmctl template build {name}                 # build (cached; new revision only on change)
mvmctl up --template {name} --name {name}-1  # start a VM from the current revision
mvmctl logs {name}-1
mvmctl template push {name}                  # share it (see MVM_TEMPLATE_REGISTRY_*)
```

Edit `mvm.toml` (entrypoint, packages, files) and run `mvmctl template build {name}`
again; `mvmctl template edit {name} --cpus 4 --mem 2048` changes the VM defaults.
"""


def scaffold(dest: Path, name: str) -> list[Path]:
    """Write ``mvm.toml``, ``.gitignore`` and ``README.md`` into a new ``dest``."""
    from mvm.templates.store import validate_name

    validate_name(name)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConflictError(f"{dest} already exists and is not empty")
    created_dir = not dest.exists()
    files = {"mvm.toml": MVM_TOML, ".gitignore": GITIGNORE, "README.md": README}
    out = []
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for fname, body in files.items():
            path = dest / fname
            path.write_text(body.format(name=name))
            out.append(path)
    except OSError as exc:
        if created_dir:
            shutil.rmtree(dest, ignore_errors=True)
        raise MvmError(f"cannot create {dest}: {exc.strerror or exc}") from exc
    return out
