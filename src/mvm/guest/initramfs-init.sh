#!/bin/busybox sh
# mvm initramfs: load the modular virtio drivers, mount the rootfs, switch to it.
# Kept tiny: every command here runs under TCG on every boot.
B=/bin/busybox
$B mount -t devtmpfs dev /dev
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
read -r CMDLINE < /proc/cmdline
for m in $(cat /etc/modules.base); do $B insmod /lib/modules/$m.ko; done
case " $CMDLINE " in *" mvm.net=1 "*) for m in $(cat /etc/modules.net); do $B insmod /lib/modules/$m.ko; done ;; esac
case " $CMDLINE " in *" mvm.fwcfg=1 "*) for m in $(cat /etc/modules.fwcfg); do $B insmod /lib/modules/$m.ko; done ;; esac
RO=ro
case " $CMDLINE " in *" mvm.rw=1 "*) RO=rw ;; esac
if ! $B mount -t ext4 -o $RO,noatime /dev/vda /newroot; then
    echo "mvm: cannot mount the rootfs (/dev/vda)" >&2
    $B reboot -f
fi
$B mount --move /dev /newroot/dev
$B mount --move /proc /newroot/proc
$B mount --move /sys /newroot/sys
exec $B switch_root /newroot /init
