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


IMAGE_TOML = """\
# The "{name}" template's project, made by `mvmctl template create {name} --image {ref}`:
# the image's config gives the entrypoint, user and environment (docs/oci.md).
name = "{name}"
image = "{image}"
"""


def image_project(name: str, ref: str, base: Path | None = None) -> Path:
    """A project for ``template create NAME --image REF``, private under MVM_HOME: an
    ``mvm.toml`` naming the image and, for a local image, a copy of it (a template is
    rebuilt from what it was created from, not from a file that may change or go)."""
    import os

    from mvm import paths
    from mvm.config.imageref import parse_image_ref
    from mvm.state.atomic import private_tempdir
    from mvm.templates.store import validate_name

    validate_name(name)
    src = parse_image_ref(ref, (base or Path.cwd()).resolve(), confine=False, what="--image")
    top = paths.home() / "image-projects"
    stage = private_tempdir(top, ".new-")
    try:
        if src.path is None:
            image = ref
        elif src.transport == "oci":
            shutil.copytree(src.path, stage / "layout", symlinks=True)
            image = "oci:layout" + (f":{src.tag}" if src.tag else "")
        else:
            shutil.copyfile(src.path, stage / "image.tar")
            image = f"{src.transport}:image.tar"
        (stage / "mvm.toml").write_text(IMAGE_TOML.format(name=name, ref=ref, image=image))
        _private(stage)
        dest = top / name
        if dest.exists():  # a deleted template's project: nothing refers to it any more
            shutil.rmtree(dest)
        os.replace(stage, dest)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise MvmError(f"cannot copy image {ref}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return dest


def _private(top: Path) -> None:
    """Everything under MVM_HOME is private: 0700 directories, 0600 files."""
    import os

    for dirpath, _dirs, files in os.walk(top):  # our own fresh copy: no symlinked dirs
        os.chmod(dirpath, 0o700)
        for f in files:
            p = Path(dirpath) / f
            if not p.is_symlink():
                os.chmod(p, 0o600)
