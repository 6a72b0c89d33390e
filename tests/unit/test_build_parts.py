"""Pure parts of the image builder: cpio format, module deps, rendering, hashing."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

from mvm.config.schema import Entrypoint, GuestSpec, Service, Uids
from mvm.image import cpio
from mvm.image.initramfs import module_depends
from mvm.image.render import render


def test_cpio_roundtrip_with_system_cpio(tmp_path: Path) -> None:
    buf = io.BytesIO()
    cpio.write(buf, [cpio.directory("bin"), cpio.file("bin/x", b"hello\n", 0o755),
                     cpio.symlink("bin/y", "x")])  # fmt: skip
    archive = tmp_path / "a.cpio"
    archive.write_bytes(buf.getvalue())
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "-F", str(archive)], cwd=out, check=True)
    assert (out / "bin/x").read_bytes() == b"hello\n"
    assert (out / "bin/x").stat().st_mode & 0o777 == 0o755
    assert (out / "bin/y").is_symlink()


def test_module_depends() -> None:
    blob = b"\x00license=GPL\x00depends=virtio,virtio_ring\x00intree=Y\x00"
    assert module_depends(blob) == ["virtio", "virtio_ring"]
    assert module_depends(b"\x00depends=\x00") == []
    assert module_depends(b"nothing") == []


def spec(**kw: object) -> GuestSpec:
    base: dict[str, object] = dict(
        name="a", entrypoint=Entrypoint("command", command=("/bin/echo", "a b", "$HOME;rm"))
    )
    base.update(kw)
    return GuestSpec(**base)  # type: ignore[arg-type]


def by_path(s: GuestSpec) -> dict[str, bytes]:
    return {f.path: f.content for f in render(s)}


def test_launcher_quotes_argv() -> None:
    launcher = by_path(spec())["/etc/mvm/run/entrypoint"].decode()
    assert "exec /bin/echo 'a b' '$HOME;rm'" in launcher


def test_spec_sh_carries_uids_and_mode() -> None:
    files = by_path(spec(uids=Uids(5000, 1234), dev=False))
    sh = files["/etc/mvm/spec.sh"].decode()
    assert "MVM_UID=1234" in sh and "MVM_AGENT_UID=5000" in sh and "MVM_ACCESSIBLE=0" in sh
    assert "MVM_STDIN=/dev/null" in sh
    assert "app:x:1234:1234" in files["/etc/passwd"].decode()
    assert "mvm-agent:x:5000:5000" in files["/etc/passwd"].decode()


def test_services_rendered() -> None:
    ep = Entrypoint("services", services=(Service("web", ("/bin/web",), "always"),))
    files = by_path(spec(entrypoint=ep, services=(Service("aux-1", ("/bin/aux",), "never"),)))
    sh = files["/etc/mvm/spec.sh"].decode()
    assert "MVM_SERVICES=web:always" in sh and "MVM_AUX_SERVICES=aux-1:never" in sh
    assert "/etc/mvm/run/svc-web" in files and "/etc/mvm/run/svc-aux-1" in files
