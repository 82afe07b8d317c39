#!/usr/bin/env bash
# The local AWS stack (docs/local-stack.md): moto on loopback with state-machine execution and
# JSONata on, and `cargo lambda watch` serving the phase functions that moto's Lambda
# Invoke is forwarded to.
#   scripts/local-stack.sh up       start both (idempotent), print the endpoint
#   scripts/local-stack.sh down     stop both, leave no process behind
#   scripts/local-stack.sh status   exit 0 if both are up
#   scripts/local-stack.sh env      print the environment a client needs (eval-able)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
state="$root/.local"
port="${DRPILOT_LOCAL_PORT:-4599}"
lambda_port="${DRPILOT_LAMBDA_PORT:-9009}"
# The demo storefront's health page, which the demo profile's http component checks.
site_port="${DRPILOT_SITE_PORT:-9011}"
endpoint="http://127.0.0.1:$port"

client_env() {
  cat <<ENV
export AWS_ENDPOINT_URL=$endpoint
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
ENV
}

alive() { [[ -f "$state/$1.pid" ]] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

wait_for_port() {
  local p=$1 what=$2 log=$3 deadline=$((SECONDS + ${4:-60}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
    if ((SECONDS > deadline)); then
      echo "$what did not come up on port $p; last lines of $log:" >&2
      tail -20 "$log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

up() {
  "$root/scripts/ensure-venv.sh" --build
  mkdir -p "$state"
  if ! alive moto; then
    DRPILOT_LAMBDA_ENDPOINT="http://127.0.0.1:$lambda_port" \
      setsid "$root/.venv/bin/python" "$root/infra/local/motoserver.py" --port "$port" \
      </dev/null >"$state/moto.log" 2>&1 &
    echo $! >"$state/moto.pid"
  fi
  wait_for_port "$port" "moto" "$state/moto.log"
  # Built before the stack serves them (also when it is already up and the code changed):
  # an invocation must never wait for a compile, which would count in a measured RTO.
  "$root/scripts/build-functions.sh" --quiet
  if ! alive watch; then
    (
      cd "$root"
      eval "$(client_env)"
      export PATH="$root/.venv/bin:$PATH"
      # The drill schedule failback's preflight checks (the local stack creates it disabled).
      export DRPILOT_DRILL_SCHEDULE=drpilot-monthly-drill
      # The approval key (created by provisioning under this alias) and the state machines
      # whose approvals the approve function answers.
      export DRPILOT_APPROVAL_KEY=alias/drpilot-approval
      # The local drill machine's approval timeout (cli/src/commands/local.rs deploys it
      # with 3600 s): bringup checks the run's lock outlives it.
      export DRPILOT_APPROVAL_TIMEOUT_SECONDS=3600
      export DRPILOT_STATE_MACHINES=arn:aws:states:us-east-1:123456789012:stateMachine:drpilot-drill,arn:aws:states:us-east-1:123456789012:stateMachine:drpilot-failback
      # What the readiness function's RTO watch looks at and notifies.
      export DRPILOT_STATE_MACHINE=arn:aws:states:us-east-1:123456789012:stateMachine:drpilot-drill
      export DRPILOT_TOPIC_ARN=arn:aws:sns:us-east-1:123456789012:drpilot-notifications
      # The functions' time, as the template's Timeout gives it on AWS (the local runtime's
      # context says Lambda's default 3 s whatever the function).
      export DRPILOT_TIME_BUDGET_SECONDS=900
      exec setsid cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$lambda_port" \
        </dev/null >"$state/watch.log" 2>&1
    ) &
    echo $! >"$state/watch.pid"
  fi
  wait_for_port "$lambda_port" "cargo lambda watch" "$state/watch.log" 300
  if ! alive site; then
    mkdir -p "$state/site"
    printf '{"status": "ok", "service": "drpilot demo storefront"}\n' >"$state/site/health.json"
    setsid "$root/.venv/bin/python" -m http.server "$site_port" --bind 127.0.0.1 \
      --directory "$state/site" </dev/null >"$state/site.log" 2>&1 &
    echo $! >"$state/site.pid"
  fi
  wait_for_port "$site_port" "the demo storefront" "$state/site.log"
  echo "local AWS: $endpoint (functions: http://127.0.0.1:$lambda_port, storefront: http://127.0.0.1:$site_port)"
}

stop_one() {
  local name=$1
  [[ -f "$state/$name.pid" ]] || return 0
  local pid
  pid="$(cat "$state/$name.pid")"
  # Each was started as a session leader: signal its whole process group.
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$state/$name.pid"
}

case "${1:-}" in
  up) up ;;
  down)
    stop_one site
    stop_one watch
    stop_one moto
    echo "local AWS stopped"
    ;;
  status)
    alive moto && alive watch && alive site && echo "up: $endpoint" && exit 0
    echo "down"; exit 1 ;;
  env) client_env ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
