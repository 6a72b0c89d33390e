# mvm drives (sourced by /init as root, before the entrypoint starts).
# The host lists what to mount on the kernel command line, in device order:
#   mvm.drives=vdb:config:/mnt/config,vdc:secrets:/mnt/secrets,vdd:data:/data
# (config = /dev/vdb, secrets = /dev/vdc, data volumes from /dev/vdd; a drive
# the host did not give is a 0-byte placeholder that is never listed here).
# Modes and owners come from the image (0444 config, 0400 + entrypoint uid
# secrets), so nothing is chown'ed at boot.  Sourced into PID 1: functions
# and _mvm_* variables only, and never `exit`.
mvm_mount_drives() {
    _mvm_list=""
    for _mvm_kv in $CMDLINE; do
        case "$_mvm_kv" in mvm.drives=*) _mvm_list="${_mvm_kv#*=}" ;; esac
    done
    [ -n "$_mvm_list" ] || return 0
    _mvm_ifs=$IFS
    IFS=,
    set -f
    for _mvm_e in $_mvm_list; do
        IFS=$_mvm_ifs
        _mvm_dev=${_mvm_e%%:*}
        _mvm_rest=${_mvm_e#*:}
        _mvm_kind=${_mvm_rest%%:*}
        _mvm_path=${_mvm_rest#*:}
        case "$_mvm_kind" in
            data) _mvm_opts=rw,nosuid,nodev,noatime ;;
            *) _mvm_opts=ro,nosuid,nodev,noexec,noatime ;;
        esac
        if ! { [ -d "$_mvm_path" ] || mkdir -p "$_mvm_path" 2>/dev/null; } ||
            ! mount -t ext4 -o "$_mvm_opts" "/dev/$_mvm_dev" "$_mvm_path"; then
            echo "mvm: cannot mount the $_mvm_kind drive /dev/$_mvm_dev at $_mvm_path" >&2
            MVM_KIND=failed  # /init then reports exit status 1 without starting the entrypoint
        fi
    done
    set +f
    IFS=$_mvm_ifs
    unset _mvm_list _mvm_kv _mvm_ifs _mvm_e _mvm_dev _mvm_rest _mvm_kind _mvm_path _mvm_opts
}
mvm_mount_drives
t drives-mounted
