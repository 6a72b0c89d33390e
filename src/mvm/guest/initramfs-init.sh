#!/bin/busybox sh
# mvm initramfs: load the modular virtio drivers, mount the rootfs, switch to it.
# Kept tiny: every command here runs under TCG on every boot.
B=/bin/busybox
$B mount -t devtmpfs dev /dev
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
read -r CMDLINE < /proc/cmdline
# boot trace (mvm.trace=1): stage timestamps from /proc/uptime, no fork when off
t() { :; }
case " $CMDLINE " in *" mvm.trace=1 "*) t() { read -r U < /proc/uptime; echo "mvm-trace ${U%% *} initramfs $1"; } ;; esac
t start
read -r MODS < /etc/modules.base
for m in $MODS; do $B insmod /lib/modules/$m.ko; done
# q35 (mvm.pci=1): the devices are virtio-pci, not virtio-mmio
case " $CMDLINE " in *" mvm.pci=1 "*) read -r MODS < /etc/modules.pci; for m in $MODS; do $B insmod /lib/modules/$m.ko; done ;; esac
case " $CMDLINE " in *" mvm.net=1 "*) read -r MODS < /etc/modules.net; for m in $MODS; do $B insmod /lib/modules/$m.ko; done ;; esac
case " $CMDLINE " in *" mvm.fwcfg=1 "*) read -r MODS < /etc/modules.fwcfg; for m in $MODS; do $B insmod /lib/modules/$m.ko; done ;; esac
t modules-loaded
RO=ro
INIT=/init  # an OCI image's rootfs has mvm's tools under /.mvm (init=/.mvm/init)
for kv in $CMDLINE; do
    case "$kv" in
        mvm.rw=1) RO=rw ;;
        init=/*) INIT="${kv#init=}" ;;
    esac
done
if ! $B mount -t ext4 -o $RO,noatime /dev/vda /newroot; then
    echo "mvm: cannot mount the rootfs (/dev/vda)" >&2
    $B reboot -f
fi
t rootfs-mounted
# The build copies the same static busybox into both images: lend the rootfs
# ours, already in memory, instead of reading 2 MB through virtio-blk again.
TOOLS="${INIT%/*}"  # "" for /init, /.mvm for /.mvm/init
[ -f "/newroot$TOOLS/bin/busybox" ] && $B mount --bind /bin/busybox "/newroot$TOOLS/bin/busybox"
# init = "systemd" images carry this marker: systemd is PID 1 (it finds /dev, /proc
# and /sys mounted, and mounts the rest itself).  Before the moves: this reads /sys.
if [ -e /newroot/etc/mvm/systemd/finish.sh ]; then
    INIT=/lib/systemd/systemd
    # Every credential for systemd, including those systemd 252 cannot read itself
    # (mvm's fw_cfg bundle: long names, many or large values): imported here into
    # /run/credentials/@system (ramfs, as systemd's own: never swapped, "secure"), and
    # PID 1, finding $CREDENTIALS_DIRECTORY set, takes them as the imported ones.
    # systemd keeps a /run that is already mounted.
    . /etc/credentials-unpack.sh
    # the guest-data drive (mvm.guestdata=vdX: no fw_cfg, e.g. Firecracker), checked and
    # unpacked into this RAM-only root, imported below, then wiped
    if mvm_guestdata_dev "$CMDLINE"; then
        MVM_GUESTDATA=/guestdata
        $B mkdir -m 0700 $MVM_GUESTDATA && mvm_guestdata_unpack "/dev/$_mvm_gd" $MVM_GUESTDATA ||
            echo "mvm: cannot read the guest data on /dev/$_mvm_gd" >&2
    fi
    if mvm_have_credentials; then
        D=/newroot/run/credentials/@system
        $B mount -t tmpfs -o mode=0755,nosuid,nodev run /newroot/run &&
            $B mkdir -p $D && $B mount -t ramfs -o mode=0700 credentials $D &&
            mvm_unpack_credentials $D && $B mount -o remount,ro $D &&
            export CREDENTIALS_DIRECTORY=/run/credentials/@system
    fi
    [ -n "$MVM_GUESTDATA" ] && $B rm -rf $MVM_GUESTDATA
    t credentials-imported
fi
$B mount --move /dev /newroot/dev
$B mount --move /proc /newroot/proc
$B mount --move /sys /newroot/sys
exec $B switch_root /newroot "$INIT"
