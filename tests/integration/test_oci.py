"""Images from OCI (issue 15), with real parts: Debian's podman builds ``FROM scratch``
images (a static busybox and a script) offline and saves them as ``oci-archive`` and
``docker-archive``; skopeo makes an OCI layout of one; mvm builds each and boots it under
QEMU.  Hostile layers are hand-made tarballs in a hand-made layout: they are refused with a
one-line error or land inside the image, and never touch the host.

The podman images are built once per module; every boot checks many things at once.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import mvmctl, ok, write_project

pytestmark = pytest.mark.integration

HELLO = r"""#!/bin/busybox sh
B=busybox
echo "who=$($B id -u):$($B id -g) pwd=$($B pwd) foo=$FOO home=$HOME path=$PATH"
echo "args=$#|$1|$2"
for f in /app/gone /app/kept /init /bin/sh /.mvm/init /.mvm/agent /usr; do
    if [ -e $f ]; then echo "have $f"; else echo "no $f"; fi
done
echo "links=$($B stat -c %h /app/k2) suid=$($B stat -c %a /app/suid) owner=$($B stat -c %u:%g /app/owned)"
echo "bin=$($B ls /bin | $B tr '\n' ' ')"
$B touch "$HOME/x" && echo "home-writable"
$B touch /app/x 2>/dev/null || echo "rootfs-ro"
"""

DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY files/ /
RUN ["/bin/busybox", "sh", "-c", "busybox rm /app/gone && busybox cp /app/kept /app/k2 && busybox ln /app/k2 /app/hard \
&& busybox chmod 4711 /app/suid && busybox chown 1234:1234 /app/owned"]
ENV FOO="bar baz" PATH=/bin:/app
WORKDIR /app
USER appuser
EXPOSE 8080
ENTRYPOINT ["/app/hello.sh"]
CMD ["one", "two words"]
"""

EXPECTED = [
    "who=1234:1234 pwd=/app foo=bar baz home=/home/appuser path=/bin:/app",
    "args=2|one|two words",
    "no /app/gone",  # deleted in a later layer: a whiteout
    "have /app/kept",
    "no /init",  # mvm's init is /.mvm/init: the image's / is its own
    "no /bin/sh",
    "have /.mvm/init",
    "have /.mvm/agent",
    "no /usr",  # nothing of mvm's outside /.mvm, /etc/mvm, /lib/modules/mvm and mount points
    "links=2 suid=4711 owner=1234:1234",  # hard link, mode bits and owner kept
    "bin=busybox ",  # mvm's busybox applets are not added to the image's /bin
    "home-writable",  # a sealed image's (empty) home is a private tmpfs
    "rootfs-ro",
]


def _podman(store: Path, *args: str) -> None:
    cmd = ["podman", "--root", str(store / "root"), "--runroot", str(store / "run"),
           "--storage-driver", "vfs", *args]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, f"{cmd}: {res.stdout}{res.stderr}"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One podman-built image as oci-archive, docker-archive and an OCI layout."""
    work = tmp_path_factory.mktemp("oci-images")
    ctx = work / "ctx"
    (ctx / "files" / "app").mkdir(parents=True)
    (ctx / "files" / "etc").mkdir()
    shutil.copy("/bin/busybox", ctx / "busybox")
    (ctx / "files" / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nappuser:x:1234:1234::/home/appuser:/bin/sh\n"
    )
    (ctx / "files" / "etc" / "group").write_text("root:x:0:\nappuser:x:1234:\n")
    app = ctx / "files" / "app"
    (app / "hello.sh").write_text(HELLO)
    (app / "hello.sh").chmod(0o755)
    for name in ("gone", "kept", "suid", "owned"):
        (app / name).write_text(name + "\n")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    store = Path(tempfile.mkdtemp(prefix="mvm-podman-", dir="/tmp"))  # runroot: < 50 chars
    _podman(store, "build", "--isolation", "chroot", "-t", "mvm-oci-test", str(ctx))
    out = {"oci-archive": work / "app.oci.tar", "docker-archive": work / "app.docker.tar"}
    _podman(store, "save", "--format", "oci-archive", "-o", str(out["oci-archive"]), "mvm-oci-test")
    _podman(store, "save", "--format", "docker-archive", "-o", str(out["docker-archive"]),
            "mvm-oci-test")  # fmt: skip
    layout = work / "layout"
    res = subprocess.run(["skopeo", "--insecure-policy", "copy", "-q",
                          f"oci-archive:{out['oci-archive']}", f"oci:{layout}:v1"],
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    out["oci"] = layout
    yield out
    shutil.rmtree(store, ignore_errors=True)


def _project(tmp_path: Path, images: dict[str, Path], kind: str, extra: str = "") -> Path:
    proj = tmp_path / f"proj-{kind}"
    proj.mkdir()
    src = images[kind]
    if kind == "oci":
        shutil.copytree(src, proj / "layout")
        ref = "oci:layout:v1"
    else:
        shutil.copy(src, proj / "app.tar")
        ref = f"{kind}:app.tar"
    return write_project(proj, f'name = "oci-{kind}"\nimage = "{ref}"\n{extra}')


def _run(proj: Path, name: str) -> subprocess.CompletedProcess[str]:
    res = mvmctl("run", "--attached", "--name", name, str(proj), timeout=300)
    mvmctl("down", name)
    return res


def test_oci_archive_builds_boots_and_honours_the_image_config(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    proj = _project(tmp_path, images, "oci-archive")
    rev = json.loads(ok("build", str(proj), "--json", timeout=600))
    assert rev["schema"] == 2 and rev["initPath"] == "/.mvm/init"
    assert rev["image"]["ref"] == "oci-archive:app.tar"
    assert rev["image"]["digest"].startswith("sha256:")
    assert rev["image"]["exposedPorts"] == ["8080/tcp"]
    assert rev["uids"]["entrypoint"] == 1234 and rev["sealed"] is True
    res = _run(proj, "oci1")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    for want in EXPECTED:
        assert want in lines, f"{want!r} not in {res.stdout}"
    # an unchanged image rebuilds nothing: same input hash, same directory, not rebuilt
    again = json.loads(ok("build", str(proj), "--json"))
    assert again["inputHash"] == rev["inputHash"] and again["createdAt"] == rev["createdAt"]


def test_docker_archive_and_oci_layout_give_the_same_guest(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    for kind in ("docker-archive", "oci"):
        proj = _project(tmp_path, images, kind)
        res = _run(proj, f"oci-{kind}")
        assert res.returncode == 0, res.stdout + res.stderr
        for want in EXPECTED:
            assert want in res.stdout.splitlines(), f"{kind}: {want!r} not in {res.stdout}"


def test_mvm_toml_overrides_the_image_config(tmp_path: Path, images: dict[str, Path]) -> None:
    extra = '[uids]\nentrypoint = 0\n[entrypoint]\ncommand = ["/bin/busybox", "sh", "-c", ' \
        '"echo over uid=$(busybox id -u) pwd=$(busybox pwd) foo=$FOO"]\n'  # fmt: skip
    proj = _project(tmp_path, images, "oci-archive", extra)
    res = _run(proj, "oci-over")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "over uid=0 pwd=/app foo=bar baz" in res.stdout


# -- hostile, hand-made layers -------------------------------------------------------------


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            body = (data or {}).get(e.name)
            if body is not None:
                e.size = len(body)
            tar.addfile(e, io.BytesIO(body) if body is not None else None)
    return gzip.compress(buf.getvalue(), mtime=0)


def _entry(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = ""
) -> tarfile.TarInfo:
    e = tarfile.TarInfo(name)
    e.type, e.mode, e.linkname = kind, mode, link
    if kind == tarfile.DIRTYPE:
        e.mode = 0o755
    return e


def _layout(root: Path, layers: list[bytes], user: str = "1000") -> None:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        d = hashlib.sha256(data).hexdigest()
        (blobs / d).write_bytes(data)
        return f"sha256:{d}"

    diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(x)).hexdigest() for x in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"User": user, "Cmd": ["/bin/true"], "WorkingDir": "/srv/w"},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": put(x), "size": len(x)} for x in layers],
    }).encode()  # fmt: skip
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "t"}}]}))  # fmt: skip


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A host directory no build may touch (outside MVM_HOME and the project)."""
    d = Path(tempfile.mkdtemp(prefix="mvm-oci-host-", dir="/var/tmp"))
    (d / "sentinel").write_text("untouched\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _untouched(d: Path) -> bool:
    return sorted(p.name for p in d.iterdir()) == ["sentinel"]


def _hostile(tmp_path: Path, layers: list[bytes]) -> Path:
    proj = tmp_path / "hostile"
    _layout(proj / "layout", layers)
    return write_project(proj, 'name = "hostile"\nimage = "oci:layout:t"\n')


def _one_line(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode != 0, res.stdout
    assert res.stderr.startswith("mvmctl: error: ") and "Traceback" not in res.stderr, res.stderr
    assert needle in res.stderr.splitlines()[0], res.stderr


def _debugfs(image: Path, cmd: str) -> str:
    res = subprocess.run(["debugfs", "-R", cmd, str(image)], capture_output=True, text=True,
                         check=False)  # fmt: skip
    return res.stdout + res.stderr


def test_path_traversal_and_device_layers_are_refused(tmp_path: Path, host_dir: Path) -> None:
    up = "../" * 12 + str(host_dir).lstrip("/") + "/escaped"
    for layers, needle in (
        ([_tar([_entry(up)], {up: b"x"})], "path traversal"),
        ([_tar([_entry("a/../../b")], {"a/../../b": b"x"})], "path traversal"),
        ([_tar([_entry("zero", tarfile.CHRTYPE)])], "device node"),
        ([_tar([_entry("l", tarfile.LNKTYPE, link="../../etc/shadow")])], "hard link"),
    ):
        shutil.rmtree(tmp_path / "hostile", ignore_errors=True)
        proj = _hostile(tmp_path, layers)
        _one_line(mvmctl("build", str(proj), timeout=300), needle)
        assert _untouched(host_dir)
    assert not list((tmp_path / "mvm-home" / "images").glob("[0-9a-f]*"))


def test_symlink_escapes_whiteouts_and_opaque_dirs_stay_inside_the_image(
    tmp_path: Path, host_dir: Path
) -> None:
    d = tarfile.DIRTYPE
    first = _tar(
        [_entry("esc", tarfile.SYMTYPE, link=str(host_dir)), _entry("op", d),
         _entry("op/a"), _entry("gone.txt"), _entry("/abs.txt"), _entry("keep.txt"),
         _entry("hl", tarfile.LNKTYPE, link="keep.txt")],
        {"op/a": b"a", "gone.txt": b"g", "/abs.txt": b"abs", "keep.txt": b"keep"},
    )  # fmt: skip
    xattr = _entry("xattr.txt")
    xattr.pax_headers = {"SCHILY.xattr.user.mvmtest": "kept"}
    second = _tar(
        [xattr, _entry("esc/pwned"), _entry("op", d), _entry("op/.wh..wh..opq"), _entry("op/b"),
         _entry(".wh.gone.txt")],
        {"esc/pwned": b"through the symlink", "op/b": b"b", "xattr.txt": b"x"},
    )  # fmt: skip
    proj = _hostile(tmp_path, [first, second])
    rev = json.loads(ok("build", str(proj), "--json", timeout=600))
    assert _untouched(host_dir)
    image = tmp_path / "mvm-home" / "images" / rev["inputHash"] / "rootfs.ext4"
    assert "Type: symlink" in _debugfs(image, "stat /esc")
    # written through the symlink, resolved inside the rootfs (as a container runtime does)
    assert "through the symlink" in _debugfs(image, f"cat {host_dir}/pwned")
    listing = _debugfs(image, "ls /op")
    assert " b " in listing + " " and " a " not in listing + " "  # opaque: layer 1's op/a gone
    assert "File not found" in _debugfs(image, "stat /gone.txt")  # whiteout
    assert "abs" in _debugfs(image, "cat /abs.txt")  # absolute name: inside the root
    assert "Links: 2" in _debugfs(image, "stat /keep.txt")  # hard link kept
    assert "user.mvmtest" in _debugfs(image, "ea_list /xattr.txt")  # xattrs ext4 keeps
    assert "rootlesscontainers" not in _debugfs(image, "ea_list /keep.txt")
    assert "Type: directory" in _debugfs(image, "stat /srv/w")  # WorkingDir made, as runtimes do
    # reproducible: the same image and inputs give the same bytes
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    ok("build", str(proj), "--force", timeout=600)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before


def test_an_image_cannot_bring_mvms_own_directories(tmp_path: Path) -> None:
    for top in (".mvm", "etc/mvm"):
        shutil.rmtree(tmp_path / "hostile", ignore_errors=True)
        layer = _tar([_entry(top, tarfile.DIRTYPE), _entry(f"{top}/init")], {f"{top}/init": b"x"})
        _one_line(mvmctl("build", str(_hostile(tmp_path, [layer])), timeout=300),
                  "which mvm reserves")  # fmt: skip


# -- without a project: run/up --image, template create --image ---------------------------


def test_run_and_up_with_image_need_no_project(tmp_path: Path, images: dict[str, Path]) -> None:
    archive = tmp_path / "my_App.oci.tar"
    shutil.copy(images["oci-archive"], archive)
    res = mvmctl("run", "--attached", "--image", f"oci-archive:{archive}", "--name", "img1",
                 timeout=300)  # fmt: skip
    mvmctl("down", "img1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "args=2|one|two words" in res.stdout
    ok("up", "--image", f"docker-archive:{images['docker-archive']}", "--name", "img2",
       timeout=300)  # fmt: skip
    try:
        info = json.loads(ok("status", "img2", "--json"))
        assert info["exposed_ports"] == ["8080/tcp"] and info["ports"] == []  # never published
        assert info["image_ref"] == f"docker-archive:{images['docker-archive']}"
        assert "exposed_ports:8080/tcp" in ok("status", "img2").replace(" ", "")
    finally:
        ok("down", "img2")
    _one_line(mvmctl("run", str(tmp_path), "--image", f"oci-archive:{archive}"), "use one of")
    _one_line(mvmctl("up", "--image", "oci-archive:/nonexistent.tar"), "does not exist")


def test_template_create_from_an_image(tmp_path: Path, images: dict[str, Path]) -> None:
    archive = tmp_path / "t.tar"
    shutil.copy(images["oci-archive"], archive)
    ok("template", "create", "ocit", "--image", f"oci-archive:{archive}")
    archive.unlink()  # the template keeps its own copy of the image
    ok("template", "build", "ocit", timeout=600)
    ok("up", "--template", "ocit", "--name", "ocit-1", timeout=300)
    try:
        assert ok("wait", "ocit-1", timeout=300) is not None
        log = ok("logs", "ocit-1")
        assert "args=2|one|two words" in log and "who=1234:1234" in log, log
    finally:
        ok("down", "ocit-1")
    copy = tmp_path / "mvm-home" / "image-projects" / "ocit"
    for p in (copy, copy / "image.tar", copy / "mvm.toml"):
        assert p.stat().st_mode & 0o077 == 0, p


def test_a_hostile_oci_archive_never_writes_outside(tmp_path: Path, host_dir: Path) -> None:
    """The archive itself (not a layer) holds a traversal entry next to a valid layout:
    skopeo (extracting it in the build's private directory, --tmpdir) refuses it."""
    layout = tmp_path / "lay"
    _layout(layout, [_tar([_entry("f")], {"f": b"x"})])
    proj = tmp_path / "proj"
    proj.mkdir()
    with tarfile.open(proj / "app.tar", "w") as tar:
        tar.add(layout, arcname=".")
        evil = _entry("../" * 12 + str(host_dir).lstrip("/") + "/escaped")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    write_project(proj, 'name = "evil-archive"\nimage = "oci-archive:app.tar"\n')
    before = set(Path("/var/tmp").glob("oci*"))
    _one_line(mvmctl("build", str(proj), timeout=300), "is outside of")
    assert _untouched(host_dir)
    assert set(Path("/var/tmp").glob("oci*")) <= before  # never extracted in /var/tmp
