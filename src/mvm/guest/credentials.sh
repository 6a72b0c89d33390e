# mvm credentials (sourced by /init as root, before the entrypoint starts):
# systemd's convention without systemd.  The host hands each credential over
#   - on -M microvm: fw_cfg opt/io.systemd.credentials/NAME (one per credential)
#     plus opt/mvm/credentials/00, 01…: pieces of one newc cpio archive with
#     the credentials whose names are too long for fw_cfg or values too big
#     to read fast (see mvm/secrets/credentials.py);
#   - on machines with SMBIOS: type 11 strings io.systemd.credential[.binary]:NAME=VALUE.
# Each lands in /run/credentials/@system/NAME (own tmpfs, remounted read-only,
# files 0400 owned by the entrypoint uid) and CREDENTIALS_DIRECTORY is
# exported.  Values are copied with cat/cpio only: never echoed, never traced.
mvm_credentials() {
    _mvm_fw=/sys/firmware/qemu_fw_cfg/by_name/opt
    _mvm_dir=/run/credentials/@system
    set -- /sys/firmware/dmi/entries/11-*/raw
    [ -d "$_mvm_fw/io.systemd.credentials" ] || [ -d "$_mvm_fw/mvm/credentials" ] ||
        [ -r "$1" ] || return 0
    mkdir -p "$_mvm_dir"
    mount -t tmpfs -o "mode=0700,uid=$MVM_UID,gid=$MVM_UID,nosuid,nodev,noexec" credentials \
        "$_mvm_dir" || return 0
    umask 0377  # files are born 0400: no chmod pass (every exec costs ms under TCG)
    for _mvm_c in "$_mvm_fw"/io.systemd.credentials/*; do
        [ -r "$_mvm_c/raw" ] || continue
        _mvm_n=${_mvm_c##*/}
        case "$_mvm_n" in .|..|*/*) continue ;; esac
        cat "$_mvm_c/raw" > "$_mvm_dir/$_mvm_n"
    done
    if [ -d "$_mvm_fw/mvm/credentials" ]; then
        cat "$_mvm_fw"/mvm/credentials/*/raw | (cd "$_mvm_dir" && cpio -i -d --quiet)
    fi
    for _mvm_c in "$@"; do  # SMBIOS type 11: 4-byte header, count byte, NUL-separated strings
        [ -r "$_mvm_c" ] || continue
        tail -c +6 "$_mvm_c" | tr '\0' '\n' | while IFS= read -r _mvm_s; do
            case "$_mvm_s" in
                io.systemd.credential.binary:?*=*) _mvm_kv=${_mvm_s#*:}; _mvm_b=1 ;;
                io.systemd.credential:?*=*) _mvm_kv=${_mvm_s#*:}; _mvm_b=0 ;;
                *) continue ;;
            esac
            _mvm_n=${_mvm_kv%%=*}
            case "$_mvm_n" in .|..|*/*) continue ;; esac
            if [ "$_mvm_b" = 1 ]; then
                printf '%s' "${_mvm_kv#*=}" | base64 -d > "$_mvm_dir/$_mvm_n"
            else
                printf '%s' "${_mvm_kv#*=}" > "$_mvm_dir/$_mvm_n"
            fi
        done
    done
    umask 022
    [ "$MVM_UID" = 0 ] || chown -R "$MVM_UID:$MVM_UID" "$_mvm_dir"
    mount -o remount,ro "$_mvm_dir"
    export CREDENTIALS_DIRECTORY="$_mvm_dir"
    unset _mvm_fw _mvm_dir _mvm_c _mvm_n
}
mvm_credentials
t credentials-ready
