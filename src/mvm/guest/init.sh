#!/bin/sh
# mvm PID 1 (busybox sh).  Stays uid 0 (the kernel requires PID 1 to live),
# runs the entrypoint under the entrypoint uid with no-new-privs, supervises
# services, starts the guest agent (it drops to the agent uid itself), then reports the
# entrypoint's exit status on the org.mvm.status port and powers off.
#
# Boot time matters (every exec costs milliseconds under TCG): mounts come
# from one `mount -a`, parsing uses shell builtins, and whatever the
# entrypoint does not need (virtio_console, agent, control port) is set up
# after the entrypoint has started.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umask 022
# booted straight from the rootfs (built-in drivers, no initramfs): the kernel
# mounted only /dev (DEVTMPFS_MOUNT); proc and sysfs are ours to mount
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/kernel ] || mount -t sysfs sys /sys
. /etc/mvm/spec.sh
. /etc/mvm/lib/channels.sh  # virtio-serial or vsock (mvm.channels=vsock: Firecracker)
[ -r /etc/mvm/rootops.sh ] && . /etc/mvm/rootops.sh  # the control port's root operations
read -r CMDLINE < /proc/cmdline
mvm_channels_transport "$CMDLINE"
NET=0
t() { :; }
case " $CMDLINE " in *" mvm.trace=1 "*) t() { read -r U < /proc/uptime; echo "mvm-trace ${U%% *} init $1"; } ;; esac
t start
for kv in $CMDLINE; do
    case "$kv" in
        mvm.hostname=*) echo "${kv#*=}" > /proc/sys/kernel/hostname ;;
        mvm.net=1) NET=1 ;;
    esac
done

mkdir -p /dev/pts /dev/shm
mount -a -T /etc/mvm/fstab  # rendered from the spec: /run, /tmp, /dev/pts, /dev/shm, sealed home
mkdir -p /run/mvm /run/mvm/svc
if [ "$NET" = 1 ]; then
    ip link set lo up
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
else
    ip link set lo up &
fi

t mounted
# extension point: later features (drives, credentials) drop scripts here
for f in /etc/mvm/init.d/*.sh; do [ -r "$f" ] && . "$f"; done

# run_as LAUNCHER: run a launcher under the entrypoint uid (no-new-privs when rootless)
run_as() {
    if [ "$MVM_UID" = 0 ]; then "$@"; else
        setpriv --nnp start-stop-daemon -S -q -p /run/mvm/none -c "$MVM_UID:$MVM_UID" -x "$1" -- "$@"
    fi
}

# svc_state NAME STATE RESTARTS PID [RC]: /run/mvm/svc/NAME, which the guest agent
# reports (`mvmctl status`); written to a temporary name and renamed (never half-read)
svc_state() {
    printf 'state=%s\nrestarts=%s\npid=%s\nrc=%s\nstarted=%s\n' "$2" "$3" "$4" "$5" "$t0" \
        > "/run/mvm/svc/.$1" && mv -f "/run/mvm/svc/.$1" "/run/mvm/svc/$1"
}

# supervise NAME POLICY: run /etc/mvm/run/svc-NAME with its restart policy.  A service
# that keeps failing is restarted after 1, 2, 4 … 30 s (capped); one that ran for a
# minute before failing starts again from 1 s.
supervise() {
    delay=1 restarts=0
    while :; do
        read -r t0 _ < /proc/uptime
        run_as /etc/mvm/run/svc-"$1" < "$MVM_STDIN" &
        svc_state "$1" running $restarts $!
        wait $!
        rc=$?
        case "$2" in
            never) svc_state "$1" exited $restarts 0 $rc; return $rc ;;
            on-failure) [ $rc = 0 ] && { svc_state "$1" exited $restarts 0 $rc; return 0; } ;;
        esac
        svc_state "$1" restarting $restarts 0 $rc
        read -r t1 _ < /proc/uptime
        [ $(( ${t1%.*} - ${t0%.*} )) -ge 60 ] && delay=1
        echo "mvm: service $1 exited with status $rc, restarting in ${delay}s" >&2
        sleep "$delay"
        delay=$((delay * 2)); [ $delay -gt 30 ] && delay=30
        restarts=$((restarts + 1))
    done
}

STATUS=""
# others: is any process left but PID 1 and kernel threads (no exe)?  Builtins only.
others() {
    for d in /proc/[0-9]*; do
        [ "${d#/proc/}" = 1 ] && continue
        [ -e "$d/exe" ] && return 0
    done
    return 1
}
# finish RC: the one way down, for an ended entrypoint and for the host's `down`
# (which sends "poweroff" on the control port; the watcher signals PID 1).
# Every process gets SIGTERM and up to 5 s, then SIGKILL; data volumes are
# synced and remounted read-only before QEMU is told to exit.
finish() {
    trap '' TERM
    kill -TERM -1 2>/dev/null
    n=50
    while [ $n -gt 0 ] && others; do usleep 100000; n=$((n - 1)); done
    kill -KILL -1 2>/dev/null
    sync
    while read -r _dev _mnt _fs _opts _rest; do
        case "$_opts" in rw,*) case "$_dev" in /dev/vd[d-z]) mount -o remount,ro "$_mnt" ;; esac ;; esac
    done < /proc/mounts
    sync
    [ -n "$STATUS" ] && mvm_report_status "$STATUS" "$1"
    reboot -f
}
STOPPING=0
trap 'STOPPING=1' TERM

t before-entrypoint
export HOME="$MVM_HOME_DIR" USER="$MVM_USER" LOGNAME="$MVM_USER"
# start_workload: the aux services and the entrypoint; their pids in $AUX and $pids
start_workload() {
AUX=""
for s in $MVM_AUX_SERVICES; do supervise "${s%%:*}" "${s#*:}" & AUX="$AUX $!"; done
pids=""
case "$MVM_KIND" in
    shell)
        export TERM="${TERM:-linux}"
        if [ "$MVM_UID" = 0 ]; then setsid cttyhack /etc/mvm/run/entrypoint &
        else setsid cttyhack setpriv --nnp start-stop-daemon -S -q -p /run/mvm/none \
            -c "$MVM_UID:$MVM_UID" -x /etc/mvm/run/entrypoint & fi
        pids=$! ;;
    command)
        run_as /etc/mvm/run/entrypoint < "$MVM_STDIN" &
        pids=$! ;;
    services)
        for s in $MVM_SERVICES; do supervise "${s%%:*}" "${s#*:}" & pids="$pids $!"; done ;;
    failed)  # an init.d script could not set up what the entrypoint needs (it said why)
        false & pids=$! ;;
esac
}
# `restart` on the control port (after a snapshot restore: services reread config and
# secrets) reaches PID 1 as SIGUSR1; the main loop below stops and starts the workload
RESTART=0
trap 'RESTART=1' USR1
start_workload

# --- after the entrypoint started: channels to the host, at low priority so
# the entrypoint keeps the CPU; PID 1 reads the port paths back before it reports.
channels() {
    late=/etc/mvm/modules.late; [ "$MVM_CHANNELS" = vsock ] && late=/etc/mvm/modules.vsock
    for m in $(cat "$late" 2>/dev/null); do insmod "/lib/modules/mvm/$m.ko" 2>/dev/null; done
    STATUS="" CONTROL="" AGENT=""
    tries=200  # the host announces ports asynchronously after the driver loads: wait ≤ 2 s
    if [ "$MVM_CHANNELS" = vsock ]; then
        # no ports to find: the agent listens itself; control requests come through
        # mvm-vsock on two FIFOs (requests in, answers out; started by the watcher
        # below, at its priority); status connects at the end
        STATUS=vsock:$MVM_PORT_STATUS AGENT=vsock:$MVM_PORT_AGENT tries=0
        mkfifo -m 0600 /run/mvm/control.in /run/mvm/control.out && CONTROL=/run/mvm/control.in
    fi
    while [ $tries -gt 0 ] && { [ -z "$STATUS" ] || [ -z "$CONTROL" ] || [ -z "$AGENT" ]; }; do
        for p in /sys/class/virtio-ports/*; do
            [ -r "$p/name" ] && [ -c "/dev/${p##*/}" ] || continue
            read -r n < "$p/name"
            case "$n" in
                org.mvm.status) STATUS="/dev/${p##*/}" ;;
                org.mvm.control) CONTROL="/dev/${p##*/}" ;;
                org.mvm.agent) AGENT="/dev/${p##*/}" ;;
            esac
        done
        tries=$((tries - 1))
        [ $tries -le 0 ] && break
        [ -n "$STATUS" ] && [ -n "$CONTROL" ] && [ -n "$AGENT" ] || usleep 10000
    done
    echo "STATUS=$STATUS" > /run/mvm/ports
    # control_op VERB A1 A2: run one request, answer on the port (fd 7)
    control_op() {
        case "$1" in
            ping) r=0; out="" ;;
            restart)
                rm -f /run/mvm/restarted
                kill -USR1 1
                n=600; while [ ! -e /run/mvm/restarted ] && [ $n -gt 0 ]; do usleep 50000; n=$((n - 1)); done
                if [ -e /run/mvm/restarted ]; then r=0; out=""; else r=1; out="restart timed out"; fi ;;
            *)  # in this shell, output to a file: no $(…) fork (tens of ms under TCG)
                mvm_op_"$1" "$2" "$3" > /run/mvm/op.out 2>&1 3>&- 7>&-; r=$?
                out=""; read -r out < /run/mvm/op.out ;;
        esac
        if [ $r = 0 ]; then echo "$id ok" >&7; else echo "$id err ${out:-failed}" >&7; fi
    }
    if [ -n "$CONTROL" ]; then
        # the host end is a pipe that is always connected: read() blocks until a request
        (
            # verbs run at normal priority (the channels subshell runs at nice 19)
            read -r _me _ < /proc/self/stat; renice 0 -p "$_me" >/dev/null 2>&1
            if [ "$MVM_CHANNELS" = vsock ]; then
                "$MVM_VSOCK" listen "vsock:$MVM_PORT_CONTROL" 0<> /run/mvm/control.out \
                    1<> /run/mvm/control.in &
            fi
            # the reseeder waits on two FIFOs (opened read-write: nothing blocks)
            if mkfifo -m 0600 /run/mvm/reseed.in /run/mvm/reseed.out 2>/dev/null; then
                /etc/mvm/bin/mvm-reseed 0<> /run/mvm/reseed.in 1<> /run/mvm/reseed.out 3>&- &
                exec 4<> /run/mvm/reseed.in 5<> /run/mvm/reseed.out && MVM_RESEEDER=1
            fi
            while :; do
                # requests: "poweroff", or "VERB ID ARGS…" answered by "ID ok" or
                # "ID err REASON" (docs/snapshots.md); one open, read and write
                # fd 3 requests, fd 7 answers: the same port, or (vsock) mvm-vsock's FIFOs
                exec 3<> "$CONTROL"
                if [ "$MVM_CHANNELS" = vsock ]; then exec 7<> /run/mvm/control.out; else exec 7>&3; fi
                while read -r verb id a1 a2 _rest <&3; do
                    case "$verb" in
                        poweroff) kill -TERM 1; continue ;;
                        ping|remount|identity|reseed|restart) ;;
                        *) continue ;;
                    esac
                    case "$id" in ''|*[!A-Za-z0-9]*) continue ;; esac
                    control_op "$verb" "$a1" "$a2" < /dev/null
                done
                exec 3>&- 7>&-
                usleep 200000  # only if the port was ever closed under us
            done
        ) &
    fi
    if [ -n "$AGENT" ]; then
        case "$AGENT" in /dev/*) chown "$MVM_AGENT_UID" "$AGENT"; chmod 0600 "$AGENT" ;; esac
        : > /run/mvm/agent.log; chown "$MVM_AGENT_UID" /run/mvm/agent.log
        # started as root with no-new-privs: the agent drops to the agent uid keeping only
        # CAP_SETUID/SETGID/KILL (to run and signal commands as the entrypoint uid); a sealed image's
        # agent (-s) has no exec, console or file service at all
        sealed=-s; [ "$MVM_ACCESSIBLE" = 1 ] && sealed=""
        setpriv --nnp start-stop-daemon -S -b -q -p /run/mvm/none -x /usr/local/bin/mvm-guest-agent \
            -- -a "$MVM_AGENT_UID" -e "$MVM_UID" -h "$MVM_HOME_DIR" $sealed "$AGENT"
    fi
}
# the subshell lowers its own priority (/proc/self is the subshell: `read` is a builtin)
( read -r _me _ < /proc/self/stat; renice -n 19 -p "$_me" >/dev/null 2>&1; channels ) &
CHANNELS=$!

t channels-ready
while :; do
    rc=0
    for p in $pids; do
        while :; do
            wait "$p"; r=$?
            # a trapped SIGTERM interrupts `wait` (status > 128): stop everything
            [ "$STOPPING" = 1 ] && break 3
            [ "$RESTART" = 1 ] && break 2
            kill -0 "$p" 2>/dev/null || break
        done
        [ $r != 0 ] && rc=$r
    done
    [ "$RESTART" = 1 ] || break
    RESTART=0
    mvm_stop_tree $pids $AUX
    for p in $pids $AUX; do wait "$p" 2>/dev/null; done
    [ -d /run/credentials/@system ] && export CREDENTIALS_DIRECTORY=/run/credentials/@system
    start_workload
    : > /run/mvm/restarted
done
wait "$CHANNELS"
[ -r /run/mvm/ports ] && . /run/mvm/ports
[ "$STOPPING" = 1 ] && rc=143
finish $rc
