"""The QEMU command line as a pure function of a ``MachineConfig``.

Fast settings come from docs/platform-facts.md: ``-M microvm`` with an RTC,
PVH entry into an uncompressed vmlinux, an uncompressed cpio initramfs, and
kernel arguments that skip calibration (``lpj``/``tsc_early_khz`` derived
from the host, never hard-coded).  Nothing secret is ever put here: files
holding secrets are referenced by path only (``/proc/PID/cmdline`` is
world-readable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FAST_CMDLINE = (
    "console=ttyS0 quiet loglevel=3 panic=-1 reboot=t tsc=reliable no_timer_check "
    "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd pci=off random.trust_cpu=on "
    "8250.nr_uarts=1 mitigations=off nokaslr init_on_alloc=0"
)


@dataclass(frozen=True)
class Drive:
    path: Path
    readonly: bool = True
    snapshot: bool = False  # writes go to a throw-away overlay; the file stays pristine
    fmt: str = "raw"


@dataclass(frozen=True)
class PortForward:
    host: int
    guest: int
    proto: str = "tcp"


@dataclass(frozen=True)
class FwCfg:
    name: str  # e.g. opt/io.systemd.credentials/DB_PASS (≤ 55 bytes)
    file: Path


@dataclass(frozen=True)
class MachineConfig:
    name: str
    kernel: Path
    initramfs: Path
    drives: tuple[Drive, ...]  # drives[0] is the rootfs (/dev/vda)
    run_dir: Path
    vcpus: int = 1
    memory_mib: int = 256
    accel: str = "tcg"
    tsc_khz: int | None = None
    network: bool = False
    ports: tuple[PortForward, ...] = ()
    fw_cfg: tuple[FwCfg, ...] = ()
    # SMBIOS type 11 OEM strings, one file per string (q35/pc only: -M microvm has no
    # SMBIOS, so mvm's QEMU backend delivers credentials by fw_cfg instead)
    smbios_oem: tuple[Path, ...] = ()
    cmdline_extra: tuple[str, ...] = field(default_factory=tuple)
    incoming_fd: int | None = None  # restore a snapshot from this inherited fd


def _opt(path: Path) -> str:
    """A path as a QEMU option value: a comma would end it, so double it."""
    return str(path).replace(",", ",,")


def kernel_cmdline(cfg: MachineConfig) -> str:
    parts = [FAST_CMDLINE]
    if cfg.tsc_khz:
        parts.append(f"lpj={cfg.tsc_khz * 4} tsc_early_khz={cfg.tsc_khz}")
    if not cfg.drives[0].readonly:
        parts.append("mvm.rw=1")
    if cfg.network or cfg.ports:
        parts.append("mvm.net=1")
    if cfg.fw_cfg:
        parts.append("mvm.fwcfg=1")
    parts.append(f"mvm.hostname={cfg.name}")
    parts.extend(cfg.cmdline_extra)
    return " ".join(parts)


def build_argv(cfg: MachineConfig, qemu: str = "qemu-system-x86_64") -> list[str]:
    """Return QEMU's argv for ``cfg`` (no side effects, unit-tested as data)."""
    rd = cfg.run_dir
    accel = "kvm" if cfg.accel == "kvm" else "tcg"
    argv = [
        qemu,
        "-name", f"mvm-{cfg.name},process=mvm-{cfg.name}",
        "-M", "microvm,isa-serial=on,rtc=on",
        "-accel", accel,
        *(["-cpu", "host"] if accel == "kvm" else []),
        "-smp", str(cfg.vcpus),
        "-m", f"{cfg.memory_mib}M",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", str(cfg.kernel),
        "-initrd", str(cfg.initramfs),
        "-append", kernel_cmdline(cfg),
        "-chardev", f"socket,id=con0,path={rd / 'console.sock'},server=on,wait=off,"
                    f"logfile={rd / 'console.log'},logappend=on",
        "-serial", "chardev:con0",
        "-qmp", f"unix:{rd / 'qmp.sock'},server=on,wait=off",
        "-pidfile", str(rd / "qemu.pid"),
    ]  # fmt: skip
    for i, d in enumerate(cfg.drives):
        opts = f"id=vd{i},file={_opt(d.path)},format={d.fmt},if=none"
        if d.readonly:
            opts += ",readonly=on"
        if d.snapshot:
            opts += ",snapshot=on"
        argv += ["-drive", opts, "-device", f"virtio-blk-device,drive=vd{i}"]
    argv += [
        "-device", "virtio-serial-device,max_ports=4",
        "-chardev", f"file,id=status,path={rd / 'status'}",
        "-device", "virtserialport,chardev=status,name=org.mvm.status",
        # a pipe (FIFOs control.in/.out), not a socket: the guest sees the port as
        # connected from boot, so its watcher blocks in read() instead of seeing EOF
        # until a host client connects (which made every `down` wait out its grace)
        "-chardev", f"pipe,id=control,path={rd / 'control'}",
        "-device", "virtserialport,chardev=control,name=org.mvm.control",
        "-chardev", f"socket,id=agent,path={rd / 'agent.sock'},server=on,wait=off",
        "-device", "virtserialport,chardev=agent,name=org.mvm.agent",
    ]  # fmt: skip
    if cfg.network or cfg.ports:
        fwd = "".join(f",hostfwd={p.proto}:127.0.0.1:{p.host}-:{p.guest}" for p in cfg.ports)
        restrict = "" if cfg.network else ",restrict=on"
        argv += ["-netdev", f"user,id=n0{restrict}{fwd}", "-device", "virtio-net-device,netdev=n0"]
    for fw in cfg.fw_cfg:
        argv += ["-fw_cfg", f"name={fw.name},file={_opt(fw.file)}"]
    if cfg.smbios_oem:
        argv += ["-smbios", "type=11" + "".join(f",path={_opt(p)}" for p in cfg.smbios_oem)]
    if cfg.incoming_fd is not None:
        argv += ["-incoming", f"fd:{cfg.incoming_fd}"]
    return argv
