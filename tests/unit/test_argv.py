"""The QEMU command line is a pure function: test it as data."""

from __future__ import annotations

from pathlib import Path

from mvm.backends.qemu.argv import TB_SIZE_MIB, QemuOptions
from mvm.backends.qemu.argv import build_argv as _build_argv
from mvm.backends.qemu.argv import kernel_cmdline as _kernel_cmdline
from mvm.backends.qemu.guestdata import FwCfg, GuestData
from mvm.backends.spec import Disk, MachineSpec, NetworkSpec, PortForward


def Drive(path: Path, readonly: bool = True, snapshot: bool = False) -> Disk:
    return Disk(path, role="data", readonly=readonly, ephemeral=snapshot)


def cfg(**kw: object) -> tuple[MachineSpec, QemuOptions, GuestData]:
    """The old flat MachineConfig's fields, split into spec, QEMU options and guest data."""
    opts = {k: kw.pop(k) for k in ("accel", "tsc_khz", "tb_size_mib", "balloon") if k in kw}
    data = {k: kw.pop(k) for k in ("fw_cfg",) if k in kw}
    net = NetworkSpec(egress=bool(kw.pop("network", False)),
                      forwards=tuple(kw.pop("ports", ())))  # type: ignore[arg-type]  # fmt: skip
    drives = kw.pop("drives", (Drive(Path("/img/rootfs.ext4")),))
    base: dict[str, object] = dict(
        name="vm1", kernel=Path("/k/vmlinux"), initramfs=Path("/k/initramfs.cpio"),
        disks=drives, run_dir=Path("/run/vm1"), network=net,
    )  # fmt: skip
    base.update(kw)
    return (MachineSpec(**base), QemuOptions(**opts), GuestData(**data))  # type: ignore[arg-type]


def build_argv(c: tuple[MachineSpec, QemuOptions, GuestData]) -> list[str]:
    return _build_argv(*c)


def kernel_cmdline(c: tuple[MachineSpec, QemuOptions, GuestData]) -> str:
    return _kernel_cmdline(*c)


def opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_fast_microvm_settings() -> None:
    argv = build_argv(cfg(tsc_khz=2_600_000))
    assert argv[0] == "qemu-system-x86_64"
    assert opt(argv, "-M") == ["microvm,isa-serial=on,rtc=on"]
    assert opt(argv, "-accel") == [f"tcg,tb-size={TB_SIZE_MIB}"]
    line = opt(argv, "-append")[0]
    assert "lpj=10400000 tsc_early_khz=2600000" in line
    assert "console=ttyS0" in line and "nokaslr" in line
    assert "-no-reboot" in argv and "-nodefaults" in argv


def test_kvm_uses_host_cpu() -> None:
    argv = build_argv(cfg(accel="kvm"))
    assert opt(argv, "-cpu") == ["host"] and opt(argv, "-accel") == ["kvm"]


def test_no_tsc_guess_without_host_value() -> None:
    assert "lpj=" not in kernel_cmdline(cfg(tsc_khz=None))


def test_rootfs_first_and_readonly_by_default() -> None:
    argv = build_argv(cfg(drives=(Drive(Path("/r.ext4")), Drive(Path("/d.ext4"), readonly=False))))
    drives = opt(argv, "-drive")
    assert drives[0].startswith("id=vd0,file=/r.ext4") and "readonly=on" in drives[0]
    assert "readonly" not in drives[1]
    assert "mvm.rw=1" not in kernel_cmdline(cfg())


def test_accessible_rootfs_is_snapshot() -> None:
    c = cfg(drives=(Drive(Path("/r.ext4"), readonly=False, snapshot=True),))
    assert "snapshot=on" in opt(build_argv(c), "-drive")[0]
    assert "mvm.rw=1" in kernel_cmdline(c)


def test_ports_without_network_restrict_egress() -> None:
    argv = build_argv(cfg(ports=(PortForward(8080, 80),)))
    net = opt(argv, "-netdev")[0]
    assert "restrict=on" in net and "hostfwd=tcp:127.0.0.1:8080-:80" in net
    assert "mvm.net=1" in opt(argv, "-append")[0]
    assert "restrict=on" not in opt(build_argv(cfg(network=True)), "-netdev")[0]
    assert "-netdev" not in build_argv(cfg())


def test_fw_cfg_by_file_only() -> None:
    argv = build_argv(cfg(fw_cfg=(FwCfg("opt/io.systemd.credentials/X", Path("/run/vm1/c/X")),)))
    assert opt(argv, "-fw_cfg") == ["name=opt/io.systemd.credentials/X,file=/run/vm1/c/X"]
    assert "mvm.fwcfg=1" in opt(argv, "-append")[0]


def test_control_channels() -> None:
    argv = " ".join(build_argv(cfg()))
    for name in ("org.mvm.status", "org.mvm.control", "org.mvm.agent"):
        assert f"name={name}" in argv
    assert "logfile=/run/vm1/console.log" in argv
    assert "unix:/run/vm1/qmp.sock" in argv


def test_kernel_without_kaslr_gets_no_nokaslr() -> None:
    """A kernel without RANDOMIZE_BASE would pass `nokaslr` to init as an argument."""
    assert "nokaslr" in kernel_cmdline(cfg()).split()
    assert "nokaslr" not in kernel_cmdline(cfg(kaslr=False)).split()


def test_direct_boot_mounts_the_rootfs_from_the_kernel() -> None:
    line = kernel_cmdline(cfg(initramfs=None, init="/.mvm/init")).split()
    assert "root=/dev/vda" in line and "rootfstype=ext4" in line and "ro" in line
    assert "init=/.mvm/init" in line
    rw = kernel_cmdline(cfg(initramfs=None, drives=(Drive(Path("/r"), readonly=False),)))
    assert "rw" in rw.split() and "ro" not in rw.split()
    assert "-initrd" not in build_argv(cfg(initramfs=None))
    with_initrd = kernel_cmdline(cfg())
    assert "root=" not in with_initrd and "init=" not in with_initrd
    # an OCI image's init with an initramfs: the initramfs reads init= and switches to it
    oci = kernel_cmdline(cfg(init="/.mvm/init")).split()
    assert "init=/.mvm/init" in oci and not any(p.startswith("root=") for p in oci)


def test_tcg_translation_buffer_is_bounded_and_kvm_has_none() -> None:
    assert opt(build_argv(cfg(tb_size_mib=64)), "-accel") == ["tcg,tb-size=64"]
    assert opt(build_argv(cfg(tb_size_mib=None)), "-accel") == ["tcg"]
    assert opt(build_argv(cfg(accel="kvm", tb_size_mib=64)), "-accel") == ["kvm"]


def test_balloon_reports_free_pages_to_the_host() -> None:
    balloon = "virtio-balloon-device,free-page-reporting=on"
    assert balloon in opt(build_argv(cfg()), "-device")
    assert balloon not in opt(build_argv(cfg(balloon=False)), "-device")
    # it does not shift the disks: the guest's vda, vdb… follow spec.disks
    devs = opt(build_argv(cfg()), "-device")
    assert devs[0].startswith("virtio-blk-device,drive=vd0")
