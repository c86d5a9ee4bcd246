#!/usr/bin/env bash
# Multipath fault tests (issue #4, "Must show"), on the host, through the socket export.
#
#   Tests/multipath/faults.sh BINARY [OUTDIR]      (OUTDIR default .build/multipath-test)
#
# Two NICs (veth pairs) join an initiator and a target network namespace; a private tgtd
# in the target namespace listens on both (Tests/lib/netns.sh). `lunbridge serve`
# runs in the initiator namespace with one URL per NIC (?iface= bound) and an NBD unix
# socket; fio (ioengine=nbd, verify=crc32c, verify_backlog, verify_fatal=1) runs in the
# host namespace while each fault is injected and lifted:
#
#   link-down       NIC 1 down for 8 s, then up                          (randwrite)
#   blackhole       NIC 2's traffic dropped by nft for 8 s (no reset)     (randrw)
#   conn-delete     path 1's iSCSI connection deleted with tgtadm         (randwrite)
#   conn-storm      for 16 s, a connection deleted every second, paths in turn (randrw, depth 16)
#   tgtd-stop       tgtd SIGSTOP for 5 s, then SIGCONT                    (randrw)
#   all-down-short  both NICs down for 8 s (< no-path-retry 60 s)         (randwrite)
#   all-down-long   both NICs down for longer than --no-path-retry 5: writes get EIO;
#                   after the NICs return, a fresh fio verify pass succeeds
#
# Checks per fault: fio exits 0 with no verify error; the faulted path is marked failed
# while the fault lasts (when the fault outlasts keepalive detection); after it is lifted
# `lunbridge status NAME --json` shows every path active again, the failure and the
# reinstatement are counted, and the faulted path carries I/O again (its `ios` grows
# during a short fio pass); lunbridge serve is still running. The longest time any I/O
# waited (fio's lat max) is printed per fault and written to OUTDIR/stalls.tsv.
#
# Output: TAP-like "ok N - ..." / "not ok N - ..." lines, "# ..." notes, and a last line
# "multipath checks: N passed, F failed". Exit status 1 if any check failed.
#
# Environment:
#   MPATH_FAULTS  space-separated subset of the faults above (default: all, in that order)
#   MPATH_SINGLE  1 = development mode for a lunbridge without multipath: serve gets the
#                 first URL only and every status check fails as "no multipath"
#
# Needs root, iproute2, nftables, tgt, fio, python3. Everything it makes (namespaces,
# veths, nft tables, tgtd, the LUN in /dev/shm, temp files) is removed on any exit.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "faults: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 BINARY [OUTDIR]"
BIN=$1
[ -x "$BIN" ] || die "not an executable: $BIN"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
OUT=${2:-.build/multipath-test}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, tgtd)"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
missing=
mp_need ip iproute2 || missing=1
mp_need nft nftables || missing=1
mp_need tgtd tgt || missing=1
mp_need fio fio || missing=1
mp_need python3 python3 || missing=1
[ -z "$missing" ] || die "missing tools (above)"

FAULTS=${MPATH_FAULTS:-link-down blackhole conn-delete conn-storm tgtd-stop all-down-short all-down-long}
SINGLE=${MPATH_SINGLE:-0}
MP_SINGLE=$SINGLE
TAG=f$(($$ % 10000000))
WORK=$(mktemp -d /tmp/lbmp-f-XXXXXX)
NETNS_UP=
STORM_PID=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -z "$STORM_PID" ] || { kill "$STORM_PID" 2>/dev/null; wait "$STORM_PID" 2>/dev/null; }
  [ -z "$FIO_PID" ] || { kill -KILL "$FIO_PID" 2>/dev/null; wait "$FIO_PID" 2>/dev/null; }
  mp_stop_server || true
  [ -z "$NETNS_UP" ] || "$NETNS" teardown "$TAG" || true
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mp_init

# Checks per fault in a complete run (a fault that stops early is padded with "not ok" by
# Tests/lib/tap.sh, so the count never varies): fault_case makes 8, plus "seen failed"
# where the fault lasts long enough to be seen; all_down_long 8.
checks_of() {
  case $1 in
  conn-delete | conn-storm | tgtd-stop) echo 8 ;;
  link-down | blackhole | all-down-short) echo 9 ;;
  all-down-long) echo 8 ;;
  *) echo 1 ;; # "unknown fault"
  esac
}
. "$HERE/../lib/tap.sh"
plan=1
for f in $FAULTS; do plan=$((plan + $(checks_of "$f"))); done
tap_start multipath "$plan"
quiet() { "$@" >/dev/null; }

HAVE_STATUS=1
NO_STATUS_WHY=
if [ "$SINGLE" = 1 ]; then
  echo "# MPATH_SINGLE=1: development mode, one path, no status checks (those fail)"
  HAVE_STATUS= NO_STATUS_WHY="no multipath status in development mode (MPATH_SINGLE=1)"
elif ! "$BIN" serve --help 2>&1 | grep -q -- '--policy'; then
  notok "lunbridge serve takes several URLs (--policy): $BIN does not"
  finish
elif ! "$BIN" status --help 2>&1 | grep -q 'USAGE: lunbridge status'; then
  HAVE_STATUS= NO_STATUS_WHY="$BIN has no status command"
  echo "# $NO_STATUS_WHY: every check that needs it fails"
fi

mp_log "setting up namespaces and tgtd (tag $TAG)"
NETNS_UP=1
if ! "$NETNS" setup "$TAG" >"$OUT/netns-setup.log" 2>&1; then
  notok "two NICs and tgtd in network namespaces ($(tail -n 2 "$OUT/netns-setup.log" | tr '\n' ' '))"
  finish
fi
ok "two NICs between namespaces $NS_I and $NS_T, tgtd on $ADDR_T1:$PORT and $ADDR_T2:$PORT"

printf 'fault\tmax_wait_s\tmax_read_s\tmax_write_s\n' >"$OUT/stalls.tsv"

# no_status DESCRIPTION: a check that needs `lunbridge status` when there is none fails.
no_status() { notok "$1 ($NO_STATUS_WHY)"; }

# Field of path N (1 or 2) in a status file, "?" when missing.
pf() { mp_path_field "$1" "$2" "$3" 2>/dev/null || echo "?"; }
gt() { [[ "$1" =~ ^[0-9]+$ ]] && [[ "$2" =~ ^[0-9]+$ ]] && [ "$1" -gt "$2" ]; }

inject() { # fault paths
  case $1 in
  link-down) "$NETNS" link-down "$TAG" "$2" ;;
  blackhole) "$NETNS" blackhole "$TAG" "$2" ;;
  conn-delete) "$NETNS" conn-delete "$TAG" "$2" >/dev/null ;;
  conn-storm) # a connection deleted every second, the two paths in turn, in the background
    (
      i=0
      while :; do
        sleep 1
        i=$((i + 1))
        "$NETNS" conn-delete "$TAG" $(((i % 2) + 1)) >/dev/null 2>&1 || true
      done
    ) &
    STORM_PID=$!
    ;;
  tgtd-stop) "$NETNS" tgtd-stop "$TAG" ;;
  all-down-short | all-down-long) "$NETNS" all-down "$TAG" ;;
  esac
}
lift() { # fault paths
  case $1 in
  link-down) "$NETNS" link-up "$TAG" "$2" ;;
  blackhole) "$NETNS" unblackhole "$TAG" "$2" ;;
  conn-delete) : ;;
  conn-storm) kill "$STORM_PID" 2>/dev/null; wait "$STORM_PID" 2>/dev/null; STORM_PID= ;;
  tgtd-stop) "$NETNS" tgtd-cont "$TAG" ;;
  all-down-short | all-down-long) "$NETNS" all-up "$TAG" ;;
  esac
}

# Records and prints the longest I/O wait of a fio run; sets FIO_ERR and MAX_WAIT.
fio_result() { # fault json
  local r
  if r=$(python3 "$JSONQ" fio "$2" 2>&1); then
    read -r FIO_ERR FIO_RB FIO_WB MAX_WAIT RMAX WMAX <<<"$r"
    printf '%s\t%s\t%s\t%s\n' "$1" "$MAX_WAIT" "$RMAX" "$WMAX" >>"$OUT/stalls.tsv"
    echo "# $1: longest I/O wait $MAX_WAIT s (reads $RMAX s, writes $WMAX s)"
  else
    FIO_ERR=unknown MAX_WAIT=unknown FIO_RB=0 FIO_WB=0
    echo "# $1: no fio result: $r"
  fi
}

FIO_VERIFY=(--verify=crc32c --verify_backlog=64 --verify_fatal=1 --size=64M --iodepth=8 --bs=16k)
# After a fault: write 16 MiB at random (each block once), then read all of it back.
FIO_AFTER=(--rw=randwrite --verify=crc32c --verify_fatal=1 --size=16M --iodepth=8 --bs=16k)

# One fault while fio runs: fault, faulted paths ("1", "2" or "1 2"), hold seconds, rw.
fault_case() {
  local f=$1 paths=$2 hold=$3 rw=$4 qd=${5:-8} lead=3 tail=4 p s0=$WORK/$1-s0.json s1=$WORK/$1-s1.json
  local sm=$WORK/$1-during.json json=$OUT/$1.json t
  mp_log "$f: paths $paths, $hold s, fio $rw"
  check "$f: lunbridge serve starts with both paths" mp_start_server "mp-$f" "$OUT/$f-serve.log" "$URL1" "$URL2" ||
    { note "$f: see $OUT/$f-serve.log"; return; }
  if [ -z "$HAVE_STATUS" ]; then
    no_status "$f: both paths active before the fault"
  elif t=$(mp_wait_states 15 active "$s0"); then
    ok "$f: both paths active before the fault"
  else
    notok "$f: both paths active before the fault (states: $(python3 "$JSONQ" paths "$s0" 2>&1 | awk '{ printf "%s ", $3 }'))"
  fi

  mp_fio_bg "$json" --rw="$rw" "${FIO_VERIFY[@]}" --iodepth="$qd" --time_based --runtime=$((lead + hold + tail))
  sleep "$lead"
  inject "$f" "$paths"
  # While the fault lasts, watch the faulted paths' states.
  local end seen=""
  end=$(awk -v t="$(date +%s.%N)" -v h="$hold" 'BEGIN { printf "%.3f", t + h }')
  while awk -v t="$(date +%s.%N)" -v e="$end" 'BEGIN { exit !(t < e) }'; do
    if [ -n "$HAVE_STATUS" ] && mp_status "$sm"; then
      for p in $paths; do seen="$seen $p:$(pf "$sm" "$p" state)"; done
    fi
    sleep 0.5
  done
  lift "$f" "$paths"
  local rc=0
  wait "$FIO_PID" || rc=$?
  FIO_PID=
  fio_result "$f" "$json"
  check "$f: fio $rw with crc32c verify exits 0, no verify error, data verified (longest I/O wait $MAX_WAIT s)" \
    test "$rc" = 0 -a "$FIO_ERR" = 0 -a "$FIO_RB" -gt 0
  [ "$rc" = 0 ] || sed 's/^/#   fio: /' "$json.stderr" | grep -v '^#   fio: $' | head -n 5

  if [ -z "$HAVE_STATUS" ]; then
    no_status "$f: faulted path failed during the fault, active again after, failure and reinstatement counted"
  else
    # Not for a deleted connection (back at once, maybe never seen failed), nor for tgtd
    # stopped for 5 s (keepalive notices at 4 s: too short a window to catch reliably;
    # the failure count below shows it).
    case $f in
    conn-delete | conn-storm | tgtd-stop) echo "# $f: path states seen during the fault:${seen:- none}" ;;
    *)
      local failed_seen=1
      for p in $paths; do
        grep -Eq " $p:(failed|probing)" <<<"$seen" || failed_seen=
      done
      check "$f: path(s) $paths seen failed while the fault lasted" test -n "$failed_seen"
      ;;
    esac
    if t=$(mp_wait_states 30 active "$s1"); then
      ok "$f: every path active again ${t} s after the fault was lifted"
    else
      notok "$f: every path active again within 30 s after the fault was lifted (states: $(python3 "$JSONQ" paths "$s1" 2>&1 | awk '{ printf "%s ", $3 }'))"
    fi
    local counted=1 detail=""
    local cpaths=$paths
    [ "$f" != tgtd-stop ] || cpaths="1 2"
    local any=
    for p in $cpaths; do
      local f0 f1 r0 r1
      f0=$(pf "$s0" "$p" failures) f1=$(pf "$s1" "$p" failures)
      r0=$(pf "$s0" "$p" reinstatements) r1=$(pf "$s1" "$p" reinstatements)
      detail="$detail path $p failures $f0->$f1 reinstatements $r0->$r1;"
      if gt "$f1" "$f0" && gt "$r1" "$r0"; then any=1; else counted=; fi
    done
    [ "$f" != tgtd-stop ] || counted=$any
    check "$f: failure and reinstatement counted ($detail)" test -n "$counted"
  fi

  # The reinstated paths carry I/O again: a short fio pass after the fault.
  local jpost=$OUT/$f-after.json s2=$WORK/$f-s2.json
  mp_status "$s1" 2>/dev/null || true
  rc=0
  mp_fio "$jpost" "${FIO_AFTER[@]}" || rc=$?
  fio_result "$f-after" "$jpost" >/dev/null
  check "$f: fio verify pass after the fault exits 0, all $((FIO_WB / 1048576)) MiB written verified" \
    test "$rc" = 0 -a "$FIO_ERR" = 0 -a "$FIO_RB" = "$FIO_WB" -a "$FIO_WB" -gt 0
  [ "$rc" = 0 ] || sed 's/^/#   fio: /' "$jpost.stderr" | grep -v '^#   fio: $' | head -n 5
  if [ -z "$HAVE_STATUS" ]; then
    no_status "$f: faulted path carries I/O again"
  else
    local grew=1 detail=""
    mp_status "$s2" || true
    for p in $paths; do
      local i1 i2
      i1=$(pf "$s1" "$p" ios) i2=$(pf "$s2" "$p" ios)
      detail="$detail path $p ios $i1->$i2;"
      gt "$i2" "$i1" || grew=
    done
    check "$f: faulted path(s) carry I/O again ($detail)" test -n "$grew"
  fi
  check "$f: lunbridge serve still running after the fault" mp_server_alive
  mp_stop_server || true
  log_states "$f"
}

# A note of the path state changes lunbridge logged (notice level) during one fault.
log_states() {
  local log=$OUT/$1-serve.log p
  for p in path0 path1; do
    echo "# $1: $p logged $(grep -c "notice lunbridge: path failed: [a-z-]*: .*path=$p " "$log" 2>/dev/null) failures" \
      "(probe failures $(grep -c "path failed: probe-failed.*path=$p " "$log" 2>/dev/null))," \
      "$(grep -c "notice lunbridge: path reinstated.*path=$p " "$log" 2>/dev/null) reinstatements"
  done
}

# Both NICs down for longer than no-path-retry: EIO, then the export works again.
all_down_long() {
  local f=all-down-long npr=5 json=$OUT/all-down-long.json s=$WORK/adl.json t
  mp_log "$f: both NICs down > --no-path-retry $npr"
  check "$f: lunbridge serve starts with both paths and --no-path-retry $npr" \
    mp_start_server "mp-$f" "$OUT/$f-serve.log" "$URL1" "$URL2" -- --no-path-retry "$npr" ||
    { note "$f: see $OUT/$f-serve.log"; return; }
  if [ -n "$HAVE_STATUS" ]; then
    check "$f: both paths active before the fault" quiet mp_wait_states 15 active "$s"
  else
    sleep 2 # both paths logged in (no status to ask)
  fi
  # Sequential writes at depth 4, no verify: the first failed write ends fio.
  mp_fio_bg "$json" --rw=write --bs=64k --iodepth=4 --size=64M --time_based --runtime=120
  sleep 2
  inject "$f"
  local t0 rc=0 i
  t0=$(date +%s.%N)
  for i in $(seq 400); do # at most 40 s
    kill -0 "$FIO_PID" 2>/dev/null || break
    sleep 0.1
  done
  local took
  took=$(echo "$t0 $(date +%s.%N)" | awk '{ printf "%.1f", $2 - $1 }')
  if kill -0 "$FIO_PID" 2>/dev/null; then
    kill -KILL "$FIO_PID" 2>/dev/null
    rc=timeout
  fi
  local wrc=0
  wait "$FIO_PID" 2>/dev/null || wrc=$?
  [ "$rc" = timeout ] || rc=$wrc
  FIO_PID=
  local err
  err=$(python3 "$JSONQ" fio "$json" 2>/dev/null | awk '{ print $1 }')
  local eio=
  if [ "$rc" != 0 ] && [ "$rc" != timeout ] && { [ "$err" = 5 ] || grep -q "Input/output error" "$json.stderr"; }; then
    eio=1
    ok "$f: writes fail with EIO ${took} s after both NICs went down"
  else
    notok "$f: writes fail with EIO within 40 s after both NICs went down (fio rc $rc, error ${err:-?}: $(grep -m1 -i error "$json.stderr" 2>/dev/null))"
  fi
  # Not at once: I/O waits for a path for no-path-retry seconds first.
  check "$f: writes were held at least no-path-retry ($npr s) before EIO (took $took s)" \
    awk -v e="$eio" -v t="$took" -v n="$npr" 'BEGIN { exit !(e == 1 && t >= n) }'
  if [ -z "$HAVE_STATUS" ]; then
    no_status "$f: noPathFailures counted"
  else
    local v
    mp_status "$s" && v=$(python3 "$JSONQ" volume "$s" 2>&1)
    check "$f: noPathFailures counted (queuedIOs noPathFailures requestErrors: ${v:-?})" \
      gt "$(awk '{ print $2 }' <<<"${v:-x x}")" 0
  fi
  sleep 1
  lift "$f"
  if [ -z "$HAVE_STATUS" ]; then
    no_status "$f: every path active again after the NICs returned"
    sleep 10 # let the probes find the paths (no status to ask)
  elif t=$(mp_wait_states 30 active "$s"); then
    ok "$f: every path active again ${t} s after the NICs returned"
  else
    notok "$f: every path active again within 30 s after the NICs returned"
  fi
  rc=0
  mp_fio "$OUT/$f-after.json" "${FIO_AFTER[@]}" || rc=$?
  fio_result "$f-after" "$OUT/$f-after.json"
  check "$f: the export works again: fresh fio pass verifies all $((FIO_WB / 1048576)) MiB it wrote (no stale write landed over it)" \
    test "$rc" = 0 -a "$FIO_ERR" = 0 -a "$FIO_RB" = "$FIO_WB" -a "$FIO_WB" -gt 0
  [ "$rc" = 0 ] || sed 's/^/#   fio: /' "$OUT/$f-after.json.stderr" | grep -v '^#   fio: $' | head -n 5
  check "$f: lunbridge serve still running" mp_server_alive
  mp_stop_server || true
  log_states "$f"
}

for f in $FAULTS; do
  case $f in
  link-down) fault_case link-down 1 8 randwrite ;;
  blackhole) fault_case blackhole 2 8 randrw ;;
  conn-delete) fault_case conn-delete 1 2 randwrite ;;
  conn-storm) fault_case conn-storm "1 2" 16 randrw 16 ;;
  tgtd-stop) fault_case tgtd-stop "1 2" 5 randrw ;;
  all-down-short) fault_case all-down-short "1 2" 8 randwrite ;;
  all-down-long) all_down_long ;;
  *) notok "unknown fault '$f' in MPATH_FAULTS" ;;
  esac
done

mp_log "done"
echo "# longest I/O wait per fault (s):"
column -t "$OUT/stalls.tsv" | sed 's/^/#   /'
finish
