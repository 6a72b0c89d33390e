#!/bin/sh
# mvm-setup.service (systemd guests, as root, before the entrypoint): what busybox
# /init does before its entrypoint, minus what systemd does itself (mounts from
# /etc/fstab, credentials: systemd imports fw_cfg and SMBIOS type 11 natively).
# Hostname, network, drives (drives.sh: the same script busybox guests source),
# then the host channels: virtio_console, the ports as /run/mvm/port-{status,
# control,agent}.  When a drive cannot be mounted the VM reports exit 1 and
# powers off without starting the entrypoint, as busybox guests do.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
. /etc/mvm/spec.sh
read -r CMDLINE < /proc/cmdline
mkdir -p /run/mvm
NET=0
for kv in $CMDLINE; do
    case "$kv" in
        mvm.hostname=*) echo "${kv#*=}" > /proc/sys/kernel/hostname ;;
        mvm.net=1) NET=1 ;;
    esac
done
ip link set lo up
if [ "$NET" = 1 ]; then
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
fi
t() { :; }
. /etc/mvm/init.d/10-drives.sh
# mvm.channels=vsock (Firecracker, docs/firecracker.md): no ports to find; the agent
# unit reads its address from channels.env, control.sh and finish.sh theirs from
# /run/mvm/{control,status}-addr (mvm-vsock relays them)
. /etc/mvm/lib/channels.sh
mvm_channels_transport "$CMDLINE"
late=/etc/mvm/modules.late tries=300
if [ "$MVM_CHANNELS" = vsock ]; then
    late=/etc/mvm/modules.vsock tries=0
    echo "MVM_AGENT_PORT=vsock:$MVM_PORT_AGENT" > /run/mvm/channels.env
    echo "vsock:$MVM_PORT_CONTROL" > /run/mvm/control-addr
    echo "vsock:$MVM_PORT_STATUS" > /run/mvm/status-addr
fi
for m in $(cat "$late" 2>/dev/null); do insmod "/lib/modules/mvm/$m.ko" 2>/dev/null; done
# the host announces ports asynchronously after the driver loads: wait <= 3 s
while [ $tries -gt 0 ]; do
    n=0
    for p in /sys/class/virtio-ports/*; do
        [ -r "$p/name" ] && [ -c "/dev/${p##*/}" ] || continue
        read -r name < "$p/name"
        case "$name" in
            org.mvm.status) ln -sf "/dev/${p##*/}" /run/mvm/port-status; n=$((n + 1)) ;;
            org.mvm.control) ln -sf "/dev/${p##*/}" /run/mvm/port-control; n=$((n + 1)) ;;
            org.mvm.agent) ln -sf "/dev/${p##*/}" /run/mvm/port-agent; n=$((n + 1))
                chown "$MVM_AGENT_UID" "/dev/${p##*/}"; chmod 0600 "/dev/${p##*/}" ;;
        esac
    done
    [ $n -ge 3 ] && break
    tries=$((tries - 1)); [ $tries -le 0 ] && break
    usleep 10000
done
if [ "$MVM_KIND" = failed ]; then
    /etc/mvm/systemd/finish.sh report 1
    exit 1
fi
exit 0
