"""OCI images, the pure parts: image references, the image config as untrusted JSON,
umoci's owner xattr, revision.json's OCI keys, and mvm's users merged into the image's."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from mvm.config.imageref import parse_image_ref
from mvm.config.loader import parse_spec
from mvm.config.schema import Entrypoint, GuestSpec, Uids
from mvm.errors import BuildError, ConfigError, MetadataError
from mvm.image import oci
from mvm.image.builder import own_files
from mvm.image.meta import ImageMeta
from mvm.image.render import render
from mvm.image.staging import Staging
from tests.unit.test_image_meta import builder_revision


def test_image_refs_parse_and_stay_in_the_project(tmp_path: Path) -> None:
    (tmp_path / "app.tar").write_bytes(b"x")
    (tmp_path / "layout").mkdir()
    (tmp_path / "out").symlink_to("/etc/passwd")
    src = parse_image_ref("oci-archive:app.tar", tmp_path, confine=True, what="image")
    assert (src.transport, src.path, src.skopeo_ref()) == (
        "oci-archive", tmp_path / "app.tar", f"oci-archive:{tmp_path}/app.tar",
    )  # fmt: skip
    lay = parse_image_ref("oci:layout:v1.2", tmp_path, confine=True, what="image")
    assert (lay.tag, lay.skopeo_ref()) == ("v1.2", f"oci:{tmp_path}/layout:v1.2")
    reg = parse_image_ref("docker://docker.io/library/alpine:3", tmp_path, confine=True, what="i")
    assert reg.remote == "docker.io/library/alpine:3" and not reg.local
    for bad, needle in (
        ("docker-archive:../x.tar", "outside the project"),
        ("oci-archive:out", "outside the project"),
        ("oci-archive:/etc/passwd", "outside the project"),
        ("oci:app.tar", "not a directory"),
        ("oci-archive:layout", "not a regular file"),
        ("oci-archive:missing.tar", "does not exist"),
        ("oci:layout:bad/tag", "not a valid tag"),
        ("oci-archive:a:b.tar", "paths with ':'"),
        ("tar:app.tar", "unknown transport"),
        ("docker://a b", "whitespace"),
        ("docker://../etc", "not a registry reference"),
        (7, "must be a string"),
    ):
        with pytest.raises(ConfigError, match=needle):
            parse_image_ref(bad, tmp_path, confine=True, what="image")
    # the command line's own paths are not confined
    cli = parse_image_ref("oci-archive:" + str(tmp_path / "app.tar"), Path("/"), confine=False,
                          what="--image")  # fmt: skip
    assert cli.path == tmp_path / "app.tar"


def test_a_project_with_an_image_needs_no_entrypoint_and_records_what_it_set(
    tmp_path: Path,
) -> None:
    (tmp_path / "app.tar").write_bytes(b"x")
    m = tmp_path / "mvm.toml"
    spec = parse_spec({"name": "a", "image": "oci-archive:app.tar"}, m)
    assert (
        spec.image is not None and spec.explicit == frozenset() and spec.init_path == "/.mvm/init"
    )
    spec = parse_spec({"name": "a", "image": "oci-archive:app.tar", "uids": {"entrypoint": 0},
                       "entrypoint": {"command": ["/x"]}}, m)  # fmt: skip
    assert spec.explicit == {"uid", "entrypoint"}
    with pytest.raises(ConfigError, match="entrypoint: is required"):
        parse_spec({"name": "a"}, m)


def _cfg(**c: Any) -> dict[str, Any]:
    return {"architecture": "amd64", "os": "linux", "config": c}


def test_image_config_is_validated_as_untrusted_json() -> None:
    cfg = oci.parse_config(_cfg(Entrypoint=["/a"], Cmd=["b"], Env=["A=1", "B=x=y", "A=2"],
                                User="app", WorkingDir="srv/../app",
                                ExposedPorts={"80/tcp": {}, "53/udp": {}, "8080": {}}), "i")  # fmt: skip
    assert cfg.entrypoint == ("/a",) and cfg.cmd == ("b",)
    assert cfg.env == (("B", "x=y"), ("A", "2")) and cfg.workdir == "/app"
    assert cfg.exposed_ports == ("53/udp", "80/tcp", "8080/tcp")
    for bad, needle in (
        ({"architecture": "arm64", "os": "linux"}, "linux/amd64"),
        (_cfg(Cmd="sh -c x"), "Cmd must be a list"),
        (_cfg(Cmd=["a"] * 300), "Cmd must be a list"),
        (_cfg(Env=["NOEQUALS"]), "not NAME=VALUE"),
        (_cfg(Env=["A B=1"]), "not a shell variable name"),
        (_cfg(Env=["A=\0"]), "not NAME=VALUE"),
        (_cfg(User=["root"]), "User must be"),
        (_cfg(WorkingDir='/a"b'), "unsupported name"),
        (_cfg(ExposedPorts={"99999/tcp": {}}), "not PORT/PROTO"),
        (_cfg(ExposedPorts=["80"]), "ExposedPorts must be"),
        ({"architecture": "amd64", "os": "linux", "config": []}, "must be an object"),
    ):
        with pytest.raises(BuildError, match=needle):
            oci.parse_config(bad, "i")


def test_rootless_owner_xattr_decodes() -> None:
    assert oci._decode_owner(b"\x08\xd2\t\x10\xd2\t") == (1234, 1234)
    assert oci._decode_owner(b"\x10\x05") == (0, 5)
    assert oci._decode_owner(b"") == (0, 0)
    for bad in (b"\x08", b"\x0a\x01", b"\x08\xff\xff\xff\xff\xff\xff"):
        with pytest.raises(BuildError, match="malformed"):
            oci._decode_owner(bad)


def _spec(tmp_path: Path, **kw: Any) -> GuestSpec:
    (tmp_path / "app.tar").write_bytes(b"x")
    return parse_spec({"name": "a", "image": "oci-archive:app.tar", **kw}, tmp_path / "mvm.toml")


def test_apply_maps_the_config_and_refuses_root_unless_explicit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Staging(root) as st:
        st.write("/etc/passwd", b"root:x:0:0::/root:/bin/sh\nweb:x:1001:1001::/srv/web:/x\n", 0o644)
        st.write("/srv/web/index.html", b"hi", 0o644)
        cfg = oci.ImageConfig(("/bin/app",), ("--port", "80"), (("FOO", "1"),), "web", "/srv")
        spec = oci.apply(_spec(tmp_path), cfg, st, "img")
        assert spec.entrypoint.command == ("/bin/app", "--port", "80")
        assert spec.uids.entrypoint == 1001 and spec.workdir == "/srv"
        assert spec.env[0][0] == "PATH" and ("FOO", "1") in spec.env
        # the image's home has files: no tmpfs hides them
        assert spec.home == "/srv/web" and spec.sealed_home is None
        with pytest.raises(BuildError, match="refuses a root entrypoint"):
            oci.apply(_spec(tmp_path), oci.ImageConfig(cmd=("/x",)), st, "img")
        with pytest.raises(BuildError, match="not in the image's /etc/passwd"):
            oci.apply(_spec(tmp_path), oci.ImageConfig(cmd=("/x",), user="nobody"), st, "img")
        with pytest.raises(BuildError, match="no Entrypoint or Cmd"):
            oci.apply(_spec(tmp_path), oci.ImageConfig(user="1000"), st, "img")
        with pytest.raises(BuildError, match="agent uid"):
            oci.apply(_spec(tmp_path), oci.ImageConfig(cmd=("/x",), user="990"), st, "img")
        root_ok = oci.apply(_spec(tmp_path, uids={"entrypoint": 0}), oci.ImageConfig(cmd=("/x",)),
                            st, "img")  # fmt: skip
        assert root_ok.uids.entrypoint == 0 and root_ok.home == "/root"
        over = oci.apply(_spec(tmp_path, entrypoint={"command": ["/mine"]}), cfg, st, "img")
        assert over.entrypoint.command == ("/mine",)
        empty_home = oci.apply(_spec(tmp_path), oci.ImageConfig(cmd=("/x",), user="1234"), st, "i")
        assert empty_home.home == "/" and empty_home.sealed_home is None


def test_mvm_users_join_the_images_own_and_scripts_use_mvms_shell(tmp_path: Path) -> None:
    with Staging(tmp_path / "root") as st:
        st.write("/etc/passwd", b"root:x:0:0::/root:/bin/bash\nweb:x:1001:1001::/srv:/x\n", 0o644)
        spec = oci.apply(_spec(tmp_path), oci.ImageConfig(cmd=("/x",), user="1001"), st, "img")
    base = {"/etc/passwd": b"root:x:0:0::/root:/bin/bash\nweb:x:1001:1001::/srv:/x\n",
            "/etc/group": b"root:x:0:\n"}  # fmt: skip
    files = {f.path: f for f in own_files(spec, [], base)}
    passwd = files["/etc/passwd"].content.decode().splitlines()
    assert passwd[:2] == ["root:x:0:0::/root:/bin/bash", "web:x:1001:1001::/srv:/x"]
    assert passwd[2].startswith("mvm-agent:x:990:990:") and len(passwd) == 3
    assert "/etc/fstab" not in files and "/etc/profile" not in files and "/init" not in files
    assert "/.mvm/agent" in files and "/usr/local/bin/mvm-guest-agent" not in files
    assert b"-x /.mvm/agent" in files["/.mvm/init"].content
    assert files["/.mvm/init"].content.startswith(b"#!/.mvm/bin/sh\n")
    assert b"\nexport PATH=/.mvm/bin:" in files["/.mvm/init"].content
    launcher = files["/etc/mvm/run/entrypoint"].content.decode()
    assert launcher.startswith("#!/.mvm/bin/sh\n") and "cd / || exit 126" in launcher
    # a Debian image is unchanged: /init, /bin/sh, /etc/fstab
    plain = GuestSpec("a", Entrypoint("command", command=("/x",)), uids=Uids(990, 1000))
    paths = {f.path for f in own_files(plain, [])}
    assert {"/init", "/etc/fstab", "/etc/mvm/fstab", "/etc/profile"} <= paths
    assert all(not f.content.startswith(b"#!/.mvm") for f in render(plain))


def test_revision_json_oci_keys_round_trip_and_are_checked() -> None:
    data = builder_revision()
    data.update(schema=2, initPath="/.mvm/init",
                image={"ref": "oci-archive:app.tar", "digest": "sha256:" + "ab" * 32,
                       "exposedPorts": ["80/tcp"]})  # fmt: skip
    m = ImageMeta.from_json(copy.deepcopy(data), "x")
    assert m.to_json() == data and m.init_exec == "/.mvm/init" and m.image is not None
    assert m.image.exposed_ports == ("80/tcp",)
    assert ImageMeta.from_json(builder_revision(), "x").init_exec == "/init"
    for key, value, needle in (
        ("initPath", "/bin/sh", "initPath: invalid value"),
        ("image", {"ref": "x", "digest": "md5:1", "exposedPorts": []}, "image.digest"),
        ("image", {"ref": "x\n", "digest": "sha256:" + "ab" * 32, "exposedPorts": []},
         "printable"),
        ("image", {"ref": "x"}, "must be an object with exactly"),
    ):  # fmt: skip
        bad = copy.deepcopy(data)
        bad[key] = value
        with pytest.raises(MetadataError, match=needle):
            ImageMeta.from_json(bad, "x")
    no_init = copy.deepcopy(data)
    del no_init["initPath"]
    with pytest.raises(MetadataError, match="schema 2"):
        ImageMeta.from_json(no_init, "x")


def test_staging_reads_image_files_without_leaving_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "host-secret"
    outside.write_text("secret")
    with Staging(tmp_path / "root") as st:
        st.write("/etc/real", b"real", 0o644)
        st.symlink("/etc/passwd", str(outside))  # absolute: resolved inside the root
        st.symlink("/etc/rel", "real")
        st.symlink("/etc/up", "../../../../etc/real")
        assert st.read("/etc/passwd", 100) is None
        assert st.read("/etc/rel", 100) == b"real" and st.read("/etc/up", 100) == b"real"
        with pytest.raises(BuildError, match="larger than"):
            st.read("/etc/real", 2)
        assert st.listdir("/etc") == ["passwd", "real", "rel", "up"] and st.listdir("/none") == []


def test_image_without_a_project_gets_a_name_and_an_unconfined_path(tmp_path: Path) -> None:
    from mvm.config.loader import image_name, image_project

    archive = tmp_path / "My_App.oci.tar"
    archive.write_bytes(b"x")
    project = image_project(f"oci-archive:{archive}", Path("/"))
    assert project.spec.name == "my-app" and project.spec.image is not None
    assert project.spec.image.path == archive
    reg = parse_image_ref("docker://ghcr.io/acme/Web.Server:1.2@sha256:ab", tmp_path,
                          confine=True, what="i")  # fmt: skip
    assert image_name(reg) == "web-server"
    assert (
        image_name(parse_image_ref("docker://x/_._", tmp_path, confine=True, what="i")) == "image"
    )
