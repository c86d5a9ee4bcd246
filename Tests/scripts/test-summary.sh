#!/usr/bin/env bash
# Prints one closing line "tests: N passed, N failed" from an XCTest log: the last
# "Executed N tests, with F failures" line is the summary of the whole run.
set -euo pipefail
log=${1:?usage: test-summary.sh LOG}
line=$(grep -E 'Executed [0-9]+ tests?, with [0-9]+ failures?' "$log" | tail -n 1 || true)
if [ -z "$line" ]; then
  echo "tests: 0 passed, 1 failed (no XCTest summary found in $log)"
  exit 1
fi
total=$(sed -E 's/.*Executed ([0-9]+) tests?.*/\1/' <<<"$line")
failed=$(sed -E 's/.*with ([0-9]+) failures?.*/\1/' <<<"$line")
echo "tests: $((total - failed)) passed, $failed failed"
