#!/usr/bin/env bash
# Creates or refreshes the project's Python environment (.venv) from the pinned
# requirements. Re-runs are cheap: a stamp records what is installed.
#   scripts/ensure-venv.sh            local AWS stack (moto + JSONata)
#   scripts/ensure-venv.sh --build    also cargo-lambda and zig, for `make build`/`make drill`
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# One installer at a time (test processes may start together).
mkdir -p "$root/target"
exec 9>"$root/target/.venv.lock"
flock 9
venv="$root/.venv"
python="${PYTHON:-python3}"
reqs=("$root/infra/local/requirements.txt")
if [[ "${1:-}" == "--build" ]]; then
  reqs+=("$root/infra/local/requirements-build.txt")
fi
stamp_name="stamp-$(basename "${reqs[-1]}" .txt)"
want="$(cat "${reqs[@]}" "$root/infra/local/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [[ -f "$venv/$stamp_name" && "$(cat "$venv/$stamp_name")" == "$want" ]]; then
  exit 0
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "creating $venv" >&2
  "$python" -m venv "$venv"
fi
args=()
for r in "${reqs[@]}"; do args+=(-r "$r"); done
echo "installing ${reqs[*]##*/} into $venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  -c "$root/infra/local/constraints.txt" "${args[@]}"
echo "$want" > "$venv/$stamp_name"
