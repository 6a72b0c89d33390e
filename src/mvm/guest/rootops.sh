# mvm root operations: what a restored (or forked) guest needs from root.
# Sourced by /init (PID 1) at boot: functions only, no side effects.  The
# control-port watcher in /init calls them for the host's requests (see
# docs/snapshots.md for the protocol); the guest agent may forward its
# remount/restart/identity/reseed verbs to the same functions.
#
#   mvm_op_remount DRIVES   DRIVES is mvm.drives= syntax (vdb:config:/mnt/config,…)
#                           or "-" for none.  Unmounts the config/secrets drives and
#                           the credentials tmpfs, re-probes the virtio-blk devices
#                           (the kernel forgets their cached size and pages) and the
#                           fw_cfg device (its file directory is re-read), then mounts
#                           and unpacks what the host attached now.
#   mvm_op_identity HOSTNAME MACHINE_ID
#   mvm_op_reseed HEX       64-512 hex digits: credited to the entropy pool and the
#                           CRNG reseeded at once (mvm-reseed: RNDADDENTROPY +
#                           RNDRESEEDCRNG), so clones of one snapshot diverge.
#   restart                 handled by PID 1 itself (SIGUSR1; see init.sh).
# Every function prints a one-line reason on failure and returns non-zero.

# _mvm_virtio DEV: the virtio device name (virtioN) behind /dev/DEV
_mvm_virtio() {
    _mvm_l=$(readlink "/sys/block/$1/device" 2>/dev/null) || return 1
    echo "${_mvm_l##*/}"
}

mvm_op_remount() {
    case "$1" in
        -) _mvm_new="" ;;
        *[!A-Za-z0-9:,/._@+-]*|'') echo "bad drive list"; return 1 ;;
        *) _mvm_new=$1 ;;
    esac
    # 1. nothing of the old config/secrets/credentials stays mounted
    while read -r _mvm_dev _mvm_mnt _mvm_rest; do
        case "$_mvm_dev" in /dev/vdb|/dev/vdc) umount "$_mvm_mnt" || { echo "cannot unmount $_mvm_mnt"; return 1; } ;; esac
    done < /proc/mounts
    if grep -q ' /run/credentials/@system ' /proc/mounts; then
        umount /run/credentials/@system || { echo "cannot unmount the credentials"; return 1; }
    fi
    # 2. re-probe the drives: a new gendisk reads the new capacity, the old pages go
    for _mvm_d in vdb vdc; do
        _mvm_v=$(_mvm_virtio "$_mvm_d") || continue
        echo "$_mvm_v" > /sys/bus/virtio/drivers/virtio_blk/unbind || { echo "cannot detach $_mvm_d"; return 1; }
        echo "$_mvm_v" > /sys/bus/virtio/drivers/virtio_blk/bind || { echo "cannot attach $_mvm_d"; return 1; }
    done
    # fw_cfg: its by_name directory was read at probe time from the old hypervisor
    for _mvm_f in /sys/bus/platform/drivers/fw_cfg/*; do
        [ -L "$_mvm_f" ] || continue
        case "${_mvm_f##*/}" in module|bind|unbind|uevent) continue ;; esac
        echo "${_mvm_f##*/}" > /sys/bus/platform/drivers/fw_cfg/unbind &&
            echo "${_mvm_f##*/}" > /sys/bus/platform/drivers/fw_cfg/bind
    done
    # 3. mount what is attached now (the drives' functions from init.d)
    _mvm_kind=$MVM_KIND
    _mvm_n=0
    for _mvm_d in vdb vdc; do  # the devices come back asynchronously
        while [ ! -b "/dev/$_mvm_d" ] && [ -e "/sys/block/$_mvm_d" ] && [ $_mvm_n -lt 200 ]; do
            usleep 10000; _mvm_n=$((_mvm_n + 1))
        done
    done
    if [ -n "$_mvm_new" ]; then
        _mvm_cmd=$CMDLINE; CMDLINE="mvm.drives=$_mvm_new"
        mvm_mount_drives
        CMDLINE=$_mvm_cmd
    fi
    if [ "$MVM_KIND" = failed ]; then MVM_KIND=$_mvm_kind; echo "cannot mount the new drives"; return 1; fi
    command -v mvm_credentials >/dev/null && mvm_credentials
    return 0
}

mvm_op_identity() {
    case "$1" in ''|-*|*[!A-Za-z0-9.-]*) echo "bad hostname"; return 1 ;; esac
    case "$2" in *[!0-9a-f]*) echo "bad machine id"; return 1 ;; esac
    [ ${#1} -le 64 ] && [ ${#2} = 32 ] || { echo "bad identity"; return 1; }
    echo "$1" > /proc/sys/kernel/hostname || return 1
    # builtins only where possible (every exec costs milliseconds under TCG)
    # in place (a bind mount of it over /etc/machine-id follows the inode); no subshell:
    # a fork costs tens of milliseconds under TCG
    umask 0222
    echo "$2" > /run/machine-id || { umask 022; return 1; }
    umask 022
    if [ -e /etc/machine-id ]; then
        while read -r _mvm_dev _mvm_mnt _mvm_rest; do
            [ "$_mvm_mnt" = /etc/machine-id ] && return 0  # bound already (a fork of a clone)
        done < /proc/mounts
        mount --bind /run/machine-id /etc/machine-id || return 1
    fi
    return 0
}

mvm_op_reseed() {
    case "$1" in ''|*[!0-9a-f]*) echo "bad seed"; return 1 ;; esac
    [ ${#1} -ge 64 ] && [ ${#1} -le 512 ] && [ $((${#1} % 2)) = 0 ] || { echo "bad seed length"; return 1; }
    # a here-document, not a pipe: one exec, no extra fork
    /etc/mvm/bin/mvm-reseed <<EOF || { echo "reseed failed"; return 1; }
$1
EOF
}

# _mvm_descendants PID…: those pids and every process below them (from /proc)
_mvm_descendants() {
    _mvm_all="$*" _mvm_new="$*"
    while [ -n "$_mvm_new" ]; do
        _mvm_next=""
        for _mvm_s in /proc/[0-9]*/stat; do
            read -r _mvm_line 2>/dev/null < "$_mvm_s" || continue
            _mvm_line=${_mvm_line##*) }  # the command name may hold spaces
            _mvm_pp=${_mvm_line#* }; _mvm_pp=${_mvm_pp%% *}
            for _mvm_q in $_mvm_new; do
                [ "$_mvm_pp" = "$_mvm_q" ] && _mvm_p=${_mvm_s#/proc/} && _mvm_next="$_mvm_next ${_mvm_p%/stat}"
            done
        done
        _mvm_all="$_mvm_all$_mvm_next"; _mvm_new=$_mvm_next
    done
    echo $_mvm_all
}

# _mvm_live PID…: whether any of them is still a live (not zombie) process
_mvm_live() {
    for _mvm_q in "$@"; do
        read -r _mvm_line 2>/dev/null < "/proc/$_mvm_q/stat" || continue
        _mvm_line=${_mvm_line##*) }
        [ "${_mvm_line%% *}" = Z ] || return 0
    done
    return 1
}

# mvm_stop_tree PID…: SIGTERM the processes and their descendants, SIGKILL after 5 s
mvm_stop_tree() {
    _mvm_t=$(_mvm_descendants "$@")
    kill -TERM $_mvm_t 2>/dev/null
    _mvm_n=50
    while [ $_mvm_n -gt 0 ] && _mvm_live $_mvm_t; do usleep 100000; _mvm_n=$((_mvm_n - 1)); done
    kill -KILL $_mvm_t 2>/dev/null
    return 0
}
