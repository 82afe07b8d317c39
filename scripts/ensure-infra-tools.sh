#!/usr/bin/env bash
# Installs the template checkers: cfn-lint and the SAM CLI into .venv-infra (pinned in
# infra/requirements-infra.txt), asl-validator into infra/node_modules (pinned in
# infra/package.json, locked by infra/package-lock.json). Re-runs are cheap.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$root/target"
exec 9>"$root/target/.infra-tools.lock"
flock 9
venv="$root/.venv-infra"
want="$(sha256sum "$root/infra/requirements-infra.txt" | cut -d' ' -f1)"
if [[ ! -f "$venv/stamp" || "$(cat "$venv/stamp")" != "$want" ]]; then
  echo "installing cfn-lint and the SAM CLI into $venv" >&2
  [[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/infra/requirements-infra.txt"
  echo "$want" > "$venv/stamp"
fi
if [[ ! -x "$root/infra/node_modules/.bin/asl-validator" ]]; then
  echo "installing asl-validator into infra/node_modules" >&2
  (cd "$root/infra" && if [[ -f package-lock.json ]]; then npm ci --silent --no-audit --no-fund; else npm install --silent --no-audit --no-fund; fi)
fi
