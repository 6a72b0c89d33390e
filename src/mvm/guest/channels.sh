# mvm host channels: which transport the guest's status, control and agent channels
# use, chosen by the host on the kernel command line (sourced by /init; functions and
# MVM_* / _mvm_* variables only).
#   (absent)          virtio-serial ports org.mvm.{status,control,agent} (QEMU)
#   mvm.channels=vsock  vsock (Firecracker's hybrid vsock): the guest listens on
#                     agent 1024 and control 1025 and connects to the host (CID 2)
#                     on status 1026 to report "exit N"; mvm-vsock relays for /init
# Any other value keeps virtio-serial: an older host never asks for vsock.
MVM_VSOCK=/etc/mvm/bin/mvm-vsock
MVM_PORT_AGENT=1024
MVM_PORT_CONTROL=1025
MVM_PORT_STATUS=1026
# mvm_channels_transport CMDLINE: MVM_CHANNELS=vsock or virtio-serial (builtins only)
mvm_channels_transport() {
    MVM_CHANNELS=virtio-serial
    for _mvm_kv in $1; do
        case "$_mvm_kv" in mvm.channels=vsock) MVM_CHANNELS=vsock ;; mvm.channels=*) MVM_CHANNELS=virtio-serial ;; esac
    done
    unset _mvm_kv
}
# mvm_report_status STATUS RC: "exit RC" to the host's status channel: a virtio-serial
# port (a path), or an address mvm-vsock connects to (vsock:PORT; unix:PATH in tests)
mvm_report_status() {
    case "$1" in
        '') return 1 ;;
        vsock:*|unix:*) echo "exit $2" | "$MVM_VSOCK" connect "$1" ;;
        *) echo "exit $2" > "$1" ;;
    esac
}
