#!/bin/sh
# systemd generator (runs when PID 1 starts, after it imported the credentials from
# fw_cfg / SMBIOS type 11): every system credential is passed to the entrypoint and to
# each service without its own load_credentials, with LoadCredential=NAME, so their
# $CREDENTIALS_DIRECTORY holds them all (what busybox guests give every program).
d=/run/credentials/@system
[ -d "$d" ] || exit 0
set -- "$1"
for u in $(cat /etc/mvm/systemd/all-credentials 2>/dev/null); do
    mkdir -p "$1/$u.d"
    {
        echo "[Service]"
        for f in "$d"/*; do [ -f "$f" ] && echo "LoadCredential=${f##*/}"; done
    } > "$1/$u.d/50-mvm-credentials.conf"
done
exit 0
