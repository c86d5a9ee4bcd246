#!/usr/bin/env bash
# ALUA moves in the VM: lunbridge attach vs open-iscsi + dm-multipath (their defaults:
# scsi_dh_alua, the alua prioritizer, group_by_prio) on one LIO LUN whose two target port
# groups are moved during fio (Tests/bench/vm-alua-guest.sh says which moves). A bench,
# not a test: it reports each initiator's longest write wait and fio's errors.
#
#   Tests/bench/vm-alua.sh LUNBRIDGE [OUTDIR]     (make bench-alua; part of make bench)
#
# Environment: STEP (seconds between moves, 12), INITIATORS, VM_TIMEOUT (900).
# Writes OUTDIR/alua.tsv, OUTDIR/vm-alua.md (also printed) and the guest's logs.
set -uo pipefail

die() { echo "vm-alua: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 LUNBRIDGE [OUTDIR]"
LB=$(realpath -e "$1") || die "no such binary: $1"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUTDIR=${2:-$REPO/.build/bench-alua}
mkdir -p "$OUTDIR" && OUTDIR=$(realpath "$OUTDIR") || die "cannot create $OUTDIR"
for t in iscsid iscsiadm multipathd fio python3; do
  command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || [ -x "/sbin/$t" ] ||
    die "$t not found: apt-get install -y open-iscsi multipath-tools fio; Tests/vm/vm-deps.sh"
done
mkdir -p "$OUTDIR/bin"
cp -p "$LB" "$OUTDIR/bin/lunbridge" && cp "$HERE/vm-alua-guest.sh" "$OUTDIR/bin/" || die "cannot snapshot into $OUTDIR/bin"
rm -f "$OUTDIR/alua.tsv" "$OUTDIR/vm-alua.md"
export STEP=${STEP:-12} INITIATORS=${INITIATORS:-lunbridge dm-multipath}
RESULTDIR=$OUTDIR VM_TIMEOUT=${VM_TIMEOUT:-900} VM_QUIET=${VM_QUIET:-1} \
  "$REPO/Tests/vm/vm-run.sh" /usr/bin/env "STEP=$STEP" "INITIATORS=$INITIATORS" \
  "$OUTDIR/bin/vm-alua-guest.sh" "$OUTDIR/bin/lunbridge" "$REPO" "$OUTDIR"
rc=$?
[ $rc -eq 0 ] || { echo "vm-alua: the guest run failed (exit $rc):" >&2; tail -30 "$OUTDIR/stderr" >&2 2>/dev/null; }
[ -s "$OUTDIR/alua.tsv" ] || exit $((rc ? rc : 1))
{
  echo "# ALUA moves in the VM: lunbridge vs open-iscsi + dm-multipath"
  echo
  echo "One LIO LUN, two target port groups on two portals; during fio (4 KiB random writes,"
  echo "depth 1, O_DIRECT) the groups are swapped, moved back, one made unavailable, brought"
  echo "back through an 8 s transition, and both put in standby for 10 s ($STEP s apart)."
  echo "TCG-emulated guest; one run per initiator."
  echo
  echo "| initiator | longest write wait s | writes | fio error |"
  echo "| --- | --- | --- | --- |"
  tail -n +2 "$OUTDIR/alua.tsv" | while IFS=$'\t' read -r ini w n e; do echo "| $ini | $w | $n | $e |"; done
  echo
  sed 's/^/    /' "$OUTDIR/env.txt" 2>/dev/null
} | tee "$OUTDIR/vm-alua.md"
exit $rc
