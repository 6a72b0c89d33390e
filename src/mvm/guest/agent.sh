#!/bin/sh
# mvm guest agent (stub): runs under the agent uid, answers "ping" with "pong"
# on its virtio-serial port.  revision.json says agentBinary = "stub".
PORT="$1"
echo "mvm-agent: stub started as uid $(id -u)" > /run/mvm/agent.log
[ -n "$PORT" ] && [ -c "$PORT" ] || exec sleep 2147483647
while read -r line; do
    case "$line" in
        ping) echo pong ;;
        *) echo "error unknown-request" ;;
    esac
done < "$PORT" > "$PORT"
exec sleep 2147483647
