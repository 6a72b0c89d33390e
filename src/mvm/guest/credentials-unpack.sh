# mvm_unpack_credentials DIR: write every credential the host handed over into DIR,
# one 0400 file per credential.  Shared by the rootfs /init of busybox guests
# (credentials.sh) and the initramfs of systemd guests (which imports them for
# systemd: PID 1 then finds $CREDENTIALS_DIRECTORY set and uses them as its own).
#   - fw_cfg opt/io.systemd.credentials/NAME: one per credential;
#   - fw_cfg opt/mvm/credentials/00, 01…: pieces of one newc cpio archive with the
#     credentials whose names are too long for fw_cfg or values too big to read fast
#     (see mvm/backends/qemu/guestdata.py);
#   - SMBIOS type 11 strings io.systemd.credential[.binary]:NAME=VALUE (q35).
# Values are copied with cat/cpio/base64 only: never echoed, never traced.  Functions
# and _mvm_* variables only (sourced into PID 1 shells).  $B is busybox in the
# initramfs (which has no applet links) and empty in the rootfs.
mvm_have_credentials() {
    _mvm_fw=/sys/firmware/qemu_fw_cfg/by_name/opt
    set -- /sys/firmware/dmi/entries/11-*/raw
    [ -d "$_mvm_fw/io.systemd.credentials" ] || [ -d "$_mvm_fw/mvm/credentials" ] || [ -r "$1" ]
}
mvm_unpack_credentials() (
    _mvm_dir=$1
    _mvm_fw=/sys/firmware/qemu_fw_cfg/by_name/opt
    umask 0377  # files are born 0400: no chmod pass (every exec costs ms under TCG)
    for _mvm_c in "$_mvm_fw"/io.systemd.credentials/*; do
        [ -r "$_mvm_c/raw" ] || continue
        _mvm_n=${_mvm_c##*/}
        case "$_mvm_n" in .|..|*/*) continue ;; esac
        $B cat "$_mvm_c/raw" > "$_mvm_dir/$_mvm_n"
    done
    if [ -d "$_mvm_fw/mvm/credentials" ]; then
        $B cat "$_mvm_fw"/mvm/credentials/*/raw | (cd "$_mvm_dir" && $B cpio -i -d --quiet)
    fi
    for _mvm_c in /sys/firmware/dmi/entries/11-*/raw; do  # 4-byte header, count, strings
        [ -r "$_mvm_c" ] || continue
        $B tail -c +6 "$_mvm_c" | $B tr '\0' '\n' | while IFS= read -r _mvm_s; do
            case "$_mvm_s" in
                io.systemd.credential.binary:?*=*) _mvm_kv=${_mvm_s#*:}; _mvm_b=1 ;;
                io.systemd.credential:?*=*) _mvm_kv=${_mvm_s#*:}; _mvm_b=0 ;;
                *) continue ;;
            esac
            _mvm_n=${_mvm_kv%%=*}
            case "$_mvm_n" in .|..|*/*) continue ;; esac
            if [ "$_mvm_b" = 1 ]; then
                printf '%s' "${_mvm_kv#*=}" | $B base64 -d > "$_mvm_dir/$_mvm_n"
            else
                printf '%s' "${_mvm_kv#*=}" > "$_mvm_dir/$_mvm_n"
            fi
        done
    done
)
