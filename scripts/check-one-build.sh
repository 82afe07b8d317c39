#!/usr/bin/env bash
# Fails when building one function on its own (what `cargo lambda watch` does on a first
# invocation) or the CLI (what `make drill` builds) would resolve different dependency
# features than the workspace build of `make test`: cargo would then compile the AWS SDK
# a second time (minutes on two cores). The usual cause is a feature only a test, the CLI
# or the test kit turns on; turn it on in `shared` too, where the functions see it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="$(rustc -vV | sed -n 's/^host: //p')"
features() {
  cargo tree --prefix none -f '{p} [{f}]' --target "$target" "$@" 2>/dev/null |
    sed 's/ (\*)//; s/ (proc-macro)//' | grep -v "($root" | sort -u
}
workspace="$(features --workspace -e normal,build,dev)"
status=0
for name in $(basename -a functions/*/) drpilot-cli; do
  differs="$(comm -23 <(features -p "$name" -e normal,build) <(echo "$workspace"))"
  if [[ -n "$differs" ]]; then
    echo "check-one-build: $name alone resolves features the workspace build does not:" >&2
    echo "$differs" | sed 's/^/  /' >&2
    status=1
  fi
done
[[ $status -eq 0 ]] && echo "check-one-build: every function and the CLI build with the workspace's features"
exit $status
