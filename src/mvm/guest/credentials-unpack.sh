# mvm_unpack_credentials DIR: write every credential the host handed over into DIR,
# one 0400 file per credential.  Shared by the rootfs /init of busybox guests
# (credentials.sh) and the initramfs of systemd guests (which imports them for
# systemd: PID 1 then finds $CREDENTIALS_DIRECTORY set and uses them as its own).
#   - fw_cfg opt/io.systemd.credentials/NAME: one per credential;
#   - fw_cfg opt/mvm/credentials/00, 01…: pieces of one newc cpio archive with the
#     credentials whose names are too long for fw_cfg or values too big to read fast
#     (see mvm/backends/qemu/guestdata.py);
#   - SMBIOS type 11 strings io.systemd.credential[.binary]:NAME=VALUE (q35);
#   - the guest-data drive (hypervisors without fw_cfg: Firecracker), named on the
#     kernel command line as mvm.guestdata=vdX and unpacked by mvm_guestdata_unpack
#     into $MVM_GUESTDATA (credentials/NAME there; see mvm/backends/guestdrive.py).
# Values are copied with cat/cpio/base64 only: never echoed, never traced.  Functions
# and _mvm_* variables only (sourced into PID 1 shells).  $B is busybox in the
# initramfs (which has no applet links) and empty in the rootfs.
mvm_have_credentials() {
    _mvm_fw=/sys/firmware/qemu_fw_cfg/by_name/opt
    set -- /sys/firmware/dmi/entries/11-*/raw
    [ -d "$_mvm_fw/io.systemd.credentials" ] || [ -d "$_mvm_fw/mvm/credentials" ] || [ -r "$1" ] ||
        { [ -n "$MVM_GUESTDATA" ] && [ -d "$MVM_GUESTDATA/credentials" ]; }  # only if one came
}
# mvm_guestdata_dev CMDLINE: the guest-data drive's device name (vdX) from the kernel
# command line (mvm.guestdata=vdX) in $_mvm_gd; false when there is none or it is
# malformed (only vda..vdz is accepted: the value becomes a path under /dev).
mvm_guestdata_dev() {
    _mvm_gd=""
    for _mvm_kv in $1; do
        case "$_mvm_kv" in mvm.guestdata=*) _mvm_gd=${_mvm_kv#*=} ;; esac
    done
    case "$_mvm_gd" in vd[a-z]) return 0 ;; esac
    _mvm_gd=""
    return 1
}
# mvm_cpio_safe ARCHIVE CHECK: true when every entry of the newc archive ARCHIVE is a
# regular file with mtime 0 whose name the function CHECK accepts (busybox cpio -i
# itself writes "../x" outside its directory: names must be checked first).  The
# listing is left in ARCHIVE.list (beside it, in the caller's private directory,
# which the caller wipes: one exec less under TCG).
mvm_cpio_safe() {
    # busybox's cpio always (its listing format; an image's packages may bring GNU cpio)
    ${B:-busybox} cpio -t -v < "$1" > "$1.list" 2>/dev/null || return 1
    while IFS= read -r _mvm_l; do
        case "$_mvm_l" in -*" 1970-01-01 00:00:00 "*) ;; *) return 1 ;; esac
        "$2" "${_mvm_l#*" 1970-01-01 00:00:00 "}" || return 1
    done < "$1.list"
}
_mvm_guestdata_name() {
    case "$1" in
        meta|network) return 0 ;;
        credentials/*) case "${1#credentials/}" in ''|.|..|*/*) return 1 ;; esac; return 0 ;;
    esac
    return 1
}
# mvm_guestdata_unpack DEV DIR: unpack the guest-data drive DEV (one newc cpio archive,
# host-written but untrusted here) into DIR, an empty private directory (0700, in RAM).
# At most $_mvm_gd_max bytes are read (into a copy: what is checked is what is
# unpacked; an archive that does not end within them is refused); every entry must
# be a regular file named meta, network or credentials/NAME (no directories,
# symlinks, devices, absolute paths, "..", other names).  On any refusal DIR is
# emptied and the status is 1, with one line on stderr that names no value.  The copy
# (.drive) and its listing stay in DIR: the caller wipes DIR after the import.
_mvm_gd_max=4194304
mvm_guestdata_unpack() (
    _mvm_src=$1 _mvm_dir=$2
    umask 0077
    _mvm_fail() {
        echo "mvm: guest-data drive $_mvm_src refused: $1" >&2
        $B rm -rf "$_mvm_dir"/* "$_mvm_dir"/.[!.]* "$_mvm_dir"/..?*
        exit 1
    }
    $B head -c "$_mvm_gd_max" "$_mvm_src" > "$_mvm_dir/.drive" 2>/dev/null ||
        _mvm_fail "unreadable"
    mvm_cpio_safe "$_mvm_dir/.drive" _mvm_guestdata_name || _mvm_fail "unexpected entries"
    (cd "$_mvm_dir" && ${B:-busybox} cpio -i -d --quiet < .drive) 2>/dev/null ||
        _mvm_fail "cannot unpack"
    # a name with a newline lists as two plausible lines: what was unpacked must be
    # exactly what the names allow (builtins only)
    for _mvm_f in "$_mvm_dir"/* "$_mvm_dir"/.[!.]* "$_mvm_dir"/..?*; do
        [ -e "$_mvm_f" ] || [ -L "$_mvm_f" ] || continue
        case "${_mvm_f##*/}" in
            meta|network|.drive|.drive.list) [ -f "$_mvm_f" ] && [ ! -L "$_mvm_f" ] ;;
            credentials) [ -d "$_mvm_f" ] && [ ! -L "$_mvm_f" ] ;;
            *) false ;;
        esac || _mvm_fail "unexpected entries"
    done
    for _mvm_f in "$_mvm_dir"/credentials/* "$_mvm_dir"/credentials/.[!.]* "$_mvm_dir"/credentials/..?*; do
        [ -e "$_mvm_f" ] || [ -L "$_mvm_f" ] || continue
        [ -f "$_mvm_f" ] && [ ! -L "$_mvm_f" ] || _mvm_fail "unexpected entries"
    done
)
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
    if [ -n "$MVM_GUESTDATA" ] && [ -d "$MVM_GUESTDATA/credentials" ]; then
        # one cp for all (regular files only: mvm_guestdata_unpack checked); new files,
        # so the umask makes them 0400
        set -- "$MVM_GUESTDATA"/credentials
        $B cp "$1"/* "$1"/.[!.]* "$1"/..?* "$_mvm_dir/" 2>/dev/null  # unmatched: ignored
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
