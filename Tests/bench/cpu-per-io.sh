#!/usr/bin/env bash
# CPU per I/O phase of the lunbridge benchmark: the server's CPU seconds (utime+stime of
# the server process, fields 14 and 15 of /proc/PID/stat, in clock ticks) over a FIXED
# number of fio I/Os, lunbridge serve and qemu-nbd alternating on the same LUN, median of
# BENCH_CPU_PAIRS pairs.
#
# bench.sh sources this file and calls cpu_per_io_phase with its tgtd and both servers up
# (it shares bench.sh's start_server, fio_run, cpu_ticks, log, die, PID, SOCKDIR, ...).
# Run on its own it is bench.sh with only this phase (still its own tgtd, servers and
# preconditioning):
#
#   Tests/bench/cpu-per-io.sh BINARY [OUTDIR]    ==  BENCH_PHASES=cpu Tests/bench/bench.sh BINARY [OUTDIR]
#
# Environment (besides bench.sh's):
#   BENCH_CPU_IOS_4K   I/Os per run for the 4 KiB workloads (default 40000)
#   BENCH_CPU_IOS_1M   I/Os per run for the 1 MiB workload (default 3000)
#   BENCH_CPU_PAIRS    lunbridge/qemu-nbd pairs per workload (default 3); the order
#                      alternates, lunbridge first in odd pairs, qemu-nbd first in even ones
#
# Each run also records tgtd's CPU (all its threads, /proc/PID/stat) and fio's (from its
# JSON) per I/O, so the report can say where the CPU of one I/O goes on this machine.
#
# Writes OUTDIR/cpu-per-io.tsv (one row per run), OUTDIR/cpu-per-io.md (also printed),
# OUTDIR/cpu-per-io.json and OUTDIR/cpu-fio/*.json (raw fio).

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  BENCH_PHASES=cpu exec "$(dirname "${BASH_SOURCE[0]}")/bench.sh" "$@"
fi

CPU_IOS_4K=${BENCH_CPU_IOS_4K:-40000}
CPU_IOS_1M=${BENCH_CPU_IOS_1M:-3000}
CPU_PAIRS=${BENCH_CPU_PAIRS:-3}

# name rw bs iodepth target(max lunbridge/qemu-nbd CPU per I/O ratio)
CPU_WORKLOADS=(
  "randread-4k-qd16  randread  4k 16 0.8"
  "randread-4k-qd32  randread  4k 32 0.8"
  "randwrite-4k-qd16 randwrite 4k 16 0.8"
  "randwrite-4k-qd32 randwrite 4k 32 0.8"
  "read-1m-qd4       read      1M 4  1.0"
)

cpu_check_args() {
  local v
  for v in CPU_IOS_4K CPU_IOS_1M CPU_PAIRS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v: not a positive integer: ${!v}"
  done
}

# Says which process is measured and why it is the server: the PID is $! of the command
# start_server put in the background (bash forks and execs it, neither server forks or
# daemonizes here), checked against /proc/PID/exe and cmdline. Child processes would not
# be counted (their time lands in cutime/cstime only once reaped), so they are listed.
cpu_describe_pid() { # server
  local s=$1 p=${PID[$1]} exe cmd kids threads
  kill -0 "$p" 2>/dev/null || die "$s (pid $p) is not running"
  exe=$(readlink "/proc/$p/exe" 2>/dev/null || echo '?')
  cmd=$(tr '\0' ' ' <"/proc/$p/cmdline")
  cmd=${cmd% }
  threads=$(awk '/^Threads:/ { print $2 }' "/proc/$p/status")
  kids=$(pgrep -P "$p" | tr '\n' ' ' || true)
  case $s in
  lunbridge) [ "$exe" = "$(readlink -f "$BIN")" ] || die "pid $p is $exe, not $BIN" ;;
  qemu-nbd) [[ $exe == */qemu-nbd ]] || die "pid $p is $exe, not qemu-nbd" ;;
  esac
  log "cpu: $s: measuring pid $p = \$! of the server start_server launched;" \
    "exe $exe; $threads threads; children: ${kids:-none}; cmdline: $cmd"
  printf '%s\t%s\t%s\t%s\n' "$s" "$p" "$exe" "$cmd" >>"$OUTDIR/cpu-per-io-pids.tsv"
}

cpu_run() { # server workload pair position
  local s=$1 w=$2 pair=$3 pos=$4 name rw bs qd tgt n bytes out t0 t1 g0 g1 p=${PID[$1]}
  read -r name rw bs qd tgt <<<"$w"
  case $bs in
  4k) n=$CPU_IOS_4K bytes=4096 ;;
  1M) n=$CPU_IOS_1M bytes=1048576 ;;
  *) die "cpu: no I/O count for bs $bs" ;;
  esac
  out=$OUTDIR/cpu-fio/$name-$s-$pair.json
  # io_size > size makes fio wrap around the area; number_ios stops it at n I/Os too.
  g0=$(cpu_ticks "$TGTD_PID")
  t0=$(cpu_ticks "$p")
  fio_run "$s" "$out" "$rw" "$bs" "$qd" --size="${SIZE_MIB}M" \
    --io_size=$((n * bytes)) --number_ios="$n"
  t1=$(cpu_ticks "$p")
  g1=$(cpu_ticks "$TGTD_PID")
  kill -0 "$p" 2>/dev/null || die "$s died during cpu $name; see $OUTDIR/$s.log"
  python3 - "$out" "$s" "$p" "$name" "$pair" "$pos" "$n" "$t0" "$t1" "$HZ" "$((g1 - g0))" \
    >>"$OUTDIR/cpu-per-io.tsv" <<'EOF' || die "cpu: cannot read $out"
import json, sys
path, server, pid, name, pair, pos, want, t0, t1, hz, target_ticks = sys.argv[1:]
text = open(path).read()
j = json.loads(text[text.index("{"):])  # fio's nbd engine may print a line before the JSON
job = j["jobs"][0]
d = job["read"] if job["read"]["total_ios"] > 0 else job["write"]
ios = d["total_ios"]
if ios <= 0:
    sys.exit("no I/Os in " + path)
ticks = int(t1) - int(t0)
us = ticks / int(hz) * 1e6 / ios
# The other two processes of the I/O, over the same run: tgtd (all its threads) and fio
# (its own account: usr_cpu and sys_cpu are per cent of the job's run time).
target_us = int(target_ticks) / int(hz) * 1e6 / ios
client_us = (job["usr_cpu"] + job["sys_cpu"]) / 100 * job["job_runtime"] * 1e3 / ios
print(name, pair, pos, server, pid, want, ios, t0, t1, ticks, hz, f"{us:.3f}",
      f"{d['iops']:.0f}", target_ticks, f"{target_us:.3f}", f"{client_us:.3f}", sep="\t")
EOF
  log "cpu $name pair $pair $s: $(tail -n1 "$OUTDIR/cpu-per-io.tsv" |
    awk -F'\t' '{ printf "%d I/Os, %d ticks, %.2f µs CPU/I/O, %s IOPS", $7, $10, $12, $13 }')"
}

cpu_per_io_phase() {
  local pair w s pos order
  cpu_check_args
  rm -rf "$OUTDIR/cpu-fio"
  mkdir -p "$OUTDIR/cpu-fio"
  : >"$OUTDIR/cpu-per-io-pids.tsv"
  printf 'workload\tpair\tposition\tserver\tpid\tios_wanted\tios\tticks_before\tticks_after\tticks\thz\tcpu_us_per_io\tiops\ttarget_ticks\ttarget_us_per_io\tclient_us_per_io\n' \
    >"$OUTDIR/cpu-per-io.tsv"
  log "cpu: ${CPU_PAIRS} pairs; ${CPU_IOS_4K} I/Os per 4 KiB run, ${CPU_IOS_1M} per 1 MiB run;" \
    "utime+stime from /proc/PID/stat, CLK_TCK $HZ"
  for s in "${SERVERS[@]}"; do cpu_describe_pid "$s"; done
  TGTD_PID=$("$TGT" pid "$TGTDIR") || die "cpu: the bench's tgtd is not running"
  for pair in $(seq "$CPU_PAIRS"); do
    if [ $((pair % 2)) -eq 1 ]; then order=(lunbridge qemu-nbd); else order=(qemu-nbd lunbridge); fi
    for w in "${CPU_WORKLOADS[@]}"; do
      pos=0
      for s in "${order[@]}"; do
        pos=$((pos + 1))
        cpu_run "$s" "$w" "$pair" "$pos"
      done
    done
  done
}

cpu_per_io_report() { # after the servers are stopped
  local w targets=()
  for w in "${CPU_WORKLOADS[@]}"; do
    # shellcheck disable=SC2086 # word splitting on purpose
    set -- $w
    targets+=("$1=$5")
  done
  python3 "$HERE/cpu-report.py" "$OUTDIR/cpu-per-io.tsv" "$OUTDIR/cpu-per-io-pids.tsv" \
    "$OUTDIR/cpu-per-io.json" "$CPU_PAIRS" "$SIZE_MIB" "$LUN_MIB" "${targets[@]}" \
    >"$OUTDIR/cpu-per-io.md" || die "cpu-report.py failed"
}
