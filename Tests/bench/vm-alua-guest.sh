#!/usr/bin/env bash
# Runs INSIDE the VM (Tests/vm/vm-run.sh, via Tests/bench/vm-alua.sh): what the target
# moving its ALUA port groups costs two multipath initiators on the kernel block path,
# against one LIO LUN (configfs, Tests/vm/lio.sh) with two target port groups on two
# portals (127.0.0.1 and 127.0.0.2, loopback inside the VM):
#
#   lunbridge      `lunbridge attach URL1 URL2` (its defaults) -> /dev/nbdN
#   dm-multipath   open-iscsi (iscsid + iscsi_tcp, Debian defaults) logged in to both
#                  portals, multipathd with its built-in defaults (which use scsi_dh_alua,
#                  the alua prioritizer and group_by_prio for LIO-ORG) -> /dev/mapper/mpatha
#
#   vm-alua-guest.sh LUNBRIDGE REPO OUTDIR
#
# Each initiator runs one fio (libaio, O_DIRECT, 4 KiB random writes, depth 1) through the
# same sequence of moves, STEP s apart (group A serves at the start, B is standby):
#   swap (A standby, B optimized), back (A optimized, B standby), A unavailable with B
#   optimized, A back through an 8 s transition then B standby, both standby for 10 s,
#   A optimized.
# Reported per initiator: the longest time one write waited (fio lat max), writes done,
# and fio's error. Writes OUTDIR/alua.tsv, OUTDIR/fio/*.json, OUTDIR/logs/.
set -uo pipefail

die() { echo "vm-alua-guest: $*" >&2; exit 1; }
T0=$(date +%s)
log() { printf '[guest %4ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }

[ $# -eq 3 ] || die "usage: $0 LUNBRIDGE REPO OUTDIR"
LB_SRC=$(realpath -e "$1") || die "no binary $1"
LB=/tmp/lunbridge-under-test
cp "$LB_SRC" "$LB" && chmod 755 "$LB" || die "cannot copy $LB_SRC"
REPO=$(realpath -e "$2") || die "no repo $2"
mkdir -p "$3" && OUT=$(realpath "$3") || die "cannot create $3"
STEP=${STEP:-12}
INITIATORS=${INITIATORS:-lunbridge dm-multipath}
export PATH=$PATH:/usr/sbin:/sbin HOME=/tmp
for t in fio iscsid iscsiadm multipathd multipath dmsetup python3; do
  command -v "$t" >/dev/null || die "$t not found (install open-iscsi, multipath-tools, fio on the host)"
done
UDEVD=/lib/systemd/systemd-udevd
rm -rf "$OUT/fio" "$OUT/logs"; mkdir -p "$OUT/fio" "$OUT/logs"
TSV=$OUT/alua.tsv
printf 'initiator\tmax_wait_s\twrites\tfio_error\n' >"$TSV"

. "$REPO/Tests/vm/lio.sh"
IQN_I=iqn.2026-11.org.lunbridge:alua-bench
LB_DEV= ISCSID_PID= UDEVD_PID= MPD_PID= MP_DEV= LOGGED_IN= FIO_PID=
stop_pid() { local p=$1 i; [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p"; for i in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; return 0; }
stop_dm() {
  if [ -n "$MP_DEV" ]; then
    dmsetup message "$MP_DEV" 0 fail_if_no_path >/dev/null 2>&1
    timeout 20 multipath -f "$MP_DEV" >/dev/null 2>&1 || timeout 10 dmsetup remove -f "$MP_DEV" >/dev/null 2>&1
    MP_DEV=
  fi
  stop_pid "$MPD_PID"; MPD_PID=
  if [ -n "$LOGGED_IN" ]; then
    timeout 60 iscsiadm -m node --logoutall=all >/dev/null 2>&1
    timeout 10 iscsiadm -m node -o delete >/dev/null 2>&1
    LOGGED_IN=
  fi
  stop_pid "$ISCSID_PID"; ISCSID_PID=
  stop_pid "$UDEVD_PID"; UDEVD_PID=
}
cleanup() {
  local rc=$?
  trap - EXIT
  [ -z "$FIO_PID" ] || { kill -KILL "$FIO_PID" 2>/dev/null; wait "$FIO_PID" 2>/dev/null; }
  [ -z "$LB_DEV" ] || timeout 60 "$LB" detach "$LB_DEV" >/dev/null 2>&1
  stop_dm
  lio_stop
  exit $rc
}
trap cleanup EXIT
for m in nbd iscsi_tcp dm_multipath scsi_dh_alua; do modprobe $m || die "modprobe $m"; done

URL1=$(lio_start 64 2>"$OUT/logs/lio.err") || die "LIO: $(cat "$OUT/logs/lio.err")"
URL2=$(lio_alua_two_groups 0 2 2>>"$OUT/logs/lio.err") || die "LIO ALUA: $(cat "$OUT/logs/lio.err")"
log "LIO: $URL1 (group lb_a) and $URL2 (group lb_b)"

# The moves, STEP s apart, while fio runs for the whole sequence.
moves() {
  local d=$OUT/logs/moves-$1.log
  sleep "$STEP"; echo "$(date +%s) swap" >>"$d"; lio_alua_set lb_b 0; lio_alua_set lb_a 2
  sleep "$STEP"; echo "$(date +%s) back" >>"$d"; lio_alua_set lb_a 0; lio_alua_set lb_b 2
  sleep "$STEP"; echo "$(date +%s) unavailable" >>"$d"; lio_alua_set lb_b 0; lio_alua_set lb_a 3
  sleep "$STEP"; echo "$(date +%s) transition" >>"$d"
  echo 8000 >"$LIO_CFS/core/fileio_0/lun0/alua/lb_a/trans_delay_msecs"
  lio_alua_set lb_a 0
  echo 0 >"$LIO_CFS/core/fileio_0/lun0/alua/lb_a/trans_delay_msecs"
  lio_alua_set lb_b 2
  sleep "$STEP"; echo "$(date +%s) both-standby" >>"$d"; lio_alua_set lb_a 2
  sleep 10; echo "$(date +%s) optimized" >>"$d"; lio_alua_set lb_a 0
}
SEQ=$((6 * STEP + 10 + 10))

run_fio() { # initiator device
  local ini=$1 dev=$2 json=$OUT/fio/$1.json r err maxw ios
  fio --name=alua --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=1 \
    --size=32M --time_based --runtime=$SEQ --randrepeat=0 --norandommap --output-format=json \
    --output="$json" >/dev/null 2>"$json.stderr" &
  FIO_PID=$!
  moves "$ini"
  wait "$FIO_PID"; r=$?
  FIO_PID=
  read -r err maxw ios < <(python3 - "$json" <<'EOF'
import json, sys
t = open(sys.argv[1]).read()
try:
    j = json.loads(t[t.index("{"):])["jobs"][0]
    print(j.get("error", 0), "%.3f" % (j["write"]["lat_ns"]["max"] / 1e9), j["write"]["total_ios"])
except Exception:
    print("parse", "NA", 0)
EOF
)
  [ "$r" = 0 ] || err="$err(rc $r)"
  printf '%s\t%s\t%s\t%s\n' "$ini" "$maxw" "$ios" "$err" >>"$TSV"
  log "$ini: longest write wait $maxw s, $ios writes, fio error $err"
}

run_lunbridge() {
  LB_DEV=$(timeout 60 "$LB" attach "$URL1" "$URL2" --initiator-name "$IQN_I-lb" \
    --log-file "$OUT/logs/lunbridge.log" 2>"$OUT/logs/lunbridge-attach.err") || die "attach: $(cat "$OUT/logs/lunbridge-attach.err")"
  sleep 2
  "$LB" status "$LB_DEV" >"$OUT/lunbridge-status-start.txt" 2>&1
  run_fio lunbridge "$LB_DEV"
  "$LB" status "$LB_DEV" >"$OUT/lunbridge-status-end.txt" 2>&1
  timeout 60 "$LB" detach "$LB_DEV"; LB_DEV=
}

run_dm() {
  mkdir -p /run/udev
  setsid $UDEVD >"$OUT/logs/udevd.log" 2>&1 </dev/null &
  UDEVD_PID=$!
  sleep 1
  udevadm trigger --action=add --subsystem-match=block >/dev/null 2>&1
  udevadm settle -t 30
  mkdir -p /etc/multipath
  rm -f /etc/multipath/wwids /etc/multipath/bindings
  printf 'defaults {\n\tuser_friendly_names yes\n\tfind_multipaths no\n}\n' >/etc/multipath.conf
  setsid multipathd -d -s -v2 >"$OUT/logs/multipathd.log" 2>&1 </dev/null &
  MPD_PID=$!
  local i
  for i in $(seq 50); do multipathd show daemon >/dev/null 2>&1 && break; sleep 0.2; done
  mkdir -p /etc/iscsi /run/lock/iscsi /var/lib/iscsi
  echo "InitiatorName=$IQN_I-openiscsi" >/etc/iscsi/initiatorname.iscsi
  setsid iscsid -f >"$OUT/logs/iscsid.log" 2>&1 </dev/null &
  ISCSID_PID=$!
  for i in $(seq 50); do iscsiadm -m session >/dev/null 2>&1; [ $? -ne 20 ] && break; sleep 0.2; done
  timeout 30 iscsiadm -m discovery -t st -p "127.0.0.1:$LIO_PORT" >>"$OUT/logs/iscsiadm.log" 2>&1 ||
    die "discovery failed: $(cat "$OUT/logs/iscsiadm.log")"
  LOGGED_IN=1
  timeout 60 iscsiadm -m node -T "$LIO_IQN" --login >>"$OUT/logs/iscsiadm.log" 2>&1 ||
    die "login failed: $(cat "$OUT/logs/iscsiadm.log")"
  udevadm settle -t 30
  for i in $(seq 150); do
    MP_DEV=$(dmsetup ls --target multipath 2>/dev/null | awk 'NR == 1 { print $1 }')
    [ -n "$MP_DEV" ] && [ "$(multipathd show paths raw format "%d %t %T" 2>/dev/null | grep -c ' ready$')" -ge 2 ] && break
    sleep 0.2
  done
  [ -n "$MP_DEV" ] || die "no multipath map: $(multipath -v3 2>&1 | tail -20)"
  multipath -ll >"$OUT/dm-start.txt" 2>&1
  run_fio dm-multipath "/dev/mapper/$MP_DEV"
  multipath -ll >"$OUT/dm-end.txt" 2>&1
  stop_dm
}

{
  echo "kernel: $(uname -r)"
  echo "multipath-tools: $(dpkg-query -W -f='${Version}' multipath-tools 2>/dev/null)"
  echo "fio: $(fio --version)"
  echo "step=${STEP}s sequence=${SEQ}s"
} >"$OUT/env.txt"
for ini in $INITIATORS; do
  lio_alua_set lb_a 0; lio_alua_set lb_b 2
  case $ini in
  lunbridge) run_lunbridge ;;
  dm-multipath) run_dm ;;
  *) die "unknown initiator $ini" ;;
  esac
done
log "done"
