#!/usr/bin/env bash
# Runs INSIDE the VM (Tests/vm/vm-run.sh, via Tests/bench/vm-bench.sh): the kernel block
# path of three initiators against one private tgtd LUN on the guest's loopback, with fio
# (libaio, O_DIRECT) on each block device:
#
#   lunbridge   `lunbridge attach URL --connections 2`   -> /dev/nbdX (netlink NBD)
#   qemu-nbd    `qemu-nbd -c /dev/nbdY -f raw --cache=none URL` (libiscsi, ioctl NBD)
#   open-iscsi  iscsid + iscsi_tcp, `iscsiadm --login`   -> /dev/sdX (in-kernel initiator)
#
#   vm-bench-guest.sh LUNBRIDGE REPO OUTDIR
#
# Environment: REPEATS (default 2), BENCH_RUNTIME seconds per fio run (default 4),
# BENCH_SIZE_MIB fio area (default 128), BENCH_LUN_MIB LUN size (default 256).
#
# Writes OUTDIR/runs.tsv (device, workload, rep, fio json, server CPU ticks), OUTDIR/fio/*.json,
# OUTDIR/env.txt and the initiators' logs. All three devices stay attached for the whole
# run (to the same LUN, on separate iSCSI sessions); fio runs on one at a time. Every
# device and daemon this starts is torn down on any exit.
set -uo pipefail

die() { echo "vm-bench-guest: $*" >&2; exit 1; }
T0=$(date +%s)
log() { printf '[guest %4ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }

[ $# -eq 3 ] || die "usage: $0 LUNBRIDGE REPO OUTDIR"
# Run a private copy of the binary: the guest sees the host's files live over 9p, and a
# rebuild on the host while the VM runs changes the text under the serving process (in
# the first run it segfaulted at detach and the guest died).
# The copy lives in a tmpfs of its own, as an installed binary lives on a local disk or in
# the initramfs: on the guest's /tmp (an overlay on the host's files) lunbridge cannot
# tell which device its file is on and keeps its start-up pages resident
# (ServingProcess.releaseStartupCode): peak RSS of attach 28.7 MiB there, 18.4 MiB here.
LB_SRC=$(realpath -e "$1") || die "no binary $1"
LB_DIR=/run/lunbridge-bench-bin
mkdir -p "$LB_DIR" && mount -t tmpfs -o size=256m lunbridge-bench-bin "$LB_DIR" || die "cannot mount a tmpfs on $LB_DIR"
LB=$LB_DIR/lunbridge-under-test
cp "$LB_SRC" "$LB" && chmod 755 "$LB" || die "cannot copy $LB_SRC"
REPO=$(realpath -e "$2") || die "no repo $2"
mkdir -p "$3" && OUT=$(realpath "$3") || die "cannot create $3"
REPEATS=${REPEATS:-2}
RUNTIME=${BENCH_RUNTIME:-4}
SIZE_MIB=${BENCH_SIZE_MIB:-128}
LUN_MIB=${BENCH_LUN_MIB:-256}
TGT=$REPO/Tests/lib/tgtd.sh
HZ=$(getconf CLK_TCK)
export PATH=$PATH:/usr/sbin:/sbin HOME=/tmp

for t in fio qemu-nbd iscsid iscsiadm tgtd modprobe; do
  command -v "$t" >/dev/null || die "$t not found (open-iscsi must be installed on the host)"
done

# The kernel log goes straight to OUTDIR, so an oops or panic is on the host afterwards.
dmesg -w >"$OUT/dmesg.log" 2>&1 &
DMESG_PID=$!
T=$(mktemp -d /tmp/vm-bench.XXXXXX) # guest-private scratch (tgtd state; LUN is in /dev/shm)
rm -rf "$OUT/fio"; mkdir -p "$OUT/fio"
RUNS=$OUT/runs.tsv

LB_DEV= Q_DEV= SD_DEV= ISCSID_PID= TGT_STARTED= ISCSI_LOGGED_IN= URL= IQN= PORT=

cleanup() {
  local rc=$? bad=
  trap - EXIT INT TERM
  log "cleanup (rc $rc)"
  log "cleanup: detach $LB_DEV, qemu-nbd -d $Q_DEV, logout $SD_DEV, stop iscsid and tgtd"
  if [ -n "$LB_DEV" ]; then timeout 30 "$LB" detach "$LB_DEV" || bad="$bad lunbridge-detach"; fi
  if [ -n "$Q_DEV" ]; then timeout 30 qemu-nbd -d "$Q_DEV" >/dev/null || bad="$bad qemu-nbd-d"; fi
  if [ -n "$ISCSI_LOGGED_IN" ]; then
    timeout 30 iscsiadm -m node -T "$IQN" -p "127.0.0.1:$PORT" --logout >/dev/null || bad="$bad iscsi-logout"
  fi
  if [ -n "$IQN" ]; then timeout 10 iscsiadm -m node -o delete -T "$IQN" -p "127.0.0.1:$PORT" >/dev/null 2>&1; fi
  if [ -n "$ISCSID_PID" ]; then
    kill -TERM "$ISCSID_PID" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$ISCSID_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$ISCSID_PID" 2>/dev/null; wait "$ISCSID_PID" 2>/dev/null
  fi
  # the serving processes must be gone once their devices are
  local p
  for p in ${LB_PID:-} ${Q_PID:-}; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && { bad="$bad pid-$p-lingered"; kill -KILL "$p"; }
  done
  [ -z "$TGT_STARTED" ] || "$TGT" stop "$T/tgtd" >/dev/null 2>&1
  rm -rf "$T"
  umount -l "$LB_DIR" 2>/dev/null
  sleep 0.5; kill "$DMESG_PID" 2>/dev/null; wait "$DMESG_PID" 2>/dev/null
  if [ -n "$bad" ]; then
    log "cleanup problems:$bad"
    [ $rc -ne 0 ] || rc=1
  else
    log "cleanup done: all devices disconnected, daemons stopped"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- kernel modules, target ------------------------------------------------------------
modprobe nbd nbds_max=8 || die "modprobe nbd"
modprobe iscsi_tcp || die "modprobe iscsi_tcp"

IQN=iqn.2026-11.org.lunbridge:vmbench
TGT_STARTED=1
URL=$(TGTD_LUN_SIZE_MIB=$LUN_MIB TGTD_IQN=$IQN "$TGT" start "$T/tgtd") || die "tgtd start failed"
PORT=$(cat "$T/tgtd/port")
# Allocate the whole RAM-backed LUN up front, so reads hit real tmpfs pages (not holes)
# on every device alike and no write pays for page allocation.
fallocate -l "${LUN_MIB}M" "$(readlink -f "$T/tgtd/lun.img")" || die "fallocate LUN"
log "tgtd: $URL (${LUN_MIB} MiB, allocated)"

wait_size() { # dev: until the kernel reports a non-zero size (10 s)
  local b=${1##*/} i
  for i in $(seq 100); do
    [ -e "/sys/block/$b/size" ] && [ "$(cat "/sys/block/$b/size")" -gt 0 ] && return 0
    sleep 0.1
  done
  return 1
}

# --- lunbridge -------------------------------------------------------------------------
# Its own initiator name: the default (/etc/iscsi/initiatorname.iscsi) is the one iscsid
# uses too, and two sessions with one IQN and the same ISID would reinstate each other.
LB_DEV=$(timeout 60 "$LB" attach "$URL" --connections 2 \
  --initiator-name iqn.2026-11.org.lunbridge:vmbench-lunbridge 2>"$OUT/lunbridge.log") ||
  { LB_DEV=; die "lunbridge attach failed: $(cat "$OUT/lunbridge.log")"; }
[[ $LB_DEV == /dev/nbd* ]] || { LB_DEV=; die "lunbridge attach printed '$LB_DEV'"; }
wait_size "$LB_DEV" || die "$LB_DEV has no size"
LB_PID=$(pgrep -f "$LB attach $URL" | head -1)
[ -n "$LB_PID" ] || die "no lunbridge serving process"
log "lunbridge: $LB_DEV (pid $LB_PID)"

# --- qemu-nbd --------------------------------------------------------------------------
# qemu-nbd -c wants a device named up front (ioctl interface, no "pick a free one"): the
# first nbdN nobody has connected (no pid attribute, size 0).
for i in $(seq 0 7); do
  if [ ! -e "/sys/block/nbd$i/pid" ] && [ "$(cat "/sys/block/nbd$i/size")" = 0 ]; then Q_DEV=/dev/nbd$i; break; fi
done
[ -n "$Q_DEV" ] || die "no free nbd device for qemu-nbd"
# -c forks a server that stays in the background; the parent returns once connected.
timeout 60 qemu-nbd -c "$Q_DEV" -f raw --cache=none "$URL" >"$OUT/qemu-nbd.log" 2>&1 ||
  { d=$Q_DEV; Q_DEV=; die "qemu-nbd -c $d failed: $(cat "$OUT/qemu-nbd.log")"; }
wait_size "$Q_DEV" || die "$Q_DEV has no size"
Q_PID=$(pgrep -f "qemu-nbd -c $Q_DEV" | head -1)
[ -n "$Q_PID" ] || die "no qemu-nbd serving process"
log "qemu-nbd: $Q_DEV (pid $Q_PID)"

# --- open-iscsi ------------------------------------------------------------------------
# The guest's /etc is a writable overlay of the host's; iscsid refuses to start without
# an initiator name.
mkdir -p /etc/iscsi /run/lock/iscsi /var/lib/iscsi
grep -q '^InitiatorName=' /etc/iscsi/initiatorname.iscsi 2>/dev/null ||
  echo "InitiatorName=$(iscsi-iname 2>/dev/null || echo iqn.2026-11.org.lunbridge:vmbench-openiscsi)" \
    >/etc/iscsi/initiatorname.iscsi
# A session of its own: on SIGTERM iscsid runs killpg(getpid(), SIGTERM) / stops its
# logger, and sharing our process group took the whole guest script down with it (the
# VM died at cleanup, right after "iscsid shutting down", without an rc).
setsid iscsid -f >"$OUT/iscsid.log" 2>&1 </dev/null &
ISCSID_PID=$!
for i in $(seq 50); do iscsiadm -m session >/dev/null 2>&1; [ $? -ne 20 ] && break; sleep 0.2; done # 20 = no iscsid
kill -0 "$ISCSID_PID" 2>/dev/null || { ISCSID_PID=; die "iscsid exited: $(cat "$OUT/iscsid.log")"; }
timeout 30 iscsiadm -m discovery -t st -p "127.0.0.1:$PORT" >"$OUT/iscsiadm.log" 2>&1 ||
  die "discovery failed: $(cat "$OUT/iscsiadm.log")"
ISCSI_LOGGED_IN=1
timeout 60 iscsiadm -m node -T "$IQN" -p "127.0.0.1:$PORT" --login >>"$OUT/iscsiadm.log" 2>&1 ||
  die "login failed: $(cat "$OUT/iscsiadm.log")"
# No udev in the guest, so no /dev/disk/by-path: take the disk from the session's details.
for i in $(seq 100); do
  SD_DEV=$(iscsiadm -m session -P 3 2>/dev/null | sed -n 's/.*Attached scsi disk \(sd[a-z]*\).*/\1/p' | head -1)
  [ -n "$SD_DEV" ] && [ -b "/dev/$SD_DEV" ] && break
  SD_DEV=; sleep 0.2
done
[ -n "$SD_DEV" ] || die "no sd device after login: $(iscsiadm -m session -P 3 2>&1 | tail -20)"
SD_DEV=/dev/$SD_DEV
wait_size "$SD_DEV" || die "$SD_DEV has no size"
log "open-iscsi: $SD_DEV"

declare -A DEV=([lunbridge]=$LB_DEV [qemu-nbd]=$Q_DEV [open-iscsi]=$SD_DEV)
declare -A PIDOF=([lunbridge]=$LB_PID [qemu-nbd]=$Q_PID [open-iscsi]=)

# Same I/O scheduler everywhere ("none"; nbd has it by default, sd gets mq-deadline).
for d in "${!DEV[@]}"; do
  b=${DEV[$d]##*/}
  echo none >"/sys/block/$b/queue/scheduler" 2>/dev/null
done

{
  echo "kernel: $(uname -r)"
  echo "cpus: $(nproc)"
  echo "lunbridge: $LB_SRC sha256 $(sha256sum <"$LB" | cut -c1-16) ($(stat -c '%s bytes, built %y' "$LB_SRC"))"
  echo "qemu-nbd: $(qemu-nbd --version | head -1)"
  echo "iscsid: $(iscsid --version 2>&1 | head -1)"
  echo "fio: $(fio --version)"
  echo "tgtd url: $URL"
  for d in lunbridge qemu-nbd open-iscsi; do
    b=${DEV[$d]##*/}
    echo "$d: ${DEV[$d]} size=$(($(cat /sys/block/$b/size) / 2048))MiB" \
      "scheduler=$(cat /sys/block/$b/queue/scheduler) max_sectors_kb/max_hw_sectors_kb=$(cat /sys/block/$b/queue/max_sectors_kb)/$(cat /sys/block/$b/queue/max_hw_sectors_kb)" \
      "nr_requests=$(cat /sys/block/$b/queue/nr_requests) hw_queues=$(ls /sys/block/$b/mq 2>/dev/null | wc -l)"
  done
  echo "repeats=$REPEATS runtime=${RUNTIME}s size=${SIZE_MIB}MiB lun=${LUN_MIB}MiB"
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2

# --- fio -------------------------------------------------------------------------------
cpu_ticks() { # pid -> utime+stime (all threads) in clock ticks
  local st
  st=$(cat "/proc/$1/stat") || return 1
  st=${st##*) }
  awk '{ print $12 + $13 }' <<<"$st"
}

WORKLOADS=(
  "randread-4k-qd1   randread  4k 1"
  "randread-4k-qd32  randread  4k 32"
  "randwrite-4k-qd32 randwrite 4k 32"
  "read-1m-qd8       read      1M 8"
  "write-1m-qd8      write     1M 8"
)
DEVICES=(lunbridge qemu-nbd open-iscsi)
printf 'device\tworkload\trep\tjson\tcpu_ticks\thz\n' >"$RUNS"

run_one() { # device workload-line rep
  local d=$1 rep=$3 name rw bs qd out t0= t1= ticks=NA pid
  read -r name rw bs qd <<<"$2"
  out=$OUT/fio/$name-$d-$rep.json
  pid=${PIDOF[$d]}
  [ -z "$pid" ] || t0=$(cpu_ticks "$pid") || die "$d (pid $pid) is gone"
  timeout $((RUNTIME + 120)) fio --name=bench --filename="${DEV[$d]}" --ioengine=libaio --direct=1 \
    --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs=1 --size="${SIZE_MIB}M" \
    --time_based --runtime="$RUNTIME" --randrepeat=0 --norandommap \
    --output-format=json --output="$out" >/dev/null 2>"$out.err" ||
    die "fio $name on $d (${DEV[$d]}) failed: $(cat "$out.err")"
  rm -f "$out.err"
  if [ -n "$pid" ]; then
    t1=$(cpu_ticks "$pid") || die "$d (pid $pid) died during $name"
    ticks=$((t1 - t0))
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$d" "$name" "$rep" "fio/${out##*/}" "$ticks" "$HZ" >>"$RUNS"
  log "$name $d rep $rep: $(grep -o '"iops" : [0-9.]*' "$out" | awk '$3 > m { m = $3 } END { print int(m) }') IOPS"
}

for rep in $(seq "$REPEATS"); do
  # Rotate which device goes first each repeat, so drifts in the host's load even out.
  k=$(((rep - 1) % 3))
  order=("${DEVICES[@]:$k}" "${DEVICES[@]:0:$k}")
  for w in "${WORKLOADS[@]}"; do
    for d in "${order[@]}"; do run_one "$d" "$w" "$rep"; done
  done
done

grep -E 'VmHWM' "/proc/$LB_PID/status" | sed 's/^/lunbridge /' >>"$OUT/env.txt"
grep -E 'VmHWM' "/proc/$Q_PID/status" | sed 's/^/qemu-nbd /' >>"$OUT/env.txt"
log "fio done"
# The trap detaches everything; its exit code is this script's.
exit 0
