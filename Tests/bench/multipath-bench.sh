#!/usr/bin/env bash
# Multipath benchmark (issue #4, "Must measure"), through `lunbridge serve` and fio's nbd
# engine, over the two veth NICs of Tests/lib/netns.sh:
#
#  1. Throughput: both NICs limited to RATE (tbf on both ends of each veth: the initiator
#     side shapes writes, the target side reads). Sequential 1 MiB reads and writes at
#     depth QD through one path (one URL), two paths with --policy service-time, and two
#     paths with --policy round-robin; REPEATS interleaved repeats, medians, and the
#     ratio two-path / one-path (target >= 1.8x).
#  2. Failover stall: no rate limit; a depth-1 4 KiB random write fio through two paths
#     (--policy round-robin, so the faulted path always carries every other I/O) while
#     one path is faulted, STALL_REPEATS times per fault; the longest time any I/O waited
#     (fio lat max) as min / median / max. Faults: link-down and black hole (no reset:
#     only the 2 s + 2 s keepalive notices; target <= 5 s), tgtadm connection delete and
#     nft tcp-reset (the connection is reset at once; target <= 1 s).
#
#   Tests/bench/multipath-bench.sh BINARY [OUTDIR]    (OUTDIR default .build/bench-multipath)
#
# Environment: REPEATS (3), BENCH_RUNTIME (8 s per throughput run), RATE (200mbit),
#   QD (16), STALL_REPEATS (5), STALL_FAULTS ("link-down blackhole conn-delete reset"),
#   MPATH_BENCH_PARTS ("throughput stall").
# Writes OUTDIR/multipath-bench.md (also printed), OUTDIR/throughput.tsv,
# OUTDIR/stall.tsv, OUTDIR/fio/*.json and the server logs. Needs root. Everything it
# makes (namespaces, veths, qdiscs, nft tables, tgtd, temp files) is removed on any exit.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "multipath-bench: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 BINARY [OUTDIR]"
BIN=$1
[ -x "$BIN" ] || die "not an executable: $BIN"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
OUT=${2:-.build/bench-multipath}
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, tgtd)"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../multipath/lib.sh
. "$HERE/../multipath/lib.sh"
for t in "ip iproute2" "tc iproute2" "nft nftables" "tgtd tgt" "fio fio" "python3 python3"; do
  # shellcheck disable=SC2086
  mp_need $t || die "missing tools (above)"
done
mp_has_multipath || "$BIN" serve --help 2>&1 | grep -q -- '--policy' ||
  die "$BIN has no multipath (serve --policy): build lunbridge with multipath"

REPEATS=${REPEATS:-3}
RUNTIME=${BENCH_RUNTIME:-8}
RATE=${RATE:-200mbit}
QD=${QD:-16}
STALL_REPEATS=${STALL_REPEATS:-5}
STALL_FAULTS=${STALL_FAULTS:-link-down blackhole conn-delete reset}
PARTS=${MPATH_BENCH_PARTS:-throughput stall}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/fio" "$OUT/logs"
mkdir -p "$OUT/fio" "$OUT/logs"
TAG=b$(($$ % 10000000))
WORK=$(mktemp -d /tmp/lbmp-b-XXXXXX)
NETNS_UP=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -z "$FIO_PID" ] || { kill -KILL "$FIO_PID" 2>/dev/null; wait "$FIO_PID" 2>/dev/null; }
  mp_stop_server || true
  [ -z "$NETNS_UP" ] || "$NETNS" teardown "$TAG" || true
  rm -rf "$WORK"
  [ $rc -eq 0 ] || echo "multipath-bench: failed (rc $rc); logs in $OUT" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mp_init
log() { mp_log "$*" >&2; }

log "namespaces and tgtd (tag $TAG)"
NETNS_UP=1
"$NETNS" setup "$TAG" >/dev/null

start() { # name urls... [-- options]
  local n=$1
  shift
  mp_start_server "$n" "$OUT/logs/$n.log" "$@" || die "lunbridge serve $n did not start; see $OUT/logs/$n.log"
  sleep 1 # both sessions logged in before fio starts
}

# --- 1. throughput ------------------------------------------------------------------
CONFIGS=(single service-time round-robin)
start_config() { # config rep
  case $1 in
  single) start "single-$2" "$URL1" ;;
  service-time) start "st-$2" "$URL1" "$URL2" -- --policy service-time ;;
  round-robin) start "rr-$2" "$URL1" "$URL2" -- --policy round-robin ;;
  esac
}

if [[ " $PARTS " == *" throughput "* ]]; then
  "$NETNS" limit "$TAG" 1 "$RATE"
  "$NETNS" limit "$TAG" 2 "$RATE"
  printf 'config\tworkload\trep\tbw_bytes\tiops\n' >"$OUT/throughput.tsv"
  for rep in $(seq "$REPEATS"); do
    # Rotate the order per repeat so drifts in the shared machine's load favour no config.
    order=()
    for i in 0 1 2; do order+=("${CONFIGS[$(((i + rep - 1) % 3))]}"); done
    for c in "${order[@]}"; do
      start_config "$c" "$rep"
      for w in read write; do
        json=$OUT/fio/$w-$c-$rep.json
        mp_fio "$json" --rw="$w" --bs=1M --iodepth="$QD" --size=256M --time_based --runtime="$RUNTIME" ||
          die "fio $w through $c failed; see $json.stderr"
        python3 - "$json" "$c" "$w" "$rep" >>"$OUT/throughput.tsv" <<'EOF'
import json, sys
path, c, w, rep = sys.argv[1:]
t = open(path).read()
job = json.loads(t[t.index("{"):])["jobs"][0][w]
print(c, w, rep, job["bw_bytes"], job["iops"], sep="\t")
EOF
        log "$w 1M qd$QD $c rep $rep: $(tail -n1 "$OUT/throughput.tsv" | awk '{ printf "%.1f MB/s", $4 / 1e6 }')"
      done
      mp_stop_server || die "lunbridge serve $c had died; see $OUT/logs"
    done
  done
  "$NETNS" unlimit "$TAG" 1
  "$NETNS" unlimit "$TAG" 2
fi

# --- 2. failover stall --------------------------------------------------------------
if [[ " $PARTS " == *" stall "* ]]; then
  printf 'fault\trep\tpath\tmax_wait_s\tfio_error\n' >"$OUT/stall.tsv"
  for rep in $(seq "$STALL_REPEATS"); do
    for f in $STALL_FAULTS; do
      p=$(((rep % 2) + 1)) # alternate the faulted path
      case $f in link-down | blackhole) hold=6 ;; reset) hold=2 ;; conn-delete) hold=0 ;;
      *) die "unknown fault $f" ;; esac
      start "stall-$f-$rep" "$URL1" "$URL2" -- --policy round-robin
      json=$OUT/fio/stall-$f-$rep.json
      mp_fio_bg "$json" --rw=randwrite --bs=4k --iodepth=1 --size=64M --time_based --runtime=$((2 + hold + 4))
      sleep 2
      case $f in
      link-down) "$NETNS" link-down "$TAG" $p; sleep $hold; "$NETNS" link-up "$TAG" $p ;;
      blackhole) "$NETNS" blackhole "$TAG" $p; sleep $hold; "$NETNS" unblackhole "$TAG" $p ;;
      reset) "$NETNS" reset "$TAG" $p; sleep $hold; "$NETNS" unreset "$TAG" $p ;;
      conn-delete) "$NETNS" conn-delete "$TAG" $p >/dev/null ;;
      esac
      rc=0
      wait "$FIO_PID" || rc=$?
      FIO_PID=
      r=$(python3 "$JSONQ" fio "$json") || die "no fio result in $json"
      read -r err _ _ maxw _ _ <<<"$r"
      [ "$rc" = 0 ] || err="$err(rc $rc)"
      printf '%s\t%s\t%s\t%s\t%s\n' "$f" "$rep" "$p" "$maxw" "$err" >>"$OUT/stall.tsv"
      log "stall $f path $p rep $rep: longest I/O wait $maxw s (fio error $err)"
      mp_stop_server || log "lunbridge serve had died during $f rep $rep; see $OUT/logs/stall-$f-$rep.log"
    done
  done
fi

mp_stop_server || true
"$NETNS" teardown "$TAG"
NETNS_UP=
{
  echo "Host: $(uname -r), $(nproc) CPUs; lunbridge $(stat -c %y "$BIN" | cut -d. -f1) ($BIN)"
  echo "Run: REPEATS=$REPEATS BENCH_RUNTIME=$RUNTIME RATE=$RATE QD=$QD STALL_REPEATS=$STALL_REPEATS"
} >"$OUT/env.txt"
python3 "$HERE/multipath-report.py" "$OUT" >"$OUT/multipath-bench.md"
cat "$OUT/multipath-bench.md"
log "done; report $OUT/multipath-bench.md"
