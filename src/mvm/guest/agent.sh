#!/bin/sh
# mvm guest agent (stub): runs under the agent uid, answers "ping" with "pong"
# on its virtio-serial port.  revision.json says agentBinary = "stub".
# The host connects whenever it likes and may reconnect: while it is not
# connected a read returns end-of-file at once, so wait a little and retry
# instead of exiting (the real agent waits for the port's SIGIO instead).
PORT="$1"
echo "mvm-agent: stub started as uid $(id -u)" > /run/mvm/agent.log
[ -n "$PORT" ] && [ -c "$PORT" ] || exec sleep 2147483647
while :; do
    while read -r line; do
        case "$line" in
            ping) echo pong ;;
            *) echo "error unknown-request" ;;
        esac
    done < "$PORT" > "$PORT"
    sleep 1
done
