#!/usr/bin/env bash
# The headless browser infra/browser-check.mjs drives (through playwright-core, which
# never downloads a browser of its own): Debian's chromium at /usr/bin/chromium, and a
# font so that text renders in its screenshots. Installed with apt-get when missing;
# re-runs are a no-op. Called by scripts/ensure-infra-tools.sh.
set -euo pipefail
missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
((${#missing[@]})) || exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root" >&2
  exit 1
fi
echo "installing ${missing[*]} from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
