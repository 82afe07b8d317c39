#!/usr/bin/env bash
# Builds the phase functions (debug) exactly as `cargo lambda watch` runs them, so the
# local stack and the tests never compile on a function's first invocation. The
# functions resolve the same dependency features as `cargo test --workspace`
# (scripts/check-one-build.sh keeps it so), so after `make test` this reuses its build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
packages=()
for dir in functions/*/; do
  packages+=(-p "$(basename "$dir")")
done
exec cargo build --bins "${packages[@]}" "$@"
