"""The QEMU command line as a pure function of (MachineSpec, QEMU options, guest data).

Fast settings come from docs/platform-facts.md: ``-M microvm`` with an RTC,
PVH entry into an uncompressed vmlinux, an uncompressed cpio initramfs, and
kernel arguments that skip calibration (``lpj``/``tsc_early_khz`` derived
from the host, never hard-coded).  Nothing secret is ever put here: files
holding secrets are referenced by path only (``/proc/PID/cmdline`` is
world-readable).  Everything QEMU-specific about a VM's devices is decided
here: virtio-mmio drive order (the guest's vda, vdb… follow ``spec.disks``),
the virtio-serial ports of the host channels, slirp networking, fw_cfg.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from mvm.backends.qemu.guestdata import GuestData
from mvm.backends.qemu.snapshot import ram_backend
from mvm.backends.spec import MachineSpec

FAST_CMDLINE = (
    "console=ttyS0 quiet loglevel=3 panic=-1 reboot=t tsc=reliable no_timer_check "
    "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd pci=off random.trust_cpu=on "
    "8250.nr_uarts=1 mitigations=off init_on_alloc=0"
)
# the rootfs is always the first virtio-blk device (disks[0])
ROOT_DEVICE = "/dev/vda"
QEMU = "qemu-system-x86_64"
MACHINE = "microvm,isa-serial=on,rtc=on"
NETDEV = "n0"  # the user-network backend's id (hostfwd_add at run time names it)
# the virtio-serial port names the guest's /init looks for (see guest/init.sh)
NO_DATA = GuestData()
PORT_NAMES = {"status": "org.mvm.status", "control": "org.mvm.control", "agent": "org.mvm.agent"}


# TCG translation buffer (MiB).  QEMU's default reserves up to 1 GiB and an idle
# guest had touched ≈45 MB of it; a bounded buffer caps that per VM (docs/kernel.md
# has the boot-time and RSS measurements behind the value)
TB_SIZE_MIB = 32


def accel_arg(accel: str, tb_size_mib: int | None = TB_SIZE_MIB) -> str:
    """``-accel``'s value: TCG gets a bounded translation buffer; KVM has none."""
    if accel == "kvm":
        return "kvm"
    return f"tcg,tb-size={tb_size_mib}" if tb_size_mib else "tcg"


@dataclass(frozen=True)
class QemuOptions:
    """What QEMU needs beyond the neutral spec: host facts and the accelerator."""

    accel: str = "tcg"
    tsc_khz: int | None = None
    qemu: str = QEMU
    incoming_fd: int | None = None  # restore a snapshot from this inherited fd
    tb_size_mib: int | None = TB_SIZE_MIB  # TCG only; None: QEMU's default
    # virtio-balloon with free page reporting: pages the guest frees go back to the
    # host (the guest kernel needs VIRTIO_BALLOON + PAGE_REPORTING)
    balloon: bool = True
    # guest RAM in a file (snapshots, backends/qemu/snapshot.py): shared for a VM being
    # snapshotted (RAM written to the file), private for a clone (copy-on-write mapping)
    mem_path: Path | None = None
    mem_share: bool = False
    mem_object: bool = False  # anonymous RAM, but as a memory object (a fork of a clone)


def _opt(path: Path) -> str:
    """A path as a QEMU option value: a comma would end it, so double it."""
    return str(path).replace(",", ",,")


def kernel_cmdline(spec: MachineSpec, opts: QemuOptions, data: GuestData = NO_DATA) -> str:
    parts = [FAST_CMDLINE]
    if spec.kaslr:
        parts.append("nokaslr")
    if spec.initramfs is None:
        # direct boot (built-in drivers): the kernel mounts the rootfs and runs init
        mode = "ro" if spec.rootfs.readonly else "rw"
        parts.append(f"root={ROOT_DEVICE} rootfstype=ext4 {mode} init={spec.init}")
    elif spec.init != "/init":  # the initramfs switches to it (an OCI image's /.mvm/init)
        parts.append(f"init={spec.init}")
    if opts.tsc_khz:
        parts.append(f"lpj={opts.tsc_khz * 4} tsc_early_khz={opts.tsc_khz}")
    if not spec.rootfs.readonly:
        parts.append("mvm.rw=1")
    if spec.network.enabled:
        parts.append("mvm.net=1")
    if data.fw_cfg:
        parts.append("mvm.fwcfg=1")
    if spec.machine == "q35":  # PCI devices: virtio-pci instead of virtio-mmio
        parts[0] = parts[0].replace(" pci=off", "")
        parts.append("mvm.pci=1")
    parts.append(f"mvm.hostname={spec.name}")
    parts.extend(spec.cmdline)
    return " ".join(parts)


def build_argv(spec: MachineSpec, opts: QemuOptions, data: GuestData = NO_DATA) -> list[str]:
    """Return QEMU's argv (no side effects, unit-tested as data)."""
    rd = spec.run_dir
    accel = "kvm" if opts.accel == "kvm" else "tcg"
    q35 = spec.machine == "q35"
    bus = "pci" if q35 else "device"  # virtio-blk-pci / virtio-blk-device (virtio-mmio)
    argv = [
        opts.qemu,
        "-name", f"mvm-{spec.name},process=mvm-{spec.name}",
        "-M", "q35" if q35 else MACHINE,
        # qboot: no SeaBIOS banner on the console, and faster; it still hands QEMU's
        # SMBIOS tables to the guest
        *(["-bios", "qboot.rom"] if q35 else []),
        "-accel", accel_arg(accel, opts.tb_size_mib),
        *(["-cpu", "host"] if accel == "kvm" else []),
        "-smp", str(spec.vcpus),
        "-m", f"{spec.memory_mib}M",
        *(ram_backend(opts.mem_path, spec.memory_mib, share=opts.mem_share)
          if opts.mem_path is not None else []),
        *(["-object", f"memory-backend-ram,id=mem,size={spec.memory_mib}M",
           "-machine", "memory-backend=mem"] if opts.mem_object and opts.mem_path is None else []),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", str(spec.kernel),
        *(["-initrd", str(spec.initramfs)] if spec.initramfs else []),
        "-append", kernel_cmdline(spec, opts, data),
        "-chardev", f"socket,id=con0,path={rd / 'console.sock'},server=on,wait=off,"
                    f"logfile={rd / 'console.log'},logappend=on",
        "-serial", "chardev:con0",
        # two monitors: one for the Machine that launched the VM, one for everyone else
        # (`ls`, `down` from another terminal) — a QMP socket serves one client at a time
        "-qmp", f"unix:{rd / 'qmp.sock'},server=on,wait=off",
        "-qmp", f"unix:{rd / 'qmp-ctl.sock'},server=on,wait=off",
        "-pidfile", str(rd / "qemu.pid"),
    ]  # fmt: skip
    for i, d in enumerate(spec.disks):
        opts_s = f"id=vd{i},file={_opt(d.path)},format=raw,if=none"
        if d.readonly:
            opts_s += ",readonly=on"
        if d.ephemeral:
            opts_s += ",snapshot=on"
        argv += ["-drive", opts_s, "-device", f"virtio-blk-{bus},drive=vd{i}"]
    argv += [
        "-device", f"virtio-serial-{bus},max_ports=4",
        "-chardev", f"file,id=status,path={rd / 'status'}",
        "-device", f"virtserialport,chardev=status,name={PORT_NAMES['status']}",
        # a pipe (FIFOs control.in/.out), not a socket: the guest sees the port as
        # connected from boot, so its watcher blocks in read() instead of seeing EOF
        # until a host client connects (which made every `down` wait out its grace)
        "-chardev", f"pipe,id=control,path={rd / 'control'}",
        "-device", f"virtserialport,chardev=control,name={PORT_NAMES['control']}",
        "-chardev", f"socket,id=agent,path={rd / 'agent.sock'},server=on,wait=off",
        "-device", f"virtserialport,chardev=agent,name={PORT_NAMES['agent']}",
    ]  # fmt: skip
    if opts.balloon:
        argv += ["-device", "virtio-balloon-device,free-page-reporting=on"]
    net = spec.network
    if net.enabled:
        fwd = "".join(f",hostfwd={p.proto}:{p.address}:{p.host}-:{p.guest}" for p in net.forwards)
        # guest forwards: QEMU runs the command per connection (argv parsed shell-like,
        # no shell); commas are doubled for QEMU's option parser
        fwd += "".join(
            f",guestfwd=tcp:{net.guest_ip}:{g.port}-cmd:{shlex.join(g.command).replace(',', ',,')}"
            for g in net.guest_forwards
        )
        restrict = "" if net.egress else ",restrict=on"
        argv += ["-netdev", f"user,id={NETDEV}{restrict}{fwd}",
                 "-device", f"virtio-net-{bus},netdev={NETDEV}"]  # fmt: skip
    for fw in data.fw_cfg:
        argv += ["-fw_cfg", f"name={fw.name},file={_opt(fw.file)}"]
    if data.smbios:  # type 11 OEM strings, one path= per string (never value=: argv is public)
        argv += ["-smbios", "type=11" + "".join(f",path={_opt(p)}" for p in data.smbios)]
    if opts.incoming_fd is not None:
        # deferred: capabilities (x-ignore-shared) are set over QMP first, then
        # migrate-incoming fd:N reads the inherited state file (backends/qemu/snapshot.py)
        argv += ["-incoming", "defer"]
    return argv
