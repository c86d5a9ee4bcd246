#!/usr/bin/env bash
# Smoke test of the VM itself, run INSIDE the guest:  Tests/vm/vm-run.sh Tests/vm/guest-smoke.sh
# Checks what the kernel-path tests of lunbridge rely on: the nbd module and its netlink
# family, tgtd on loopback, fio, ext4 on a loop device, network namespaces + veth, netem.
# Writes summary.txt into the result folder (cwd, $VM_RESULTDIR); exits 1 if any
# required check failed (INFO lines are facts, not checks).
set -u
OUT=${VM_RESULTDIR:-$PWD}/summary.txt
: >"$OUT"
fails=0
now() { date +%s.%N; }
el() { printf '%.2f' "$(echo "$(now) - $1" | bc)"; }
line() { printf '%-5s %-22s %s\n' "$1" "$2" "$3" | tee -a "$OUT"; }
pass() { line PASS "$1" "$2"; }
fail() { line FAIL "$1" "$2"; fails=$((fails + 1)); }
info() { line INFO "$1" "$2"; }
check() { # name cmd... : PASS if cmd succeeds
  local name=$1 t; shift
  t=$(now)
  if out=$("$@" 2>&1); then pass "$name" "($(el "$t") s) $(echo "$out" | head -1)"
  else fail "$name" "($(el "$t") s) $(echo "$out" | tail -2 | tr '\n' ' ')"; fi
}

info kernel "$(uname -r)"
info uptime-at-start "$(cut -d' ' -f1 /proc/uptime) s"
info user "$(id -un) uid=$(id -u)"
[ "$(id -u)" = 0 ] && pass root "--exec runs as root" || fail root "not root"
info cpus-mem "$(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo)"
touch /.smoke-rw 2>/dev/null && { info root-fs "writable"; rm -f /.smoke-rw; } ||
  info root-fs "read-only ($(awk '$2=="/" {print $3}' /proc/mounts)); overlays: $(awk '$1 ~ /^virtme_rw_overlay/ {printf "%s ", $2}' /proc/mounts)"
info dev-shm "$(df -h --output=fstype,size /dev/shm | tail -1 | xargs)"
info resultdir "$(awk -v d="${VM_RESULTDIR:-$PWD}" '$2==d {print $3 " " $4}' /proc/mounts | cut -c1-60)"

# --- nbd -------------------------------------------------------------------------------
t=$(now)
if modprobe nbd nbds_max=16 2>/tmp/modprobe.err; then
  # max_part reads 31 although 16 is the default: the driver rounds it up to 2^n - 1.
  pass modprobe-nbd "($(el "$t") s) nbds_max=$(cat /sys/module/nbd/parameters/nbds_max) max_part=$(cat /sys/module/nbd/parameters/max_part)"
else
  fail modprobe-nbd "$(cat /tmp/modprobe.err)"
fi
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/nbd0 ] && break; sleep 0.2; done
[ -b /dev/nbd0 ] && pass dev-nbd0 "$(ls /dev/nbd* 2>/dev/null | grep -c '^/dev/nbd[0-9]*$') /dev/nbdN block devices" ||
  fail dev-nbd0 "/dev/nbd0 is not a block device"
[ -d /sys/block/nbd0 ] && pass sys-block-nbd0 "size=$(cat /sys/block/nbd0/size) pid=$(cat /sys/block/nbd0/pid 2>/dev/null || echo none) files: $(ls /sys/block/nbd0 | tr '\n' ' ' | cut -c1-80)" ||
  fail sys-block-nbd0 "missing"
if command -v genl >/dev/null; then
  if g=$(genl ctrl get name nbd 2>&1); then
    pass genl-family-nbd "$(echo "$g" | grep -o 'ID: *0x[0-9a-f]*' | head -1); version $(echo "$g" | grep -o 'Version: *0x[0-9a-f]*' | head -1 | awk '{print $2}'); mcast: $(echo "$g" | grep -o 'name: nbd_mc_group' | head -1)"
    echo "$g" >"${VM_RESULTDIR:-$PWD}/genl-nbd.txt"
  else
    fail genl-family-nbd "$g"
  fi
else
  grep -q nbd /proc/net/netlink 2>/dev/null; fail genl-family-nbd "no genl (iproute2) in the guest"
fi

# --- tmpfs throughput ------------------------------------------------------------------
t=$(now)
if dd if=/dev/zero of=/dev/shm/smoke.dd bs=1M count=64 conv=fsync status=none; then
  pass dd-64MiB-tmpfs "($(el "$t") s) /dev/shm"
else fail dd-64MiB-tmpfs "dd failed"; fi
rm -f /dev/shm/smoke.dd

# --- tgtd on loopback ------------------------------------------------------------------
CP=$((10000 + RANDOM % 22000)) # tgtd 1.0.85 refuses control ports above 32767
PORT=3260
if command -v tgtd >/dev/null; then
  truncate -s 64M /dev/shm/smoke-lun.img
  t=$(now)
  tgtd -f --control-port "$CP" --iscsi portal=127.0.0.1:$PORT >/tmp/tgtd.log 2>&1 &
  tpid=$!
  ok=0
  for _ in $(seq 50); do
    tgtadm -C "$CP" --lld iscsi --op show --mode target >/dev/null 2>&1 && { ok=1; break; }
    sleep 0.2
  done
  if [ $ok = 1 ]; then
    ta() { tgtadm -C "$CP" --lld iscsi "$@"; }
    if ta --op new --mode target --tid 1 -T iqn.2024-01.org.lunbridge:smoke &&
      ta --op new --mode logicalunit --tid 1 --lun 1 -b /dev/shm/smoke-lun.img &&
      ta --op bind --mode target --tid 1 -I ALL &&
      ss -Htln "sport = :$PORT" | grep -q 127.0.0.1; then
      pass tgtd "($(el "$t") s) control port $CP, portal 127.0.0.1:$PORT, 64 MiB LUN in /dev/shm"
    else
      fail tgtd "started but setup failed: $(tail -2 /tmp/tgtd.log | tr '\n' ' ')"
    fi
    t=$(now)
    ta --op delete --mode target --tid 1 --force >/dev/null 2>&1
    ta --op delete --mode system >/dev/null 2>&1
    for _ in $(seq 25); do kill -0 $tpid 2>/dev/null || break; sleep 0.2; done
    if kill -0 $tpid 2>/dev/null; then
      kill -KILL $tpid; fail tgtd-stop "did not exit after delete system: SIGKILLed"
    else
      pass tgtd-stop "($(el "$t") s) exited after delete target --force + delete system"
    fi
  else
    fail tgtd "control port $CP never answered: $(tail -2 /tmp/tgtd.log | tr '\n' ' ')"
    kill -KILL $tpid 2>/dev/null
  fi
  wait $tpid 2>/dev/null
  rm -f /dev/shm/smoke-lun.img
else
  fail tgtd "tgtd not installed (Debian package tgt)"
fi
command -v iscsiadm >/dev/null && info open-iscsi "iscsiadm present" || info open-iscsi "iscsiadm absent (package open-iscsi not installed)"
t=$(now); modprobe iscsi_tcp 2>/dev/null && info iscsi_tcp "loads ($(el "$t") s)" || info iscsi_tcp "does not load"

# --- fio, ext4 on a loop device ----------------------------------------------------------
check fio fio --version
mnt=/tmp/smoke-mnt
t=$(now)
# The loop driver is a module in the Debian kernel and nothing loads it in the guest:
# without `modprobe loop`, losetup says "cannot find an unused loop device".
modprobe loop 2>/dev/null
if truncate -s 128M /dev/shm/smoke-ext4.img && loop=$(losetup -f --show /dev/shm/smoke-ext4.img); then
  if mkfs.ext4 -q -F "$loop" && mkdir -p $mnt && mount "$loop" $mnt &&
    echo hello >$mnt/f && sync && [ "$(cat $mnt/f)" = hello ] && umount $mnt; then
    pass ext4-on-loop "($(el "$t") s) mkfs.ext4 + mount + write + umount on $loop"
  else
    fail ext4-on-loop "mkfs/mount on $loop failed"; umount $mnt 2>/dev/null
  fi
  losetup -d "$loop"
else
  fail ext4-on-loop "losetup failed"
fi
rm -f /dev/shm/smoke-ext4.img

# --- network namespaces, veth, netem -----------------------------------------------------
ns=lbsmoke
t=$(now)
if ip netns add $ns && ip link add lbs0 type veth peer name lbs1 && ip link set lbs1 netns $ns &&
  ip addr add 198.18.0.1/30 dev lbs0 && ip link set lbs0 up &&
  ip -n $ns addr add 198.18.0.2/30 dev lbs1 && ip -n $ns link set lbs1 up &&
  ip -n $ns link set lo up && ping -c1 -W2 198.18.0.2 >/dev/null; then
  pass netns-veth "($(el "$t") s) ping across a veth pair into netns $ns"
  t=$(now)
  if modprobe sch_netem && tc qdisc add dev lbs0 root netem delay 50ms; then
    rtt=$(ping -c2 -W2 198.18.0.2 | sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' | tail -1)
    if [ -n "$rtt" ] && [ "$(echo "$rtt >= 45" | bc)" = 1 ]; then
      pass sch_netem "($(el "$t") s) netem delay 50ms -> rtt $rtt ms"
    else
      fail sch_netem "netem added but rtt was '$rtt' ms"
    fi
  else
    fail sch_netem "modprobe sch_netem / tc qdisc netem failed"
  fi
else
  fail netns-veth "netns/veth setup or ping failed"
fi
ip link del lbs0 2>/dev/null
ip netns del $ns 2>/dev/null

# --- leftovers --------------------------------------------------------------------------
sleep 300 &
info background "a 'sleep 300 &' is left running: the VM still powers off when this script exits"

total=$(grep -c '^PASS' "$OUT"); echo "smoke: $total passed, $fails failed" | tee -a "$OUT"
[ $fails = 0 ]
