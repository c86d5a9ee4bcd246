#!/usr/bin/env bash
# Runs INSIDE the VM (Tests/vm/vm-run.sh, via Tests/bench/vm-failover.sh): the failover
# stall (the longest time any I/O waited) of two multipath initiators on the kernel block
# path, against one private tgtd LUN reachable over two "NICs":
#
#   lunbridge      `lunbridge attach URL1 URL2 --policy round-robin` (keepalive 2 s + 2 s)
#                  -> /dev/nbdN
#   dm-multipath   open-iscsi (iscsid + iscsi_tcp, its Debian defaults) logged in to both
#                  portals, multipathd with its built-in defaults -> /dev/mapper/mpatha
#
#   vm-failover-guest.sh LUNBRIDGE REPO OUTDIR
#
# The network (Tests/lib/netns.sh, NETNS_INITIATOR=host): tgtd runs in a network namespace
# of its own (lbmp-fo-tgt) with two veth pairs to the guest's root namespace, where both
# initiators run: path 1 is 198.18.1.1 (lbfoi1) <-> 198.18.1.2, path 2 is 198.18.2.1
# (lbfoi2) <-> 198.18.2.2. All of it exists only inside the VM. Faults on one path
# (netns.sh's):
#   link-down  the initiator's NIC down, up again afterwards
#   blackhole  nft DROP of everything in and out of that NIC in the root namespace
#   reset      nft `reject with tcp reset` in the target namespace
#
# Each run: fio (libaio, O_DIRECT, 4 KiB random writes, depth 1) on the device; the fault
# starts FAULT_AT s in and holds HOLD s; fio runs on for TAIL s after it ends. The stall is
# fio's largest write latency (lat_ns max). lunbridge (round-robin) sends every other I/O
# over either path, so the faulted path alternates; dm-multipath's default grouping is
# "failover" (one path carries all I/O), so the fault hits the path its active group uses.
# Between runs both paths must be back in use (up to RECOVER_WAIT s).
#
# The hold is longer than dm-multipath's expected detection (noop-out 5 s + 5 s, then
# recovery_tmo 5 s), so a stall shorter than the hold is a failover, not a wait for the
# path to return. Fault on/off are marked in the kernel log (logs/dmesg.log, "lbfo:").
#
# Environment: REPEATS (5), FAULTS ("link-down blackhole reset"), FAULT_AT (3),
#   HOLD (18; for reset HOLD_RESET, 8), TAIL (2), RECOVER_WAIT (120), INITIATORS
#   ("lunbridge dm-multipath").
# Writes OUTDIR/stall.tsv, OUTDIR/fio/*.json, OUTDIR/env.txt, OUTDIR/dm-config.txt and the
# daemons' logs. Everything it starts (tgtd, iscsid, udevd, multipathd, lunbridge,
# namespace, veths, nft tables, devices) is stopped or removed on any exit.
set -uo pipefail

die() { echo "vm-failover-guest: $*" >&2; exit 1; }
T0=$(date +%s)
log() { printf '[guest %4ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }

[ $# -eq 3 ] || die "usage: $0 LUNBRIDGE REPO OUTDIR"
LB_SRC=$(realpath -e "$1") || die "no binary $1"
LB=/tmp/lunbridge-under-test # a private copy: the host's file may be rebuilt during the run
cp "$LB_SRC" "$LB" && chmod 755 "$LB" || die "cannot copy $LB_SRC"
REPO=$(realpath -e "$2") || die "no repo $2"
mkdir -p "$3" && OUT=$(realpath "$3") || die "cannot create $3"
REPEATS=${REPEATS:-5}
FAULTS=${FAULTS:-link-down blackhole reset}
FAULT_AT=${FAULT_AT:-3}
HOLD=${HOLD:-18}
HOLD_RESET=${HOLD_RESET:-8}
TAIL=${TAIL:-2}
RECOVER_WAIT=${RECOVER_WAIT:-120}
INITIATORS=${INITIATORS:-lunbridge dm-multipath}
export PATH=$PATH:/usr/sbin:/sbin HOME=/tmp
PY=/usr/bin/python3

for t in fio tgtd tgtadm iscsid iscsiadm multipathd multipath dmsetup nft ip tc $PY; do
  command -v "$t" >/dev/null || die "$t not found (install tgt, open-iscsi, multipath-tools, nftables on the host)"
done
UDEVD=/lib/systemd/systemd-udevd
[ -x $UDEVD ] || die "no $UDEVD"

export NETNS_INITIATOR=host MPATH_LUN_MIB=64
NETNS=$REPO/Tests/lib/netns.sh
TAG=fo
eval "$("$NETNS" env $TAG)" || die "netns.sh env"
A_T=(x "$ADDR_T1" "$ADDR_T2")
URL1=${URL1%%\?*} URL2=${URL2%%\?*} # plain portals, as for open-iscsi
T=$(mktemp -d /tmp/vm-failover.XXXXXX)
rm -rf "$OUT/fio" "$OUT/logs"; mkdir -p "$OUT/fio" "$OUT/logs"
STALL=$OUT/stall.tsv

LB_DEV= LB_PID= ISCSID_PID= UDEVD_PID= MPD_PID= MP_DEV= LOGGED_IN= FIO_PID= NS_UP=
dmesg -w >"$OUT/logs/dmesg.log" 2>&1 &
DMESG_PID=$!

stop_pid() { # pid [seconds]: TERM, then KILL
  local p=$1 i
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null
  for i in $(seq $((${2:-3} * 10))); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null
  return 0
}

unfault_all() {
  [ -n "$NS_UP" ] || return 0
  local n
  for n in 1 2; do
    "$NETNS" unblackhole $TAG $n; "$NETNS" unreset $TAG $n; "$NETNS" link-up $TAG $n
  done 2>/dev/null
  return 0
}

stop_dm() {
  if [ -n "$MP_DEV" ]; then
    # No queueing left to hang on, then the map goes before the paths do.
    dmsetup message "$MP_DEV" 0 fail_if_no_path >/dev/null 2>&1
    timeout 20 multipath -f "$MP_DEV" >/dev/null 2>&1 || timeout 10 dmsetup remove -f "$MP_DEV" >/dev/null 2>&1
    MP_DEV=
  fi
  stop_pid "$MPD_PID" 5; MPD_PID=
  if [ -n "$LOGGED_IN" ]; then
    timeout 60 iscsiadm -m node -T "$IQN" --logout >/dev/null 2>&1
    timeout 10 iscsiadm -m node -o delete -T "$IQN" >/dev/null 2>&1
    LOGGED_IN=
  fi
  stop_pid "$ISCSID_PID" 3; ISCSID_PID=
  stop_pid "$UDEVD_PID" 3; UDEVD_PID=
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  log "cleanup (rc $rc)"
  [ -z "$FIO_PID" ] || { kill -KILL "$FIO_PID" 2>/dev/null; wait "$FIO_PID" 2>/dev/null; }
  unfault_all
  if [ -n "$LB_DEV" ]; then timeout 60 "$LB" detach "$LB_DEV" >/dev/null 2>&1; fi
  stop_pid "$LB_PID" 5
  stop_dm
  [ -z "$NS_UP" ] || "$NETNS" teardown $TAG >/dev/null 2>&1
  rm -rf "$T"
  sleep 0.5; kill "$DMESG_PID" 2>/dev/null; wait "$DMESG_PID" 2>/dev/null
  log "cleanup done"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- modules, network, target ----------------------------------------------------------
for m in nbd iscsi_tcp dm_multipath dm_service_time dm_round_robin veth nf_tables; do
  modprobe $m || die "modprobe $m"
done

NS_UP=1
"$NETNS" setup $TAG >"$OUT/logs/netns-setup.log" 2>&1 || die "netns.sh setup: $(tail -n 3 "$OUT/logs/netns-setup.log")"
cp "$STATE/tgtd.log" "$OUT/logs/tgtd.log" 2>/dev/null
for n in 1 2; do
  ping -c1 -W2 "${A_T[n]}" >/dev/null 2>&1 || die "no route to ${A_T[n]}"
done
log "tgtd (pid $(cat "$STATE/pid")) in netns $NS_T: portals ${A_T[1]}:$PORT ${A_T[2]}:$PORT, 64 MiB LUN"

# --- faults ----------------------------------------------------------------------------
fault() { # on|off fault path
  local n=$3 rc=0 cmd
  case "$1 $2" in
  "on link-down") cmd=link-down ;;
  "off link-down") cmd=link-up ;;
  "on blackhole") cmd=blackhole ;;
  "off blackhole") cmd=unblackhole ;;
  "on reset") cmd=reset ;;
  "off reset") cmd=unreset ;;
  *) die "unknown fault $1 $2" ;;
  esac
  echo "lbfo: fault $1 $2 path $n" >/dev/kmsg 2>/dev/null
  # Bounded: a stuck nft or ip call must cost one run, not the rest of the bench (one
  # run of 2026-12-01 stopped for good right after "fault on reset").
  timeout 30 "$NETNS" "$cmd" $TAG "$n" || rc=$?
  echo "lbfo: fault $1 $2 path $n done (rc $rc)" >/dev/kmsg 2>/dev/null
  return $rc
}

hold_of() { [ "$1" = reset ] && echo "$HOLD_RESET" || echo "$HOLD"; }

# --- one measured run ------------------------------------------------------------------
printf 'initiator\tfault\trep\tpath\thold_s\tmax_wait_s\tfio_error\tios\n' >"$STALL"
run_one() { # initiator device fault rep path
  local ini=$1 dev=$2 f=$3 rep=$4 p=$5 hold json rc r
  hold=$(hold_of "$f")
  json=$OUT/fio/$ini-$f-$rep.json
  fio --name=stall --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
    --iodepth=1 --size=64M --time_based --runtime=$((FAULT_AT + hold + TAIL)) --randrepeat=0 \
    --norandommap --output-format=json --output="$json" >/dev/null 2>"$json.stderr" &
  FIO_PID=$!
  sleep "$FAULT_AT"
  fault on "$f" "$p" || log "fault on $f $p failed"
  sleep "$hold"
  fault off "$f" "$p" || log "fault off $f $p failed"
  rc=0
  # fio waits for its outstanding I/O; a stuck one would hold it for the device timeouts.
  wait "$FIO_PID" || rc=$?
  FIO_PID=
  r=$($PY - "$json" <<'EOF'
import json, sys
t = open(sys.argv[1]).read()
try:
    j = json.loads(t[t.index("{"):])["jobs"][0]
    w = j["write"]
    print(j.get("error", 0), "%.3f" % (w["lat_ns"]["max"] / 1e9), w["total_ios"])
except Exception as e:
    print("parse", "NA", 0)
EOF
)
  read -r err maxw ios <<<"$r"
  [ "$rc" = 0 ] || err="$err(rc $rc)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ini" "$f" "$rep" "$p" "$hold" "$maxw" "$err" "$ios" >>"$STALL"
  log "$ini $f path $p rep $rep: longest I/O wait $maxw s (hold $hold s, fio error $err, $ios writes)"
}

# --- lunbridge -------------------------------------------------------------------------
lb_paths_up() { # both paths active
  "$LB" status "$LB_DEV" --json >"$T/status.json" 2>/dev/null &&
    $PY -c 'import json,sys; p=json.load(open(sys.argv[1]))[0]["paths"]; sys.exit(not (len(p)==2 and all(x["state"]=="active" for x in p)))' "$T/status.json"
}
wait_lb() { local i; for i in $(seq $((RECOVER_WAIT * 2))); do lb_paths_up && return 0; sleep 0.5; done; return 1; }

run_lunbridge() {
  LB_DEV=$(timeout 60 "$LB" attach "$URL1" "$URL2" --policy round-robin --keepalive-interval 2 \
    --keepalive-timeout 2 --no-path-retry 60 --initiator-name "$IQN-lunbridge" \
    2>"$OUT/logs/lunbridge.log") || { LB_DEV=; die "lunbridge attach failed: $(cat "$OUT/logs/lunbridge.log")"; }
  [[ $LB_DEV == /dev/nbd* ]] || { LB_DEV=; die "lunbridge attach printed '$LB_DEV'"; }
  LB_PID=$(pgrep -f "$LB attach $URL1" | head -1)
  wait_lb || die "lunbridge: two active paths did not appear"
  log "lunbridge: $LB_DEV (pid $LB_PID), both paths active"
  "$LB" status "$LB_DEV" >"$OUT/lunbridge-status-start.txt" 2>&1
  local rep f p
  for rep in $(seq "$REPEATS"); do
    for f in $FAULTS; do
      p=$(((rep % 2) + 1)) # alternate the faulted path
      run_one lunbridge "$LB_DEV" "$f" "$rep" "$p"
      wait_lb || die "lunbridge: both paths not active $RECOVER_WAIT s after $f"
    done
  done
  "$LB" status "$LB_DEV" >"$OUT/lunbridge-status-end.txt" 2>&1
  timeout 60 "$LB" detach "$LB_DEV" || log "lunbridge detach failed"
  LB_DEV=
  stop_pid "$LB_PID" 10; LB_PID=
}

# --- open-iscsi + dm-multipath ---------------------------------------------------------
mp_paths() { # "dev state" per path: state = dm_st/chk_st, e.g. active/ready
  multipathd show paths raw format "%d %t %T" 2>/dev/null
}
mp_both_ready() { [ "$(mp_paths | grep -c ' active ready$')" = 2 ]; }
wait_mp() { local i; for i in $(seq $((RECOVER_WAIT * 2))); do mp_both_ready && return 0; sleep 0.5; done; return 1; }
sd_path() { # sdX -> path number (1/2) by the session's portal address
  iscsiadm -m session -P 3 2>/dev/null | $PY -c '
import sys, re
dev = sys.argv[1]; portal = None
for line in sys.stdin:
    m = re.search(r"Current Portal: ([0-9.]+):", line)
    if m: portal = m.group(1)
    m = re.search(r"Attached scsi disk (sd[a-z]+)", line)
    if m and m.group(1) == dev: print({"198.18.1.2": 1, "198.18.2.2": 2}.get(portal, 0))
' "$1"
}
active_sd() { # the path device of the active path group (default grouping: one path each)
  multipath -ll "$MP_DEV" 2>/dev/null | awk '
    /status=active/ { grp = 1; next } /status=/ { grp = 0; next }
    grp && match($0, /sd[a-z]+/) { print substr($0, RSTART, RLENGTH); exit }'
}

run_dm() {
  # udev: multipathd takes the path identifiers (ID_SERIAL) from udev's database and
  # device-mapper waits for udev to create /dev/mapper nodes.
  mkdir -p /run/udev
  setsid $UDEVD >"$OUT/logs/udevd.log" 2>&1 </dev/null &
  UDEVD_PID=$!
  sleep 1
  kill -0 $UDEVD_PID 2>/dev/null || die "systemd-udevd exited: $(cat "$OUT/logs/udevd.log")"
  udevadm trigger --action=add --subsystem-match=block >/dev/null 2>&1
  udevadm settle -t 30

  # The guest's /etc is a copy-on-write overlay in RAM: this config lives only in the VM.
  # Built-in defaults except: map names mpathN, and every (non-blacklisted) SCSI disk is a
  # path (the Debian default find_multipaths "strict" only takes WWIDs listed beforehand).
  mkdir -p /etc/multipath
  rm -f /etc/multipath/wwids /etc/multipath/bindings
  cat >/etc/multipath.conf <<'EOF'
defaults {
	user_friendly_names yes
	find_multipaths no
}
EOF
  setsid multipathd -d -s -v2 >"$OUT/logs/multipathd.log" 2>&1 </dev/null &
  MPD_PID=$!
  local i
  for i in $(seq 50); do multipathd show daemon >/dev/null 2>&1 && break; sleep 0.2; done
  kill -0 $MPD_PID 2>/dev/null || die "multipathd exited: $(cat "$OUT/logs/multipathd.log")"

  mkdir -p /etc/iscsi /run/lock/iscsi /var/lib/iscsi
  echo "InitiatorName=$IQN-openiscsi" >/etc/iscsi/initiatorname.iscsi
  # A session of its own: iscsid's SIGTERM handler signals its whole process group.
  setsid iscsid -f >"$OUT/logs/iscsid.log" 2>&1 </dev/null &
  ISCSID_PID=$!
  for i in $(seq 50); do iscsiadm -m session >/dev/null 2>&1; [ $? -ne 20 ] && break; sleep 0.2; done
  kill -0 "$ISCSID_PID" 2>/dev/null || die "iscsid exited: $(cat "$OUT/logs/iscsid.log")"
  for n in 1 2; do
    timeout 30 iscsiadm -m discovery -t st -p "${A_T[n]}:$PORT" >>"$OUT/logs/iscsiadm.log" 2>&1 ||
      die "discovery via ${A_T[n]} failed: $(cat "$OUT/logs/iscsiadm.log")"
  done
  LOGGED_IN=1
  timeout 60 iscsiadm -m node -T "$IQN" --login >>"$OUT/logs/iscsiadm.log" 2>&1 ||
    die "login failed: $(cat "$OUT/logs/iscsiadm.log")"
  udevadm settle -t 30
  for i in $(seq 150); do
    MP_DEV=$(dmsetup ls --target multipath 2>/dev/null | awk 'NR == 1 { print $1 }')
    [ -n "$MP_DEV" ] && mp_both_ready && break
    sleep 0.2
  done
  [ -n "$MP_DEV" ] || die "no multipath map: $(multipath -v3 2>&1 | tail -30)"
  wait_mp || die "dm-multipath: two ready paths did not appear: $(mp_paths)"
  [ -b "/dev/mapper/$MP_DEV" ] || die "no /dev/mapper/$MP_DEV"
  log "dm-multipath: /dev/mapper/$MP_DEV, paths: $(mp_paths | tr '\n' ' ')"

  {
    echo "# multipath -ll"
    multipath -ll 2>&1
    echo; echo "# dmsetup table $MP_DEV"
    dmsetup table "$MP_DEV"
    echo; echo "# multipathd show config: defaults (excerpt)"
    multipathd show config 2>&1 | sed -n '/^defaults {/,/^}/p' |
      grep -E 'polling_interval|path_selector|path_grouping_policy|path_checker|failback|no_path_retry|features|fast_io_fail_tmo|dev_loss_tmo|find_multipaths|queue_without_daemon|flush_on_last_del|user_friendly_names'
    echo; echo "# multipathd show config: device entries matching vendor IET / tgt (none = defaults apply)"
    multipathd show config 2>&1 | grep -i -A20 'vendor "IET"' | sed '/^\t}/q'
    echo; echo "# SCSI inquiry of the paths"
    for s in $(mp_paths | awk '{ print $1 }'); do
      echo "$s: vendor=$(cat /sys/block/$s/device/vendor) model=$(cat /sys/block/$s/device/model) timeout=$(cat /sys/block/$s/device/timeout)s"
    done
    echo; echo "# iSCSI sessions (effective: multipathd sets recovery_tmo from fast_io_fail_tmo)"
    for s in /sys/class/iscsi_session/session*; do
      echo "${s##*/}: recovery_tmo=$(cat "$s/recovery_tmo")"
    done
    for c in /sys/class/iscsi_connection/connection*; do
      echo "${c##*/}: address=$(cat "$c/persistent_address") ping_tmo=$(cat "$c/ping_tmo") recv_tmo=$(cat "$c/recv_tmo")"
    done
    echo; echo "# iscsiadm node settings"
    iscsiadm -m node -T "$IQN" -p "${A_T[1]}:$PORT" 2>&1 |
      grep -E 'replacement_timeout|noop_out_(interval|timeout)|abort_timeout|lu_reset_timeout'
  } >"$OUT/dm-config.txt" 2>&1
  cat "$OUT/dm-config.txt" >&2

  local rep f p sd
  for rep in $(seq "$REPEATS"); do
    for f in $FAULTS; do
      sd=$(active_sd)
      p=$(sd_path "$sd")
      [ "$p" = 1 ] || [ "$p" = 2 ] || die "cannot tell the active path (sd '$sd', path '$p'): $(multipath -ll 2>&1)"
      run_one dm-multipath "/dev/mapper/$MP_DEV" "$f" "$rep" "$p"
      wait_mp || die "dm-multipath: both paths not ready $RECOVER_WAIT s after $f: $(mp_paths)"
    done
  done
  multipath -ll >"$OUT/dm-end.txt" 2>&1
  stop_dm
}

{
  echo "kernel: $(uname -r)"
  echo "cpus: $(nproc)"
  echo "lunbridge: $LB_SRC sha256 $(sha256sum <"$LB" | cut -c1-16)"
  echo "iscsid: $(iscsid --version 2>&1 | head -1)"
  echo "multipath-tools: $(dpkg-query -W -f='${Version}' multipath-tools 2>/dev/null)"
  echo "fio: $(fio --version)"
  echo "repeats=$REPEATS faults=\"$FAULTS\" fault_at=${FAULT_AT}s hold=${HOLD}s hold_reset=${HOLD_RESET}s tail=${TAIL}s"
} >"$OUT/env.txt"

for ini in $INITIATORS; do
  case $ini in
  lunbridge) run_lunbridge ;;
  dm-multipath) run_dm ;;
  *) die "unknown initiator $ini" ;;
  esac
done
log "done"
exit 0
