#!/usr/bin/env bash
# Makes a drpilot backup (format v1, or the sharded v2 with --shard-size; docs/contracts.md)
# with ordinary tools: tar, zstd, sha256sum. Used by the tests, the local drill and anyone
# producing backups by hand.
#
#   scripts/make-backup.sh --src DIR --out DIR [--id ID] [--created-at RFC3339]
#                          [--git-sha SHA] [--state-tar FILE] [--format NAME]
#                          [--shard-size BYTES]
#
# --src        the files to back up; state.tar.zst holds them relative to DIR, and the
#              manifest lists each with its size and sha256
# --state-tar  package this (uncompressed) tar as state.tar.zst instead of one made from
#              --src (tests use it for hand-crafted archives); the manifest still
#              describes --src
# --format     the metadata format string (default drpilot.backup/v1, or
#              drpilot.backup/v2 with --shard-size)
# --shard-size make format v2: instead of state.tar.zst, shards state-0000.tar.zst,
#              state-0001.tar.zst, ... of consecutive files in byte order of their keys,
#              each closed once its files' sizes add up to BYTES or more (the last may
#              be smaller); metadata.json lists each shard's key range. v1-only options
#              (--state-tar) are refused with it, and so is a --src without files
set -euo pipefail
src="" out="" id="" created_at="" git_sha="" state_tar="" format="drpilot.backup/v1"
shard_size="" sharded=0 format_given=0
while (($#)); do
  case "$1" in
    --src) src="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --id) id="$2"; shift 2 ;;
    --created-at) created_at="$2"; shift 2 ;;
    --git-sha) git_sha="$2"; shift 2 ;;
    --state-tar) state_tar="$2"; shift 2 ;;
    --format) format="$2"; format_given=1; shift 2 ;;
    --shard-size) shard_size="$2"; sharded=1; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ -n "$src" && -n "$out" ]] || { echo "usage: $0 --src DIR --out DIR [...]" >&2; exit 2; }
[[ -d "$src" ]] || { echo "--src $src is not a directory" >&2; exit 2; }
if ((sharded)); then
  # At most 18 digits, so the running sum stays within bash's 64-bit arithmetic.
  [[ "$shard_size" =~ ^[0-9]{1,18}$ ]] && ((10#$shard_size > 0)) ||
    { echo "--shard-size $shard_size: must be a positive integer (bytes)" >&2; exit 2; }
  shard_size=$((10#$shard_size))
  [[ -z "$state_tar" ]] ||
    { echo "--state-tar makes a v1 backup; it cannot be used with --shard-size (v2)" >&2; exit 2; }
  ((format_given)) || format="drpilot.backup/v2"
fi
id="${id:-$(basename "$out")}"
created_at="${created_at:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}"
git_sha="${git_sha:-0000000000000000000000000000000000000000}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ((sharded)); then
  # Every file as "SIZE<tab>KEY", NUL-terminated, in byte order of KEY (the manifest's order:
  # sorting ./KEY or KEY is the same). One find for all the sizes, no process per file.
  (cd "$src" && find . -type f -printf '%s\t%P\0') | LC_ALL=C sort -z -t $'\t' -k2 > "$work/files"
  [[ -s "$work/files" ]] || { echo "--src $src: nothing to back up (a v2 backup needs at least one file)" >&2; exit 2; }
fi
mkdir -p "$out"

# JSON string escaping for file names (unicode passes through; quotes, backslashes and
# control characters are escaped).
json_string() {
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}
  s=${s//$'\t'/\\t}; s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}
  printf '"%s"' "$s"
}

# state.tar.zst (v1), or the shards (v2).
if ((sharded)); then
  shards=() keys=() sum=0
  # Packs the files in keys (./KEY each, as in v1) as the next shard, and lists it.
  shard() {
    local name
    name=$(printf 'state-%04d.tar.zst' "${#shards[@]}")
    printf './%s\0' "${keys[@]}" | (cd "$src" && tar --format=pax --no-recursion --null -T - -cf -) |
      zstd -q -T0 -o "$out/$name" -f
    shards+=("$(printf '{"name": "%s", "sha256": "%s", "size": %s, "first_key": %s, "last_key": %s, "objects": %s}' \
      "$name" "$(sha256sum "$out/$name" | cut -d' ' -f1)" "$(stat -c %s "$out/$name")" \
      "$(json_string "${keys[0]}")" "$(json_string "${keys[-1]}")" "${#keys[@]}")")
    keys=() sum=0
  }
  while IFS= read -r -d '' line; do
    keys+=("${line#*$'\t'}")
    sum=$((sum + ${line%%$'\t'*}))
    ((sum < shard_size)) || shard
  done < "$work/files"
  ((${#keys[@]} == 0)) || shard
elif [[ -n "$state_tar" ]]; then
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
if ((sharded)); then
  listed=$(printf ',\n    %s' "${shards[@]}")
  cat > "$out/metadata.json" <<JSON
{
  "format": $(json_string "$format"),
  "backup_id": $(json_string "$id"),
  "created_at": "$created_at",
  "source": {"git_sha": "$git_sha", "tool": "scripts/make-backup.sh"},
  "artifacts": {
    $(artifact manifests.tar.zst)
  },
  "shards": [${listed#,}
  ]
}
JSON
else
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
fi
