#!/usr/bin/env bash
# Runs every fuzz target of lunbridge-fuzz (built with libFuzzer and AddressSanitizer by
# `make fuzz-build`) for SECONDS each, starting from the committed seed corpus in
# Tests/fuzz/corpus/TARGET. New inputs go to OUT/corpus/TARGET (never into the repository);
# a crash, a hang (-timeout) or a single allocation over 256 MiB (-malloc_limit_mb) is a
# failure, with its input saved under OUT/artifacts/. Prints one ok/not ok line per target
# and "fuzz checks: N passed, F failed".
#
#   Tests/fuzz/run.sh BINARY SECONDS OUT
set -uo pipefail
bin=$1; seconds=$2; out=$3
here=$(cd "$(dirname "$0")" && pwd)
targets=(pdu-framer text-keys login text-exchange data-in nbd-handshake nbd-request scsi)
. "$here/../lib/tap.sh"
tap_start fuzz "${#targets[@]}"
[ -x "$bin" ] || { note "fuzz: $bin is missing (make fuzz-build)"; finish; }
mkdir -p "$out/artifacts"
for t in "${targets[@]}"; do
  seeds="$here/corpus/$t"
  work="$out/corpus/$t"
  mkdir -p "$work"
  if [ ! -d "$seeds" ] || [ -z "$(ls -A "$seeds")" ]; then
    notok "$t: no seed corpus in $seeds"; continue
  fi
  log="$out/$t.log"
  LUNBRIDGE_FUZZ_TARGET=$t ASAN_OPTIONS=detect_leaks=0 "$bin" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-" \
    "$work" "$seeds" >"$log" 2>&1
  rc=$?
  runs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{print $2}')
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1)
  if [ "$rc" -eq 0 ] && [ -n "$runs" ]; then
    ok "$t: ${seconds} s, ${runs} inputs, ${cov:-cov: ?}, no crash, hang or oversized allocation"
  else
    notok "$t: libFuzzer exited $rc; see $log"
    grep -E 'ERROR|SUMMARY|Test unit written|malloc\(|timeout' "$log" | head -n 5 | sed 's/^/#   /'
  fi
done
finish
