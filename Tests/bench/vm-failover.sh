#!/usr/bin/env bash
# Failover stall in the VM (issue #4, "Must measure"): lunbridge attach (two paths,
# round-robin, keepalive 2 s + 2 s) vs open-iscsi + dm-multipath with their defaults, on
# the kernel block path, link-down / black hole / tcp-reset of one path while fio writes.
# Runs Tests/bench/vm-failover-guest.sh through Tests/vm/vm-run.sh; builds nothing. With the
# defaults it took 1120 s (boot included) on the shared 2-core machine under load;
# FAULTS="link-down blackhole" leaves out the reset runs (about 4 min less).
#
#   Tests/bench/vm-failover.sh LUNBRIDGE [OUTDIR]   (OUTDIR default .build/bench-failover)
#
# Environment (passed to the guest): REPEATS (5), FAULTS ("link-down blackhole reset"),
#   FAULT_AT (3), HOLD (18), HOLD_RESET (8), TAIL (2), INITIATORS ("lunbridge
#   dm-multipath"); VM_TIMEOUT (default 1800 s) and the other vm-run.sh variables.
# Needs Tests/vm/vm-deps.sh's packages plus open-iscsi, multipath-tools and nftables on
# this host (the guest runs the host's binaries).
#
# Writes OUTDIR/vm-failover.md (also printed): per fault and initiator the min / median /
# max over the repeats of the longest I/O wait, and a verdict against lunbridge's targets
# (<= keepalive interval + timeout + 1 s = 5 s for link-down and black hole, <= 1 s for a
# reset connection). Also OUTDIR/stall.tsv, OUTDIR/fio/*.json, OUTDIR/dm-config.txt (the
# effective dm-multipath and open-iscsi settings), OUTDIR/logs/ and vm-run.sh's files.
set -uo pipefail

die() { echo "vm-failover: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 LUNBRIDGE [OUTDIR]"
LB=$(realpath -e "$1") || die "no such binary: $1"
[ -x "$LB" ] || die "not executable: $LB"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUTDIR=${2:-$REPO/.build/bench-failover}
mkdir -p "$OUTDIR" && OUTDIR=$(realpath "$OUTDIR") || die "cannot create $OUTDIR"

for t in iscsid iscsiadm multipathd nft tgtd fio python3; do
  command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || [ -x "/sbin/$t" ] ||
    die "$t not found: apt-get install -y open-iscsi multipath-tools nftables; Tests/vm/vm-deps.sh"
done

# Snapshot the binary and the guest script: the guest reads host files live over 9p.
mkdir -p "$OUTDIR/bin"
cp -p "$LB" "$OUTDIR/bin/lunbridge" && cp "$HERE/vm-failover-guest.sh" "$OUTDIR/bin/" ||
  die "cannot snapshot into $OUTDIR/bin"
rm -f "$OUTDIR/stall.tsv" "$OUTDIR/vm-failover.md"

export REPEATS=${REPEATS:-5} FAULTS=${FAULTS:-link-down blackhole reset} FAULT_AT=${FAULT_AT:-3}
export HOLD=${HOLD:-18} HOLD_RESET=${HOLD_RESET:-8} TAIL=${TAIL:-2}
export INITIATORS=${INITIATORS:-lunbridge dm-multipath}
t0=$(date +%s)
# vng does not pass this environment into the guest: hand it over with env(1).
RESULTDIR=$OUTDIR VM_TIMEOUT=${VM_TIMEOUT:-1800} VM_QUIET=${VM_QUIET:-1} \
  "$REPO/Tests/vm/vm-run.sh" /usr/bin/env "REPEATS=$REPEATS" "FAULTS=$FAULTS" "FAULT_AT=$FAULT_AT" \
  "HOLD=$HOLD" "HOLD_RESET=$HOLD_RESET" "TAIL=$TAIL" "INITIATORS=$INITIATORS" \
  "$OUTDIR/bin/vm-failover-guest.sh" "$OUTDIR/bin/lunbridge" "$REPO" "$OUTDIR"
rc=$?
wall=$(($(date +%s) - t0))
if [ $rc -ne 0 ]; then
  echo "vm-failover: the guest run failed (exit $rc); its stderr:" >&2
  tail -30 "$OUTDIR/stderr" >&2 2>/dev/null
fi
[ -s "$OUTDIR/stall.tsv" ] || exit $((rc ? rc : 1))

python3 - "$OUTDIR" "$wall" "$rc" >"$OUTDIR/vm-failover.md" <<'EOF' || die "report failed"
import csv, statistics, sys, os
out, wall, rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = list(csv.DictReader(open(os.path.join(out, "stall.tsv")), delimiter="\t"))
env = open(os.path.join(out, "env.txt")).read().strip() if os.path.exists(os.path.join(out, "env.txt")) else ""
target = {"link-down": 5.0, "blackhole": 5.0, "reset": 1.0}
faults = list(dict.fromkeys(r["fault"] for r in rows))
inis = list(dict.fromkeys(r["initiator"] for r in rows))
print("# Failover stall in the VM: lunbridge vs open-iscsi + dm-multipath\n")
print("The longest time any I/O waited (fio write lat max, 4 KiB random writes at depth 1,")
print("O_DIRECT) while one of two paths is faulted; min / median / max over the repeats.")
print("TCG-emulated guest (no KVM); one tgtd LUN in a network namespace behind two veth pairs.\n")
print("| fault | initiator | runs | min s | median s | max s | hold s | fio errors |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
summary = {}
for f in faults:
    for i in inis:
        rs = [r for r in rows if r["fault"] == f and r["initiator"] == i]
        if not rs:
            continue
        w = [float(r["max_wait_s"]) for r in rs if r["max_wait_s"] != "NA"]
        errs = sum(1 for r in rs if r["fio_error"] != "0")
        summary[(f, i)] = (w, errs, rs[0]["hold_s"])
        if w:
            print(f"| {f} | {i} | {len(rs)} | {min(w):.2f} | {statistics.median(w):.2f} | {max(w):.2f} | {rs[0]['hold_s']} | {errs} |")
        else:
            print(f"| {f} | {i} | {len(rs)} | - | - | - | {rs[0]['hold_s']} | {errs} |")
print()
print("Targets (lunbridge): link-down and black hole <= keepalive interval + timeout + 1 s = 5 s;")
print("a reset connection <= 1 s. A stall close to the hold time means the I/O waited for the")
print("faulted path to come back rather than moving to the other path.\n")
for f in faults:
    if ("lunbridge" in [i for (ff, i) in summary if ff == f]):
        w, errs, hold = summary[(f, "lunbridge")]
        ok = bool(w) and max(w) <= target[f] and errs == 0
        verdict = "meets" if ok else "MISSES"
        line = f"- {f}: lunbridge {verdict} its target (<= {target[f]:.0f} s): worst {max(w):.2f} s" if w else f"- {f}: lunbridge: no result"
        if (f, "dm-multipath") in summary and summary[(f, "dm-multipath")][0]:
            d = summary[(f, "dm-multipath")][0]
            line += f"; dm-multipath (defaults) median {statistics.median(d):.2f} s, worst {max(d):.2f} s"
        print(line + ("" if errs == 0 else f" ({errs} fio errors)"))
print("\nPer run (faulted path: lunbridge alternates it; for dm-multipath it is the path of the")
print("active path group, the only one carrying I/O under the default failover grouping):\n")
print("| initiator | fault | rep | path | longest wait s | fio error | writes |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    print(f"| {r['initiator']} | {r['fault']} | {r['rep']} | {r['path']} | {r['max_wait_s']} | {r['fio_error']} | {r['ios']} |")
cfg = os.path.join(out, "dm-config.txt")
if os.path.exists(cfg):
    print("\nEffective open-iscsi + dm-multipath configuration (from dm-config.txt):\n")
    print("```")
    print(open(cfg).read().rstrip())
    print("```")
print("\n```")
print(env)
print(f"wall {wall} s (boot included); guest script exit {rc}")
print("```")
EOF
cat "$OUTDIR/vm-failover.md"
echo "vm-failover: done in ${wall}s; report $OUTDIR/vm-failover.md" >&2
exit $rc
