#!/usr/bin/env bash
# lunbridge benchmark: lunbridge serve vs qemu-nbd (both NBD over a unix socket, driven by
# fio's nbd engine) against one private RAM-backed tgtd LUN, plus libiscsi's iscsi-perf
# as the no-NBD ceiling for reads.
#
#   Tests/bench/bench.sh BINARY [OUTDIR]     (OUTDIR default .build/bench)
#
# Environment:
#   REPEATS          repetitions of every workload per server (default 3); the median is reported
#   BENCH_RUNTIME    seconds per workload run (default 5)
#   BENCH_SIZE_MIB   test area the fio workloads use (default 256)
#   BENCH_LUN_MIB    LUN size (default 512); the whole LUN is preconditioned, since
#                    iscsi-perf reads across all of it
#   BENCH_PHASES     which phases to run (default "throughput cpu"): throughput is the
#                    fio/iscsi-perf table, cpu the CPU-per-I/O table of cpu-per-io.sh
#                    (see there for BENCH_CPU_IOS_4K, BENCH_CPU_IOS_1M, BENCH_CPU_PAIRS)
#
# Writes OUTDIR/bench.md (also printed), OUTDIR/results.tsv, OUTDIR/fio/*.json (raw fio),
# OUTDIR/iscsi-perf/*.out, OUTDIR/cpu-per-io.{md,json,tsv}, OUTDIR/cpu-fio/*.json and the
# server logs. Loopback only. Everything it starts (tgtd, lunbridge, qemu-nbd,
# iscsi-perf, fio) is stopped on any exit.
set -euo pipefail

die() { echo "bench: $*" >&2; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 BINARY [OUTDIR]"
BIN=$1
[ -x "$BIN" ] || die "not an executable: $BIN"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
OUTDIR=${2:-.build/bench}
REPEATS=${REPEATS:-3}
RUNTIME=${BENCH_RUNTIME:-5}
SIZE_MIB=${BENCH_SIZE_MIB:-256}
LUN_MIB=${BENCH_LUN_MIB:-512}
BLOCK=512 # LUN logical block size (iscsi-perf counts in blocks)
PHASES=" ${BENCH_PHASES:-throughput cpu} "
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TGT=$HERE/../lib/tgtd.sh
# shellcheck source=Tests/bench/cpu-per-io.sh
. "$HERE/cpu-per-io.sh"

phase() { [[ $PHASES == *" $1 "* ]]; }
for t in $PHASES; do
  case $t in throughput | cpu) ;; *) die "BENCH_PHASES: unknown phase $t (throughput, cpu)" ;; esac
done
phase throughput || phase cpu || die "BENCH_PHASES names no phase"
! phase cpu || cpu_check_args

tools=(fio qemu-nbd python3 timeout pgrep)
! phase throughput || tools+=(iscsi-perf)
for t in "${tools[@]}"; do
  command -v "$t" >/dev/null || die "$t not found (fio, qemu-utils, libiscsi-bin, python3, procps)"
done
[ -x "$TGT" ] || die "missing $TGT"
[ "$SIZE_MIB" -le "$LUN_MIB" ] || die "BENCH_SIZE_MIB ($SIZE_MIB) > BENCH_LUN_MIB ($LUN_MIB)"

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
if phase throughput; then
  rm -rf "$OUTDIR/fio" "$OUTDIR/iscsi-perf"
  mkdir -p "$OUTDIR/fio" "$OUTDIR/iscsi-perf"
fi
mkdir -p "$OUTDIR/fio" # preconditioning writes here in every case
RESULTS=$OUTDIR/results.tsv
# Sockets live in a short private directory: OUTDIR may be too long for sun_path.
SOCKDIR=$(mktemp -d /tmp/lunbridge-bench-XXXXXX)
TGTDIR=$OUTDIR/tgtd
HZ=$(getconf CLK_TCK)
T0=$(date +%s)

declare -A PID=()
TGT_STARTED=

stop_pid() { # pid: SIGTERM, SIGKILL after 5 s, reap
  local p=$1 i
  kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for i in $(seq 50); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

cleanup() {
  local rc=$? s
  trap - EXIT INT TERM
  for s in "${!PID[@]}"; do stop_pid "${PID[$s]}"; done
  [ -z "$TGT_STARTED" ] || "$TGT" stop "$TGTDIR" >/dev/null 2>&1 || true
  rm -rf "$SOCKDIR"
  [ $rc -eq 0 ] || echo "bench: failed (rc $rc); logs in $OUTDIR" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '[bench %4ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }

# --- target ---------------------------------------------------------------------------
log "starting private tgtd (LUN ${LUN_MIB} MiB in /dev/shm)"
TGT_STARTED=1
URL=$(TGTD_LUN_SIZE_MIB=$LUN_MIB TGTD_BLOCK_SIZE=$BLOCK "$TGT" start "$TGTDIR")
log "target $URL"

# --- servers --------------------------------------------------------------------------
SERVERS=(lunbridge qemu-nbd)

wait_socket() { # name sock
  local i
  for i in $(seq 100); do
    [ -S "$2" ] && return 0
    kill -0 "${PID[$1]}" 2>/dev/null || die "$1 exited before serving; see $OUTDIR/$1.log"
    sleep 0.1
  done
  die "$1: no socket $2 within 10 s; see $OUTDIR/$1.log"
}

start_server() { # name
  local s=$1 sock=$SOCKDIR/$1.sock
  rm -f "$sock"
  case $s in
  lunbridge)
    "$BIN" serve "$URL" --listen "unix:$sock" </dev/null >"$OUTDIR/$s.log" 2>&1 &
    ;;
  qemu-nbd)
    # -t: keep serving after the preconditioning client leaves; --cache=none: no host
    # page cache in qemu's block layer (libiscsi does no caching either way).
    qemu-nbd -k "$sock" -f raw -t --cache=none "$URL" </dev/null >"$OUTDIR/$s.log" 2>&1 &
    ;;
  esac
  PID[$s]=$!
  wait_socket "$s" "$sock"
  if [ "$s" = lunbridge ]; then # it says so on stderr once ready
    local i
    for i in $(seq 100); do
      grep -q "lunbridge: serving .* at nbd+unix://" "$OUTDIR/$s.log" && break
      sleep 0.1
    done
  fi
  log "$s serving on $sock (pid ${PID[$s]})"
}

cpu_ticks() { # pid -> utime+stime in clock ticks (fields 14, 15; comm may contain spaces)
  local st
  st=$(cat "/proc/$1/stat")
  st=${st##*) }
  awk '{ print $12 + $13 }' <<<"$st"
}

# --- fio ------------------------------------------------------------------------------
# name rw bs iodepth
WORKLOADS=(
  "randread-4k-qd1   randread  4k 1"
  "randread-4k-qd32  randread  4k 32"
  "randwrite-4k-qd1  randwrite 4k 1"
  "randwrite-4k-qd32 randwrite 4k 32"
  "read-1m-qd8       read      1M 8"
  "write-1m-qd8      write     1M 8"
)

fio_run() { # server out.json rw bs depth [extra fio args...]
  local s=$1 out=$2 rw=$3 bs=$4 qd=$5
  shift 5
  timeout $((RUNTIME + 120)) fio --name=bench --ioengine=nbd \
    --uri="nbd+unix:///?socket=$SOCKDIR/$s.sock" \
    --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs=1 \
    --randrepeat=0 --norandommap --group_reporting \
    --output-format=json --output="$out" "$@" >/dev/null ||
    die "fio $rw bs=$bs qd=$qd on $s failed; see $out"
}

precondition() { # server: write the whole LUN once so every read hits allocated data
  log "$1: preconditioning ${LUN_MIB} MiB"
  fio_run "$1" "$OUTDIR/fio/precondition-$1.json" write 1M 8 --size="${LUN_MIB}M"
}

! phase throughput ||
  printf 'kind\tserver\tworkload\trep\tiops\tbw_bytes\tp50_ns\tp99_ns\tio_bytes\tcpu_s\n' >"$RESULTS"

for s in "${SERVERS[@]}"; do
  start_server "$s"
  precondition "$s"
done

run_workload() { # server workload rep
  local s=$1 w=$2 rep=$3 name rw bs qd t0 t1 out
  read -r name rw bs qd <<<"$w"
  out=$OUTDIR/fio/$name-$s-$rep.json
  t0=$(cpu_ticks "${PID[$s]}")
  fio_run "$s" "$out" "$rw" "$bs" "$qd" --size="${SIZE_MIB}M" --time_based --runtime="$RUNTIME"
  t1=$(cpu_ticks "${PID[$s]}")
  kill -0 "${PID[$s]}" 2>/dev/null || die "$s died during $name; see $OUTDIR/$s.log"
  python3 - "$out" "$s" "$name" "$rep" "$(((t1 - t0)))" "$HZ" >>"$RESULTS" <<'EOF'
import json, sys
path, server, name, rep, ticks, hz = sys.argv[1:]
text = open(path).read()
j = json.loads(text[text.index("{"):])  # fio's nbd engine may print a line before the JSON
job = j["jobs"][0]
d = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
pct = d["clat_ns"].get("percentile", {})
print("fio", server, name, rep, d["iops"], d["bw_bytes"], pct.get("50.000000", 0),
      pct.get("99.000000", 0), d["io_bytes"], int(ticks) / int(hz), sep="\t")
EOF
  log "$name $s rep $rep: $(tail -n1 "$RESULTS" | cut -f5 | cut -d. -f1) IOPS"
}

# iscsi-perf: reads only (random or sequential), queue depth -m, size -b blocks; it runs
# until interrupted and reports a running average, which we take from its last line.
iscsi_perf_run() { # name blocks depth random(0/1) rep
  local name=$1 blocks=$2 qd=$3 rnd=$4 rep=$5 out args=()
  out=$OUTDIR/iscsi-perf/$name-$rep.out
  args=(-m "$qd" -b "$blocks")
  [ "$rnd" = 1 ] && args+=(-r)
  # It prints its first figure only after a full second; allow for the login too.
  local secs=$((RUNTIME + 1))
  [ "$secs" -ge 3 ] || secs=3
  timeout -s INT -k 5 "$secs" iscsi-perf "${args[@]}" "$URL" >"$out" 2>&1 || true
  python3 - "$out" "$name" "$rep" "$((blocks * BLOCK))" >>"$RESULTS" <<'EOF'
import re, sys
path, name, rep, bs = sys.argv[1:]
avg = re.findall(r"iops average (\d+)", open(path, errors="replace").read())
if not avg:
    sys.exit("bench: no iops in " + path)
iops = int(avg[-1])
print("iscsi-perf", "iscsi-perf", name, rep, iops, iops * int(bs), 0, 0, 0, 0, sep="\t")
EOF
  log "$name iscsi-perf rep $rep: $(tail -n1 "$RESULTS" | cut -f5) IOPS"
}

phase throughput || REPEATS=0 # skips the loop below
for rep in $(seq "$REPEATS"); do
  # Alternate which server goes first on each repeat (A,B then B,A) so slow drifts in the
  # shared machine's load do not favour one of them.
  if [ $((rep % 2)) -eq 1 ]; then order=(lunbridge qemu-nbd); else order=(qemu-nbd lunbridge); fi
  for w in "${WORKLOADS[@]}"; do
    for s in "${order[@]}"; do run_workload "$s" "$w" "$rep"; done
  done
  iscsi_perf_run randread-4k-qd1 $((4096 / BLOCK)) 1 1 "$rep"
  iscsi_perf_run randread-4k-qd32 $((4096 / BLOCK)) 32 1 "$rep"
  iscsi_perf_run read-1m-qd8 $((1048576 / BLOCK)) 8 0 "$rep"
done

# Peak RSS of each server over the whole run (preconditioning included).
declare -A HWM=()
for s in "${SERVERS[@]}"; do
  HWM[$s]=$(awk '/^VmHWM:/ { print $2 }' "/proc/${PID[$s]}/status")
  printf '%s\t%s\n' "$s" "${HWM[$s]}"
done >"$OUTDIR/peak-rss-kib.tsv"

# CPU per I/O (cpu-per-io.sh), same tgtd, LUN and server processes.
! phase cpu || cpu_per_io_phase

for s in "${SERVERS[@]}"; do stop_pid "${PID[$s]}"; unset "PID[$s]"; done
"$TGT" stop "$TGTDIR" >/dev/null 2>&1 || true
TGT_STARTED=

WALL=$(($(date +%s) - T0))
if phase throughput; then
  python3 "$HERE/report.py" "$RESULTS" "${HWM[lunbridge]}" "${HWM[qemu-nbd]}" \
    "$REPEATS" "$RUNTIME" "$SIZE_MIB" "$LUN_MIB" "$WALL" >"$OUTDIR/bench.md"
fi
if phase cpu; then
  cpu_per_io_report
  ! phase throughput || cat "$OUTDIR/cpu-per-io.md" >>"$OUTDIR/bench.md"
fi
if phase throughput; then
  cat "$OUTDIR/bench.md"
  log "done in ${WALL}s; report $OUTDIR/bench.md"
else
  cat "$OUTDIR/cpu-per-io.md"
  log "done in ${WALL}s; report $OUTDIR/cpu-per-io.md"
fi
