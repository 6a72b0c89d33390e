#!/bin/sh
# mvm-control.service (root): the host's requests on org.mvm.control.  The host end
# is a pipe that is always connected, so read() blocks until a request comes.  Under
# mvm.channels=vsock the requests come through mvm-vsock listening on the control
# address setup.sh wrote (/run/mvm/control-addr; stdin kept open: it exits at EOF).
# "poweroff" (mvmctl down) stops every unit the systemd way (ExecStop=, then SIGTERM).
PORT=/run/mvm/port-control
requests() {
    while read -r req; do
        case "$req" in
            poweroff) read -r _up _ < /proc/uptime; echo "mvm: poweroff requested by the host at ${_up}s" > /dev/console
                mkdir -p /run/mvm; : > /run/mvm/stopping; systemctl --no-block --job-mode=replace-irreversibly start poweroff.target ;;
        esac
    done
}
if [ -r /run/mvm/control-addr ]; then
    read -r addr < /run/mvm/control-addr
    sleep 2147483647 | /etc/mvm/bin/mvm-vsock listen "$addr" | requests
    echo "mvm: the control channel ended" > /dev/console; exec sleep 2147483647
fi
[ -c "$PORT" ] || { echo "mvm: no control port" > /dev/console; exec sleep 2147483647; }
while :; do
    requests < "$PORT"
    sleep 1  # only if the port was ever closed under us
done
