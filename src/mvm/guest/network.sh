# mvm network (sourced by /init as root, before the entrypoint): the egress
# proxy's guest files arrive as one cpio archive on fw_cfg opt/mvm/network
# (see mvm/network/plan.py).  resolv.conf and hosts point names at the proxy
# (DNS over TCP: QEMU's guest forwards are TCP only), the CA of a VM with
# secret bindings joins the trust store, and env.sh (proxy variables and the
# secrets' placeholders) is sourced by every launcher (env.d/60-network.sh).
# On the guest-data drive (guestdata.sh) the same archive is the file "network";
# its entries are checked first (mvm_cpio_safe: busybox cpio -i follows "../").
_mvm_net=/sys/firmware/qemu_fw_cfg/by_name/opt/mvm/network/raw
_mvm_net_name() {
    case "$1" in resolv.conf|hosts|env.sh|secrets-manifest.json|ca.pem) return 0 ;; esac
    return 1
}
if [ -n "$MVM_GUESTDATA" ] && [ -f "$MVM_GUESTDATA/network" ]; then
    _mvm_net=$MVM_GUESTDATA/network
    if ! mvm_cpio_safe "$_mvm_net" _mvm_net_name; then
        echo "mvm: the guest data's network files were refused" >&2
        MVM_KIND=failed
        _mvm_net=""
    fi
fi
if [ -n "$_mvm_net" ] && [ -r "$_mvm_net" ]; then
    mkdir -p /run/mvm/net
    (cd /run/mvm/net && cpio -i -d --quiet < "$_mvm_net")
    mount -o bind /run/mvm/net/resolv.conf /etc/resolv.conf
    [ -f /etc/hosts ] && mount -o bind /run/mvm/net/hosts /etc/hosts
    if [ -r /run/mvm/net/ca.pem ]; then
        _mvm_b=/etc/ssl/certs/ca-certificates.crt
        { cat "$_mvm_b" 2>/dev/null; cat /run/mvm/net/ca.pem; } > /run/mvm/net/ca-bundle.crt
        [ -f "$_mvm_b" ] && mount -o bind /run/mvm/net/ca-bundle.crt "$_mvm_b"
        unset _mvm_b
    fi
    chmod 0755 /run/mvm/net
    chmod 0644 /run/mvm/net/*
fi
unset _mvm_net
