# mvm credentials (sourced by /init as root, before the entrypoint starts):
# systemd's convention without systemd.  Each credential the host handed over
# (fw_cfg, mvm's fw_cfg bundle, SMBIOS type 11: credentials-unpack.sh) lands in
# /run/credentials/@system/NAME (own tmpfs, remounted read-only, files 0400
# owned by the entrypoint uid) and CREDENTIALS_DIRECTORY is exported.
. /etc/mvm/lib/credentials-unpack.sh
mvm_credentials() {
    mvm_have_credentials || return 0
    _mvm_dir=/run/credentials/@system
    mkdir -p "$_mvm_dir"
    mount -t tmpfs -o "mode=0700,uid=$MVM_UID,gid=$MVM_UID,nosuid,nodev,noexec" credentials \
        "$_mvm_dir" || return 0
    mvm_unpack_credentials "$_mvm_dir"
    [ "$MVM_UID" = 0 ] || chown -R "$MVM_UID:$MVM_UID" "$_mvm_dir"
    mount -o remount,ro "$_mvm_dir"
    export CREDENTIALS_DIRECTORY="$_mvm_dir"
    unset _mvm_fw _mvm_dir
}
mvm_credentials
t credentials-ready
