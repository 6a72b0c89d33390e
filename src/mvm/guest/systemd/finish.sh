#!/bin/sh
# The one way a systemd guest ends (as root; ExecStopPost=+ of the entrypoint units).
#   finish.sh entrypoint          the entrypoint unit stopped: report its status, power off
#   finish.sh service NAME POLICY an entrypoint service stopped: when none is left to run
#                                 (always: restarts; on-failure: restarts unless it exited 0),
#                                 report the worst status, power off
#   finish.sh report RC           report RC and power off
# systemd gives ExecStopPost= $EXIT_CODE (exited|killed|dumped) and $EXIT_STATUS (a number
# or a signal name); a signal becomes 128+N as in a shell.  A VM the host is stopping
# (`down`: /run/mvm/stopping) reports 143, as busybox guests do.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
status() {
    case "${EXIT_CODE:-}" in
        exited) echo "${EXIT_STATUS:-1}" ;;
        killed|dumped) n=$(kill -l "${EXIT_STATUS:-KILL}" 2>/dev/null) || n=9; echo $((128 + n)) ;;
        *) echo 1 ;;  # never started (a dependency failed)
    esac
}
report() {
    mkdir -p /run/mvm
    [ -e /run/mvm/reported ] && return 0
    : > /run/mvm/reported
    rc=$1
    [ -e /run/mvm/stopping ] && rc=143
    if [ -r /run/mvm/status-addr ]; then  # mvm.channels=vsock: one connect (setup.sh)
        read -r addr < /run/mvm/status-addr
        echo "exit $rc" | /etc/mvm/bin/mvm-vsock connect "$addr"
    elif [ -e /run/mvm/port-status ]; then
        echo "exit $rc" > /run/mvm/port-status
    fi
    systemctl --no-block --job-mode=replace-irreversibly start poweroff.target
}
case "${SERVICE_RESULT:-success}:${EXIT_CODE:-}" in
    success:*|exit-code:exited) ;;  # an exit status says it all
    *) echo "mvm: ${2:-entrypoint} ended: ${SERVICE_RESULT} ${EXIT_CODE:-} ${EXIT_STATUS:-}" > /dev/console ;;
esac
case "$1" in
    entrypoint) report "$(status)" ;;
    report) report "$2" ;;
    service)
        rc=$(status)
        case "$3" in
            always) [ -e /run/mvm/stopping ] || exit 0 ;;
            on-failure) [ "$rc" = 0 ] || [ -e /run/mvm/stopping ] || exit 0 ;;
        esac
        mkdir -p /run/mvm/ended
        echo "$rc" > "/run/mvm/ended/$2"
        . /etc/mvm/spec.sh
        worst=0
        for s in $MVM_SERVICES; do
            [ -r "/run/mvm/ended/${s%%:*}" ] || exit 0  # another one still runs
            read -r r < "/run/mvm/ended/${s%%:*}"
            [ "$r" != 0 ] && worst=$r
        done
        report "$worst" ;;
esac
exit 0
