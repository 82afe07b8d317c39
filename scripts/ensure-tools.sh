#!/usr/bin/env bash
# System tools the tests compare drpilot with (rclone, from Debian's packages). Installed
# with apt-get when missing; re-runs are a no-op.
set -euo pipefail
missing=()
command -v rclone >/dev/null || missing+=(rclone)
((${#missing[@]})) || exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root" >&2
  exit 1
fi
echo "installing ${missing[*]} from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
