#!/usr/bin/env bash
# Prints one closing line "tests: N passed, N failed" for the whole `make test` run from
#   - an XCTest log: its last "Executed N tests, with F failures" line is the run's total;
#   - a check script's output: its last "<words> checks: N passed, F failed" line, such
#     as "vm checks: ..." (Tests/vm/guest-*.sh) or "multipath checks: ..."
#     (Tests/multipath/faults.sh).
# A log that is missing or has no summary counts as one failure.
set -uo pipefail
passed=0; failed=0
for log in "$@"; do
  if [ ! -f "$log" ]; then echo "test-summary: $log is missing" >&2; failed=$((failed + 1)); continue; fi
  line=$(grep -E 'Executed [0-9]+ tests?, with [0-9]+ failures?' "$log" | tail -n 1)
  if [ -n "$line" ]; then
    total=$(sed -E 's/.*Executed ([0-9]+) tests?.*/\1/' <<<"$line")
    f=$(sed -E 's/.*with ([0-9]+) failures?.*/\1/' <<<"$line")
    passed=$((passed + total - f)); failed=$((failed + f)); continue
  fi
  line=$(grep -E '^[a-z -]*checks: [0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
  if [ -n "$line" ]; then
    p=$(sed -E 's/^[a-z -]*checks: ([0-9]+) passed.*/\1/' <<<"$line")
    f=$(sed -E 's/^[a-z -]*checks: [0-9]+ passed, ([0-9]+) failed.*/\1/' <<<"$line")
    passed=$((passed + p)); failed=$((failed + f)); continue
  fi
  echo "test-summary: no summary line in $log" >&2; failed=$((failed + 1))
done
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
