"""Snapshot logic that needs no VM: the QEMU arguments, the snapshot directory
format and its checks against hostile input, topology shaping and
compatibility, checksums with snapshot files, and the control protocol's
host side against a fake guest on real FIFOs."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from mvm import channels
from mvm.backends.qemu.argv import QemuOptions, build_argv
from mvm.backends.spec import Disk, HostChannels, MachineSpec, NetworkSpec
from mvm.errors import BackendError, IntegrityError, SnapshotError
from mvm.runtime import snapshots, topology
from mvm.templates import integrity

TOPO = {"hypervisor": "qemu", "machine": "microvm", "vcpus": 1, "memoryMib": 64,
        "disks": ["ro", "ro", "ro"], "network": True, "channels": ["status"],
        "ramObject": True}  # fmt: skip


def spec(tmp: Path, **kw: object) -> MachineSpec:
    base: dict[str, object] = dict(
        name="vm1", run_dir=tmp, kernel=tmp / "kernel", initramfs=None,
        disks=(Disk(tmp / "rootfs", role="rootfs"),), memory_mib=64,
    )  # fmt: skip
    base.update(kw)
    return MachineSpec(**base)  # type: ignore[arg-type]


def test_argv_shared_ram_for_a_snapshot_source_and_private_for_a_clone(tmp_path: Path) -> None:
    s = spec(tmp_path)
    src = build_argv(s, QemuOptions(mem_path=tmp_path / "ram", mem_share=True))
    assert f"memory-backend-file,id=mem,size=64M,mem-path={tmp_path}/ram,share=on" in src
    assert "memory-backend=mem" in src and "-incoming" not in src
    clone = build_argv(s, QemuOptions(mem_path=tmp_path / "r,am", incoming_fd=7, tb_size_mib=8))
    assert any("share=off" in a and "r,,am" in a for a in clone)  # a comma is doubled
    assert clone[clone.index("-incoming") + 1] == "defer"  # never exec:/a path
    assert "tcg,tb-size=8" in clone
    fork = build_argv(s, QemuOptions(incoming_fd=7, mem_object=True))
    assert "memory-backend-ram,id=mem,size=64M" in fork


def test_shape_pads_slots_and_refuses_data_volumes(tmp_path: Path) -> None:
    shaped = topology.shape(spec(tmp_path))
    assert len(shaped.disks) == 3 and shaped.network.enabled
    assert all(d.readonly for d in shaped.disks) and "mvm.fwcfg=1" in shaped.cmdline
    assert (tmp_path / topology.PLACEHOLDER).stat().st_size == 0
    data = spec(tmp_path, disks=(Disk(tmp_path / "r", role="rootfs"),
                                 Disk(tmp_path / "d", role="data", readonly=False)))  # fmt: skip
    with pytest.raises(SnapshotError, match="data volumes") as e:
        topology.shape(data)
    assert e.value.hint and "--cold" in e.value.hint
    with pytest.raises(SnapshotError, match="network"):
        topology.shape(spec(tmp_path, network=NetworkSpec(egress=True)), network=False)


def make_snapshot(d: Path, **meta: object) -> Path:
    d.mkdir()
    (d / snapshots.STATE).write_bytes(b"state")
    with open(d / snapshots.RAM, "wb") as f:
        f.truncate(64 << 20)
    snapshots.write_meta(d, hypervisor="qemu", version="7.2.22", topology=dict(TOPO),
                         kernel_sha256="0" * 64, image_hash="h", shared_ram=True)  # fmt: skip
    if meta:
        data = json.loads((d / snapshots.META).read_text())
        data.update(meta)
        (d / snapshots.META).write_text(json.dumps(data))
    return d


def test_snapshot_directory_round_trip(tmp_path: Path) -> None:
    snap = snapshots.load(make_snapshot(tmp_path / "s"))
    assert snap.shared_ram and snap.memory_mib == 64
    src = snap.source()
    assert src.ram == tmp_path / "s" / snapshots.RAM and src.ram_object
    assert snap.files() == list(integrity.SNAPSHOT_FILES)  # the names templates checksum


@pytest.mark.parametrize("damage", [
    lambda d: (d / snapshots.META).write_text("{"),
    lambda d: (d / snapshots.META).write_text("[]"),
    lambda d: (d / snapshots.META).write_text(json.dumps({"version": 99})),
    lambda d: (d / snapshots.META).write_text("x" * (snapshots.META_MAX + 10)),
    lambda d: (d / snapshots.STATE).write_bytes(b"longer state"),
    lambda d: (d / snapshots.RAM).unlink(),
    lambda d: ((d / snapshots.STATE).unlink(), (d / snapshots.STATE).symlink_to("/etc/passwd")),
    lambda d: ((d / snapshots.META).unlink(), os.mkfifo(d / snapshots.META)),
])  # fmt: skip
def test_damaged_snapshots_are_one_line_errors(tmp_path: Path, damage: object) -> None:
    d = make_snapshot(tmp_path / "s")
    damage(d)  # type: ignore[operator]
    with pytest.raises(SnapshotError) as e:
        snapshots.load(d)
    assert "\n" not in e.value.message and e.value.hint and "--cold" in e.value.hint


def test_ram_size_must_match_memory(tmp_path: Path) -> None:
    d = make_snapshot(tmp_path / "s", files={snapshots.STATE: 5, snapshots.RAM: 1 << 20})
    os.truncate(d / snapshots.RAM, 1 << 20)
    with pytest.raises(SnapshotError, match="memory size"):
        snapshots.load(d)


def test_incompatible_snapshots_are_refused_with_a_cold_hint(tmp_path: Path) -> None:
    snap = snapshots.load(make_snapshot(tmp_path / "s"))
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"k")
    for kw, words in (({"version": "8.0.0"}, "7.2.22"),
                      ({"topology": {**TOPO, "memoryMib": 128}}, "memoryMib"),
                      ({}, "another kernel")):  # fmt: skip
        args: dict[str, object] = {"hypervisor": "qemu", "version": "7.2.22",
                                   "topology": dict(TOPO), "kernel": kernel}  # fmt: skip
        args.update(kw)
        with pytest.raises(SnapshotError, match=words) as e:
            snapshots.check_compatible(snap, **args)  # type: ignore[arg-type]
        assert e.value.hint and "--cold" in e.value.hint


def test_checksums_take_all_snapshot_files_or_none() -> None:
    base = {n: "a" * 64 for n in integrity.REVISION_FILES}
    full = {**base, **{n: "b" * 64 for n in integrity.SNAPSHOT_FILES}}
    assert integrity.parse_checksums(base, "w") == base
    assert integrity.parse_checksums(full, "w") == full
    assert integrity.files_of(full)[-3:] == integrity.SNAPSHOT_FILES
    with pytest.raises(IntegrityError):
        integrity.parse_checksums({**base, "snapshot.json": "b" * 64}, "w")


def fake_guest(ch: HostChannels, answer: object, stop: threading.Event) -> threading.Thread:
    """Reads requests from control.in and answers on control.out like /init."""

    opened = threading.Event()

    def run() -> None:
        rfd = os.open(ch.control, os.O_RDWR)  # like QEMU's pipe chardev: both ends open
        wfd = os.open(ch.control_reply, os.O_RDWR)  # type: ignore[arg-type]
        opened.set()
        buf = b""
        while not stop.is_set():
            buf += os.read(rfd, 4096)
            *lines, buf = buf.split(b"\n")
            for line in lines:
                verb, rid, *args = line.decode().split(" ")
                reply = answer(verb, args)  # type: ignore[operator]
                if reply is not None:
                    os.write(wfd, f"stale other\n{rid} {reply}\n".encode())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    opened.wait(5)
    return t


def fifos(tmp: Path) -> HostChannels:
    for end in ("in", "out"):
        os.mkfifo(tmp / f"control.{end}", 0o600)
    return HostChannels(status=tmp / "status", control=tmp / "control.in", agent=tmp / "a",
                        console=tmp / "c", console_log=tmp / "l",
                        control_reply=tmp / "control.out")  # fmt: skip


def test_control_requests_in_one_write_and_errors(tmp_path: Path) -> None:
    ch = fifos(tmp_path)
    seen: list[tuple[str, list[str]]] = []

    def answer(verb: str, args: list[str]) -> str | None:
        seen.append((verb, args))
        if verb == "restart":
            return None  # never answers
        return "err bad seed" if verb == "reseed" else "ok"

    stop = threading.Event()
    fake_guest(ch, answer, stop)
    try:
        times = channels.control_requests(ch, [("identity", ("h1", "0" * 32)), ("ping", ())])
        assert set(times) == {"identity", "ping"}
        with pytest.raises(BackendError, match="guest reseed failed: bad seed"):
            channels.control_request(ch, "reseed", "zz")
        with pytest.raises(BackendError, match="did not answer restart"):
            channels.control_request(ch, "restart", timeout=0.5)
        for bad in (("a b",), ("",), ("x\n",)):
            with pytest.raises(BackendError, match="bad argument"):
                channels.control_request(ch, "identity", *bad)
        with pytest.raises(BackendError, match="unknown control verb"):
            channels.control_request(ch, "poweroff")
    finally:
        stop.set()
    assert seen[0] == ("identity", ["h1", "0" * 32])
