#!/usr/bin/env bash
# Installs the template checkers: cfn-lint, the SAM CLI and parliament into .venv-infra
# (pinned in infra/requirements-infra.txt); asl-validator, @cloud-copilot/iam-simulate and
# playwright-core into infra/node_modules (pinned in infra/package.json, locked by
# infra/package-lock.json); and, through scripts/ensure-browser.sh, Debian's chromium,
# which infra/browser-check.mjs drives with playwright-core.
# Each side re-installs when its pin file changes (a stamp holds the hash it was installed
# from); otherwise re-runs are cheap.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$root/target"
exec 9>"$root/target/.infra-tools.lock"
flock 9

venv="$root/.venv-infra"
want="$(sha256sum "$root/infra/requirements-infra.txt" | cut -d' ' -f1)"
if [[ ! -f "$venv/stamp" || "$(cat "$venv/stamp")" != "$want" ]]; then
  echo "installing cfn-lint, the SAM CLI and parliament into $venv" >&2
  [[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/infra/requirements-infra.txt"
  echo "$want" > "$venv/stamp"
fi

infra="$root/infra"
modules="$infra/node_modules"
stamp="$modules/.drpilot-stamp"
want="$(cat "$infra/package.json" "$infra/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" \
      || ! -x "$modules/.bin/asl-validator" \
      || ! -f "$modules/@cloud-copilot/iam-simulate/package.json" \
      || ! -f "$modules/playwright-core/package.json" ]]; then
  echo "installing asl-validator, @cloud-copilot/iam-simulate and playwright-core into infra/node_modules" >&2
  # npm ci installs exactly what the lock file says (and fails if package.json and the
  # lock disagree), after removing whatever node_modules held.
  (cd "$infra" && npm ci --silent --no-audit --no-fund)
  echo "$want" > "$stamp"
fi

"$root/scripts/ensure-browser.sh"
