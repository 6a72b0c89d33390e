"""``revision.json`` as a typed, validated ``ImageMeta``: exact round trip of what
the builder writes, and a one-line ``MetadataError`` naming the file and key for
every value of the wrong type or out of range."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from mvm.errors import MetadataError
from mvm.image import meta
from mvm.image.meta import ImageMeta

HEX = "ab" * 32


def builder_revision() -> dict[str, Any]:
    """What ``image/builder.py:_revision`` writes, plus the template keys."""
    return {
        "schema": 1, "name": "svc", "accessible": False, "sealed": True,
        "entrypointKind": "command", "hypervisor": "qemu",
        "uids": {"agent": 990, "entrypoint": 1000}, "rootlessEntrypoint": True,
        "agentBinary": "stub", "guestFeatures": ["drives", "credentials"],
        "expectedBootMs": 300, "expectedBootMsByAccel": {"kvm": 300, "tcg": 2000},
        "inputHash": HEX, "kernel": {"version": "6.1.0-57-cloud-amd64",
                                     "identity": "debian:linux-image-6.1.0-57-cloud-amd64:6.1.1"},
        "packages": ["python3-minimal", "libc6"], "defaults": {"vcpus": 1, "memory_mib": 256},
        "checksums": {"kernel": HEX, "initramfs.cpio": HEX, "rootfs.ext4": HEX},
        "sizes": {"kernel": 10, "initramfs.cpio": 20, "rootfs.ext4": 30},
        "createdAt": "2026-12-03T12:00:00Z", "buildSeconds": 3.25, "mvmVersion": "0.1.0",
        "projectName": "hello",
        "template": {"name": "svc", "key": HEX, "createdAt": "2026-12-03T12:00:01Z",
                     "settings": {"flake": "/p", "profile": "default", "role": "worker",
                                  "cpus": None, "memory_mib": 512, "data_disk_mib": None}},
    }  # fmt: skip


def test_round_trip_is_exact() -> None:
    data = builder_revision()
    m = ImageMeta.from_json(copy.deepcopy(data), "x/revision.json")
    assert m.to_json() == data
    assert ImageMeta.from_bytes(m.encode(), "x").to_json() == data
    assert (m.backend, m.features, m.defaults.memory_mib) == (
        "qemu", frozenset({"drives", "credentials"}), 256,
    )  # fmt: skip


def test_keys_added_later_stay_absent_and_unknown_top_level_keys_are_kept() -> None:
    data = builder_revision()
    for k in ("hypervisor", "guestFeatures", "projectName", "template"):
        del data[k]
    data["futureInfo"] = {"anything": [1, 2]}
    m = ImageMeta.from_json(copy.deepcopy(data), "x")
    assert m.to_json() == data and m.backend == "qemu" and m.features == frozenset()
    assert m.template is None and m.extra == {"futureInfo": {"anything": [1, 2]}}


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split("/")
    for p in parents:
        data = data[p]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("schema", 3, "unsupported schema 3"),
        ("schema", 2, "initPath: is set exactly on schema 2"),
        ("schema", True, "unsupported schema"),
        ("schema", _DELETE, "unsupported schema None"),
        ("name", "app\n", "name: invalid value"),
        ("name", "../etc", "name: invalid value"),
        ("name", 7, "name: must be a string"),
        ("accessible", "yes", "accessible: must be true or false"),
        ("sealed", False, "sealed: must be the opposite"),
        ("entrypointKind", "exec", "entrypointKind: must be one of"),
        ("hypervisor", "xen", "hypervisor: must be one of"),
        ("uids/entrypoint", 65535, "uids.entrypoint: must be an integer between 0 and 65534"),
        ("uids/agent", -1, "uids.agent"),
        ("uids/agent", "990", "uids.agent"),
        ("uids/extra", 1, "uids: must be an object with exactly agent, entrypoint"),
        ("rootlessEntrypoint", False, "does not match uids.entrypoint"),
        ("agentBinary", "/bin/sh", "agentBinary"),
        ("guestFeatures", "drives", "guestFeatures: must be a list"),
        ("guestFeatures", ["ok", "Bad Feature"], "guestFeatures: invalid entry"),
        ("expectedBootMs", 1.5, "expectedBootMs"),
        ("expectedBootMsByAccel/kvm", True, "expectedBootMsByAccel.kvm"),
        ("inputHash", "abc", "inputHash: invalid value"),
        ("kernel/version", "6.1\n", "kernel.version"),
        ("kernel/identity", "a\x00b", "kernel.identity: must be printable"),
        ("packages", ["libc6", "rm -rf"], "packages: invalid entry"),
        ("defaults/vcpus", 0, "defaults.vcpus: must be an integer between 1 and 64"),
        ("defaults/vcpus", "2", "defaults.vcpus"),
        ("defaults/memory_mib", 1 << 21, "defaults.memory_mib"),
        ("defaults", None, "defaults: must be an object"),
        ("checksums/kernel", HEX.upper(), "checksums.kernel: invalid value"),
        ("checksums/rootfs.ext4", _DELETE, "checksums: must be an object with exactly"),
        ("sizes/kernel", -1, "sizes.kernel"),
        ("sizes/kernel", 1 << 41, "sizes.kernel"),
        ("sizes", [], "sizes: must be an object"),
        ("createdAt", "yesterday", "createdAt: invalid value"),
        ("buildSeconds", float("nan"), "buildSeconds"),
        ("buildSeconds", "1", "buildSeconds"),
        ("mvmVersion", _DELETE, "mvmVersion: missing"),
        ("projectName", "Hello", "projectName: invalid value"),
        ("template/name", "x\n", "template.name: invalid value"),
        ("template/settings", "cpus=2", "template.settings: must be an object"),
        ("template/key", 5, "template.key"),
    ],
)
def test_bad_values_name_the_file_and_key(path: str, value: Any, needle: str) -> None:
    data = builder_revision()
    _set(data, path, value)
    with pytest.raises(MetadataError, match=r"^/srv/r/revision\.json: ") as exc:
        ImageMeta.from_json(data, "/srv/r/revision.json")
    assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "raw", [b"[1, 2]", b"{not json", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe"]
)
def test_undecodable_or_hostile_json_is_a_metadata_error(raw: bytes) -> None:
    with pytest.raises(MetadataError, match=r"^f: "):
        ImageMeta.from_bytes(raw, "f")


def test_load_refuses_fifos_huge_files_and_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "revision.json"
    good.write_text(json.dumps(builder_revision()))
    assert meta.load(good).name == "svc"
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(MetadataError, match="not a regular file"):  # and no hang
        meta.load(fifo)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (meta.MAX_BYTES + 1))
    with pytest.raises(MetadataError, match=f"^{big}: .*larger than"):
        meta.load(big)
    link = tmp_path / "link.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(MetadataError, match=str(link)):
        meta.load(link)


def test_kernel_boot_properties_round_trip_and_are_checked() -> None:
    """The mvm kernel records how it boots (no initramfs, no KASLR); older
    revisions without the keys mean the Debian way."""
    data = builder_revision()
    m = ImageMeta.from_json(copy.deepcopy(data), "x")
    assert m.kernel.kaslr is None and not m.kernel.direct_boot
    data["kernel"].update(kaslr=False, boot="direct")
    m = ImageMeta.from_json(copy.deepcopy(data), "x")
    assert m.to_json() == data and m.kernel.direct_boot and m.kernel.kaslr is False
    for key, bad in (("kaslr", "no"), ("boot", "pxe"), ("extra", 1)):
        broken = copy.deepcopy(data)
        broken["kernel"][key] = bad
        with pytest.raises(MetadataError, match="kernel"):
            ImageMeta.from_json(broken, "x")
