#!/usr/bin/env bash
# Runs a command in its own process group and ends that whole group when the process
# PARENT_PID exits (or when this script is signalled): test harnesses use it so a server
# they start (cargo lambda watch and the function processes it spawns) never outlives them.
#   scripts/with-parent.sh PARENT_PID command [args...]
set -uo pipefail
parent=$1
shift
setsid "$@" &
child=$!
stop() {
  kill -TERM -- "-$child" 2>/dev/null
  for _ in $(seq 30); do kill -0 "$child" 2>/dev/null || exit 0; sleep 0.1; done
  kill -KILL -- "-$child" 2>/dev/null
  exit 0
}
trap stop TERM INT HUP
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do
  sleep 0.5
done
stop
