"""The mvm kernel's configuration checks and cache keys (pure logic; the real
build is exercised by `mvmctl kernel build`, which every VM test runs first)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mvm.errors import BuildError
from mvm.image import kernelbuild as kb


def test_fragment_documents_every_option() -> None:
    """Every option in the shipped fragment has a comment above its group and
    nothing is a module (CONFIG_MODULES is off: no initramfs to load them)."""
    text = kb.fragment_text()
    opts = kb.parse_config(text)
    assert len(opts) > 50
    assert "m" not in opts.values()
    for must in ("CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET",
                 "CONFIG_VIRTIO_CONSOLE", "CONFIG_FW_CFG_SYSFS", "CONFIG_DMI_SYSFS",
                 "CONFIG_EXT4_FS", "CONFIG_TMPFS", "CONFIG_DEVTMPFS", "CONFIG_PVH",
                 "CONFIG_ACPI", "CONFIG_PCI", "CONFIG_SMP", "CONFIG_VMGENID",
                 "CONFIG_VIRTIO_BALLOON", "CONFIG_PAGE_REPORTING", "CONFIG_CGROUPS",
                 "CONFIG_SECCOMP_FILTER", "CONFIG_VIRTIO_VSOCKETS"):  # fmt: skip
        assert opts.get(must) == "y", must
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("CONFIG_"):
            block = lines[: i + 1]
            prev = [x for x in reversed(block[:-1]) if not x.startswith("CONFIG_")]
            assert prev and prev[0].startswith("#"), f"{line} has no comment saying why"


def test_parse_config_reads_set_and_unset() -> None:
    opts = kb.parse_config('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x"\n# a comment\n')
    assert opts == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"x"'}


def test_missing_options_names_what_olddefconfig_dropped() -> None:
    frag = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_N=64\n"
    final = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_N=8\n"
    assert kb.missing_options(frag, final) == [
        "CONFIG_B=y (got n)",
        "CONFIG_C=n (got y)",
        "CONFIG_N=64 (got 8)",
    ]
    assert kb.missing_options(frag, "CONFIG_A=y\nCONFIG_B=y\nCONFIG_N=64\n") == []


def test_key_depends_on_source_config_and_compiler_only() -> None:
    cfg = kb.config_hash("CONFIG_A=y\n")
    assert cfg == kb.config_hash("# why A\nCONFIG_A=y\n\n")  # comments do not change the key
    assert cfg != kb.config_hash("CONFIG_A=y\nCONFIG_B=y\n")
    k = kb.build_key("6.1.192-3", cfg, "gcc 12.2.0")
    assert k == kb.build_key("6.1.192-3", cfg, "gcc 12.2.0")
    assert k.startswith("mvm-6.1.192-3-")
    assert k != kb.build_key("6.1.193-1", cfg, "gcc 12.2.0")
    assert k != kb.build_key("6.1.192-3", cfg, "gcc 13.1.0")
    with pytest.raises(BuildError):
        kb.build_key("../../etc", cfg, "gcc")


def test_resolve_uses_the_pointer_without_dpkg_or_gcc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A built kernel is found from the pointer and two stats: no child process."""
    monkeypatch.setenv("MVM_CACHE", str(tmp_path))
    key = kb.build_key("6.1.192-3", kb.config_hash(kb.fragment_text()), "gcc")
    d = tmp_path / "kernels" / key
    d.mkdir(parents=True)
    (d / "vmlinux").write_bytes(b"\x7fELF")
    (d / "kernel.json").write_text(json.dumps({"release": "6.1.192", "sha256": "0" * 64}))
    facts = kb._fast_facts(kb.config_hash(kb.fragment_text()))
    (tmp_path / "kernels" / kb.POINTER).write_text(json.dumps({"key": key, "facts": facts}))

    def no_child(*a: object, **k: object) -> None:
        raise AssertionError("ran a child process")

    monkeypatch.setattr(kb.proc, "run", no_child)
    assert kb.resolve(build=False).key == key
    assert [k.key for k in kb.cached()] == [key]
    # a half-written build (no kernel.json) is not a build
    (d / "kernel.json").unlink()
    assert kb.cached() == []


def test_remove_refuses_anything_but_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVM_CACHE", str(tmp_path))
    for bad in ("../x", "mvm-../../etc-0123456789abcdef", "debian-current.json", ""):
        with pytest.raises(BuildError):
            kb.remove(bad)


def test_patches_are_part_of_the_key() -> None:
    shipped = kb.patches()
    assert [n for n, _ in shipped] == [
        "0001-virtio-mmio-cap-queue-size.patch",
        "0002-fw-cfg-rebind.patch",
    ]
    frag = kb.fragment_text()
    assert kb.config_hash(frag) == kb.config_hash(frag, shipped)
    assert kb.config_hash(frag, []) != kb.config_hash(frag, shipped)
    changed = [(shipped[0][0], shipped[0][1] + b"\n")]
    assert kb.config_hash(frag, changed) != kb.config_hash(frag, shipped)
