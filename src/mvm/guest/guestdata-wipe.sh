# mvm guest data, after its consumers (credentials.sh, network.sh): nothing of the
# unpacked guest-data drive stays in /run/mvm/guestdata (see guestdata.sh).
if [ -n "$MVM_GUESTDATA" ]; then
    rm -rf "$MVM_GUESTDATA"
    unset MVM_GUESTDATA
fi
