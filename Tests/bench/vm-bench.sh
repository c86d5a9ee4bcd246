#!/usr/bin/env bash
# Kernel-path benchmark in the VM: lunbridge attach (/dev/nbdX) vs qemu-nbd -c (/dev/nbdY)
# vs open-iscsi (/dev/sdX), fio libaio O_DIRECT on each block device, one private tgtd LUN
# on the guest's loopback. Runs Tests/bench/vm-bench-guest.sh through Tests/vm/vm-run.sh.
#
#   Tests/bench/vm-bench.sh LUNBRIDGE [OUTDIR]        (OUTDIR default .build/vm-bench)
#
# Environment (passed to the guest): REPEATS (2), BENCH_RUNTIME (4 s), BENCH_SIZE_MIB (128),
# BENCH_LUN_MIB (256); VM_TIMEOUT (default 1200 s) and the other vm-run.sh variables.
#
# Needs Tests/vm/vm-deps.sh's packages and open-iscsi installed on this host (the guest
# runs the host's binaries): apt-get install -y open-iscsi
#
# Writes OUTDIR/vm-bench.md (also printed), OUTDIR/runs.tsv, OUTDIR/fio/*.json, OUTDIR/env.txt
# and vm-run.sh's files (stdout, stderr, rc, console.log, boot-seconds, total-seconds).
# The guest runs under TCG emulation: absolute figures mean nothing, only the ratios
# between devices of one run do.
set -uo pipefail

die() { echo "vm-bench: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 LUNBRIDGE [OUTDIR]"
LB=$(realpath -e "$1") || die "no such binary: $1"
[ -x "$LB" ] || die "not executable: $LB"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUTDIR=${2:-$REPO/.build/vm-bench}
mkdir -p "$OUTDIR" && OUTDIR=$(realpath "$OUTDIR") || die "cannot create $OUTDIR"

for t in iscsid iscsiadm; do
  command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || die "$t not found: apt-get install -y open-iscsi"
done
for t in qemu-nbd fio tgtd python3; do
  command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || die "$t not found: run Tests/vm/vm-deps.sh"
done

# Snapshot the binary and the guest script: the guest reads host files live over 9p, so a
# rebuild or an edit during the ~6 min run would change them under the running guest
# (bash reads a script as it goes; a replaced binary crashed the serving process).
mkdir -p "$OUTDIR/bin"
cp -p "$LB" "$OUTDIR/bin/lunbridge" && cp "$HERE/vm-bench-guest.sh" "$OUTDIR/bin/" || die "cannot snapshot into $OUTDIR/bin"
echo "$LB" >"$OUTDIR/bin/source"

export REPEATS=${REPEATS:-2} BENCH_RUNTIME=${BENCH_RUNTIME:-4} BENCH_SIZE_MIB=${BENCH_SIZE_MIB:-128}
export BENCH_LUN_MIB=${BENCH_LUN_MIB:-256}
t0=$(date +%s)
# vng does not pass this environment into the guest: hand it over with env(1).
RESULTDIR=$OUTDIR VM_TIMEOUT=${VM_TIMEOUT:-1200} VM_QUIET=${VM_QUIET:-1} \
  "$REPO/Tests/vm/vm-run.sh" /usr/bin/env "REPEATS=$REPEATS" "BENCH_RUNTIME=$BENCH_RUNTIME" \
  "BENCH_SIZE_MIB=$BENCH_SIZE_MIB" "BENCH_LUN_MIB=$BENCH_LUN_MIB" \
  "$OUTDIR/bin/vm-bench-guest.sh" "$OUTDIR/bin/lunbridge" "$REPO" "$OUTDIR"
rc=$?
wall=$(($(date +%s) - t0))
if [ $rc -ne 0 ]; then
  echo "vm-bench: the guest run failed (exit $rc); its stderr:" >&2
  tail -30 "$OUTDIR/stderr" >&2 2>/dev/null
  exit $rc
fi
python3 "$HERE/vm-report.py" "$OUTDIR" "$wall" >"$OUTDIR/vm-bench.md" || die "vm-report.py failed"
cat "$OUTDIR/vm-bench.md"
echo "vm-bench: done in ${wall}s; report $OUTDIR/vm-bench.md" >&2
