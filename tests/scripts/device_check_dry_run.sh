#!/usr/bin/env bash
# tests/scripts/device_check_dry_run.sh: scripts/device_check.sh --dry-run exits 0 without a GPU,
# prints a time cap for every stage, and lists exactly the stages the script marks with `stage NAME`,
# in the same order; fails naming the difference.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
script="$root/scripts/device_check.sh"
out=$(env PATH="/usr/bin:/bin" bash "$script" --dry-run) || { echo "--dry-run exited $?" >&2; exit 1; }
listed=$(sed -n 's/^ *[0-9][0-9]*\. \([a-z0-9_]*\) *[0-9][0-9]*s .*/\1/p' <<< "$out")
marked=$(sed -n 's/^ *stage \([a-z0-9_]*\)$/\1/p' "$script")
if [ -z "$marked" ] || [ "$listed" != "$marked" ]; then
  echo "the dry run's stages differ from the stages the script runs:" >&2
  diff <(echo "$listed") <(echo "$marked") >&2 || true
  exit 1
fi
grep -q 'nothing was run' <<< "$out" || { echo "no closing line" >&2; exit 1; }
echo "device_check --dry-run: $(wc -l <<< "$listed") stages, each with its cap"
