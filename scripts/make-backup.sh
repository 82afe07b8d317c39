#!/usr/bin/env bash
# Makes a drpilot backup (format v1, docs/contracts.md) with ordinary tools: tar, zstd,
# sha256sum. Used by the tests, the local drill and anyone producing backups by hand.
#
#   scripts/make-backup.sh --src DIR --out DIR [--id ID] [--created-at RFC3339]
#                          [--git-sha SHA] [--state-tar FILE] [--format NAME]
#
# --src        the files to back up; state.tar.zst holds them relative to DIR, and the
#              manifest lists each with its size and sha256
# --state-tar  package this (uncompressed) tar as state.tar.zst instead of one made from
#              --src (tests use it for hand-crafted archives); the manifest still
#              describes --src
# --format     the metadata format string (default drpilot.backup/v1)
set -euo pipefail
src="" out="" id="" created_at="" git_sha="" state_tar="" format="drpilot.backup/v1"
while (($#)); do
  case "$1" in
    --src) src="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --id) id="$2"; shift 2 ;;
    --created-at) created_at="$2"; shift 2 ;;
    --git-sha) git_sha="$2"; shift 2 ;;
    --state-tar) state_tar="$2"; shift 2 ;;
    --format) format="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ -n "$src" && -n "$out" ]] || { echo "usage: $0 --src DIR --out DIR [...]" >&2; exit 2; }
[[ -d "$src" ]] || { echo "--src $src is not a directory" >&2; exit 2; }
id="${id:-$(basename "$out")}"
created_at="${created_at:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}"
git_sha="${git_sha:-0000000000000000000000000000000000000000}"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# JSON string escaping for file names (unicode passes through; quotes, backslashes and
# control characters are escaped).
json_string() {
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}
  s=${s//$'\t'/\\t}; s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}
  printf '"%s"' "$s"
}

# state.tar.zst
if [[ -n "$state_tar" ]]; then
  zstd -q -f -T0 "$state_tar" -o "$out/state.tar.zst"
else
  (cd "$src" && find . -mindepth 1 \( -type f -o -type d \) -print0 | LC_ALL=C sort -z |
    tar --format=pax --no-recursion --null -T - -cf -) | zstd -q -T0 -o "$out/state.tar.zst" -f
fi

# manifests.tar.zst: one manifest listing every file under --src.
{
  printf '{"objects": ['
  first=1
  while IFS= read -r -d '' path; do
    rel="${path#./}"
    size=$(stat -c %s "$src/$rel")
    sum=$(sha256sum -- "$src/$rel" | cut -d' ' -f1)
    ((first)) || printf ','
    first=0
    printf '\n  {"key": %s, "size": %s, "sha256": "%s"}' "$(json_string "$rel")" "$size" "$sum"
  done < <(cd "$src" && find . -type f -print0 | LC_ALL=C sort -z)
  printf '\n]}\n'
} > "$work/state.json"
tar -C "$work" --format=pax -cf - state.json | zstd -q -o "$out/manifests.tar.zst" -f

artifact() {
  printf '"%s": {"sha256": "%s", "size": %s}' "$1" \
    "$(sha256sum "$out/$1" | cut -d' ' -f1)" "$(stat -c %s "$out/$1")"
}
cat > "$out/metadata.json" <<JSON
{
  "format": $(json_string "$format"),
  "backup_id": $(json_string "$id"),
  "created_at": "$created_at",
  "source": {"git_sha": "$git_sha", "tool": "scripts/make-backup.sh"},
  "artifacts": {
    $(artifact state.tar.zst),
    $(artifact manifests.tar.zst)
  }
}
JSON
