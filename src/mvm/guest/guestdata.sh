# mvm guest data (sourced by /init as root, first of init.d): a hypervisor without
# fw_cfg (Firecracker) hands credentials and the network files over on the
# guest-data drive named by mvm.guestdata=vdX (mvm/backends/guestdrive.py).  It is
# checked and unpacked into /run/mvm/guestdata (0700, tmpfs) for the same consumers
# as fw_cfg (credentials.sh, network.sh), and wiped after them (guestdata-wipe.sh).
# A drive that is named but refused fails the boot (exit status 1, no entrypoint):
# the entrypoint would run without its credentials.
. /etc/mvm/lib/credentials-unpack.sh
if mvm_guestdata_dev "$CMDLINE"; then
    MVM_GUESTDATA=/run/mvm/guestdata
    if ! mkdir -m 0700 "$MVM_GUESTDATA" || ! mvm_guestdata_unpack "/dev/$_mvm_gd" "$MVM_GUESTDATA"; then
        echo "mvm: cannot read the guest data on /dev/$_mvm_gd" >&2
        MVM_KIND=failed
    fi
fi
unset _mvm_gd _mvm_kv
t guestdata-unpacked
