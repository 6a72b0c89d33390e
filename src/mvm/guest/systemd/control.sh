#!/bin/sh
# mvm-control.service (root): the host's requests on org.mvm.control.  The host end
# is a pipe that is always connected, so read() blocks until a request comes.
# "poweroff" (mvmctl down) stops every unit the systemd way (ExecStop=, then SIGTERM).
PORT=/run/mvm/port-control
[ -c "$PORT" ] || { echo "mvm: no control port" > /dev/console; exec sleep 2147483647; }
while :; do
    while read -r req; do
        case "$req" in
            poweroff) read -r _up _ < /proc/uptime; echo "mvm: poweroff requested by the host at ${_up}s" > /dev/console
                mkdir -p /run/mvm; : > /run/mvm/stopping; systemctl --no-block --job-mode=replace-irreversibly start poweroff.target ;;
        esac
    done < "$PORT"
    sleep 1  # only if the port was ever closed under us
done
