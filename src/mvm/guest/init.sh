#!/bin/sh
# mvm PID 1 (busybox sh).  Stays uid 0 (the kernel requires PID 1 to live),
# starts the agent stub under the agent uid, runs the entrypoint under the
# entrypoint uid with no-new-privs, supervises services, then reports the
# entrypoint's exit status on the org.mvm.status port and powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umask 022
. /etc/mvm/spec.sh
read -r CMDLINE < /proc/cmdline
arg() { for kv in $CMDLINE; do case "$kv" in "$1="*) echo "${kv#*=}"; return;; esac; done; }

mount -t tmpfs -o mode=0755,nosuid,nodev run /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmp /tmp
mkdir -p /dev/pts /dev/shm /run/mvm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
if [ "$MVM_ACCESSIBLE" = 0 ]; then
    # sealed: the rootfs is read-only; give the entrypoint a writable home
    mount -t tmpfs -o mode=0755,nosuid,nodev home /home
    mkdir -p "$MVM_HOME_DIR" && chown "$MVM_UID:$MVM_UID" "$MVM_HOME_DIR"
fi
hostname "$(arg mvm.hostname)" 2>/dev/null
ip link set lo up 2>/dev/null
if [ "$(arg mvm.net)" = 1 ]; then
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
fi

port() { for p in /sys/class/virtio-ports/*; do [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && echo "/dev/${p##*/}" && return; done; }
STATUS=$(port org.mvm.status)
CONTROL=$(port org.mvm.control)
AGENT=$(port org.mvm.agent)

# extension point: later features (drives, credentials) drop scripts here
for f in /etc/mvm/init.d/*.sh; do [ -r "$f" ] && . "$f"; done

if [ -n "$AGENT" ]; then chown "$MVM_AGENT_UID" "$AGENT"; chmod 0600 "$AGENT"; fi
setpriv --nnp start-stop-daemon -S -b -q -p /run/mvm/none -c "$MVM_AGENT_UID:$MVM_AGENT_UID" \
    -x /usr/local/bin/mvm-guest-agent -- "$AGENT"

# run_as SCRIPT: run a launcher under the entrypoint uid (no-new-privs when rootless)
run_as() {
    if [ "$MVM_UID" = 0 ]; then "$@"; else
        setpriv --nnp start-stop-daemon -S -q -p /run/mvm/none -c "$MVM_UID:$MVM_UID" -x "$1" -- "$@"
    fi
}

# supervise NAME POLICY: run /etc/mvm/run/svc-NAME with its restart policy
supervise() {
    while :; do
        run_as /etc/mvm/run/svc-"$1" < "$MVM_STDIN"
        rc=$?
        case "$2" in
            never) return $rc ;;
            on-failure) [ $rc = 0 ] && return 0 ;;
        esac
        echo "mvm: service $1 exited with status $rc, restarting" >&2
        sleep 1
    done
}

finish() {
    [ -n "$STATUS" ] && echo "exit $1" > "$STATUS"
    sync
    reboot -f
}

if [ -n "$CONTROL" ]; then
    (
        while read -r req; do
            case "$req" in
                poweroff)
                    kill -TERM -1 2>/dev/null; sleep 0.2; sync
                    [ -n "$STATUS" ] && echo "exit 143" > "$STATUS"
                    reboot -f ;;
            esac
        done < "$CONTROL"
    ) &
fi

for s in $MVM_AUX_SERVICES; do supervise "${s%%:*}" "${s#*:}" & done

export HOME="$MVM_HOME_DIR" USER="$MVM_USER" LOGNAME="$MVM_USER"
case "$MVM_KIND" in
    shell)
        export TERM="${TERM:-linux}"
        if [ "$MVM_UID" = 0 ]; then setsid cttyhack /etc/mvm/run/entrypoint
        else setsid cttyhack setpriv --nnp start-stop-daemon -S -q -p /run/mvm/none \
            -c "$MVM_UID:$MVM_UID" -x /etc/mvm/run/entrypoint; fi
        finish $? ;;
    command)
        run_as /etc/mvm/run/entrypoint < "$MVM_STDIN"
        finish $? ;;
    services)
        pids=""
        for s in $MVM_SERVICES; do supervise "${s%%:*}" "${s#*:}" & pids="$pids $!"; done
        rc=0
        for p in $pids; do wait "$p"; r=$?; [ $r != 0 ] && rc=$r; done
        finish $rc ;;
esac
finish 1
