#!/usr/bin/env bash
# tests/gpu/check_filter.sh TEST_BINARY FILTER_FILE
# Prints the gtest filter made of FILTER_FILE's patterns (one a line, # comments) after checking that
# each pattern matches at least one test of TEST_BINARY; exits 1 naming every pattern that matches
# none, so a renamed test cannot silently drop out of the memcheck run.
set -euo pipefail
binary=$1 file=$2
patterns=()
while IFS= read -r line; do
  line=${line%%#*}
  line=$(echo "$line" | tr -d '[:space:]')
  [ -n "$line" ] && patterns+=("$line")
done < "$file"
if [ ${#patterns[@]} -eq 0 ]; then
  echo "check_filter: $file has no pattern" >&2
  exit 1
fi
missing=()
for p in "${patterns[@]}"; do
  count=$("$binary" --gtest_list_tests --gtest_filter="$p" | grep -c '^  ' || true)
  [ "$count" -gt 0 ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "check_filter: no test of $(basename "$binary") matches: ${missing[*]}" >&2
  exit 1
fi
(IFS=:; echo "${patterns[*]}")
