#!/usr/bin/env bash
# Runs INSIDE the VM (Tests/vm/vm-run.sh): the kernel path end to end against a tgtd in
# the guest on loopback, then against LIO (guest-lio.sh). Prints one "ok N - ..." /
# "not ok N - ..." line per check (Tests/lib/tap.sh) and exits non-zero if any failed.
#   guest-attach.sh LUNBRIDGE_BINARY REPO_DIR
set -uo pipefail
LB=$(realpath "$1")
REPO=$(realpath "$2")
. "$REPO/Tests/lib/tap.sh"
# Checks of a complete run, guest-lio.sh's included: a run that stops early is padded.
tap_start vm 138

T=$(mktemp -d /tmp/guest-attach.XXXXXX)
M=$T/mnt  # the guest's /mnt is read-only; /tmp is a writable overlay
cleanup() {
  umount "$M" 2>/dev/null
  [ -n "${dev:-}" ] && "$LB" detach "$dev" 2>/dev/null
  "$REPO/Tests/lib/tgtd.sh" stop "$T" >/dev/null 2>&1
  type lio_stop >/dev/null 2>&1 && lio_stop
}
trap cleanup EXIT

modprobe nbd nbds_max=8 || { notok "modprobe nbd"; finish; }
ok "modprobe nbd ($(uname -r))"

export TGTD_LUN_SIZE_MIB=128 TGTD_IQN=iqn.2026-11.org.lunbridge:vm
url=$("$REPO/Tests/lib/tgtd.sh" start "$T") || { notok "start tgtd"; finish; }
ok "tgtd started: $url"
img="$T/lun.img"

# attach: prints the device, goes to the background.
dev=$(timeout 60 "$LB" attach "$url" --connections 2 --timeout 30 --dead-conn-timeout 60 --log-file "$T/attach1.log" 2>"$T/attach.err")
rc=$?
if [ $rc -ne 0 ] || [[ "$dev" != /dev/nbd* ]]; then
  notok "attach (rc $rc, '$dev'): $(cat "$T/attach.err")"; finish
fi
ok "attach printed $dev and returned"
idx=${dev#/dev/nbd}
check "device size is the LUN's 128 MiB" test "$(cat /sys/block/nbd$idx/size)" = $((128 * 2048))
check "requests up to 1 MiB (max_sectors_kb $(cat /sys/block/nbd$idx/queue/max_sectors_kb))" \
  test "$(cat /sys/block/nbd$idx/queue/max_sectors_kb)" -ge 512
check "backend names the LUN" grep -q "lunbridge:$TGTD_IQN:1:" /sys/block/nbd$idx/backend
check "list shows it with its URL" bash -c "'$LB' list | grep '^$dev' | grep -q '$url'"
pid=$(pgrep -f "lunbridge attach $url" | head -1)
check "the serving process runs in the background (pid ${pid:-none})" test -n "$pid"

# A filesystem: write, remount, verify.
mkdir -p "$M"
check "mkfs.ext4" mkfs.ext4 -q -E nodiscard "$dev"
check "mount" mount "$dev" $M
for i in 1 2 3; do dd if=/dev/urandom of=$M/file$i bs=1M count=6 status=none; done
(cd $M && sha256sum file1 file2 file3 >"$T/sums")
check "umount" umount $M
check "mount again" mount "$dev" $M
check "checksums after remount" bash -c "cd $M && sha256sum -c --quiet '$T/sums'"
df -h $M

# fstrim reaches the target: the thin LUN's backing file gives blocks back.
before=$(du -kL "$img" | cut -f1)
rm -f $M/file1 $M/file2 $M/file3; sync
check "fstrim" fstrim -v $M
after=$(du -kL "$img" | cut -f1)
check "fstrim shrank the backing file ($before KiB -> $after KiB)" test "$after" -lt "$before"
check "umount after trim" umount $M

# fio with crc32c verify on the raw device.
check "the first serving process is alive after fstrim" kill -0 "${pid:-none}" ||
  { echo "# its log:"; tail -20 "$T/attach1.log" | sed 's/^/# /'; }
check "fio verify on $dev" fio --name=raw --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite \
  --bs=4k --iodepth=16 --size=24m --verify=crc32c --verify_fatal=1 --output="$T/fio-raw.txt"

# kill -9 of the server while fio verifies, then a restart within the dead-connection
# timeout: the device is taken over with RECONFIGURE and fio sees no error.
fio --name=survive --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=8 \
  --size=16m --time_based --runtime=25 --verify=crc32c --verify_fatal=1 --verify_backlog=256 \
  --output="$T/fio-survive.txt" &
fio_pid=$!
sleep 6
isids() { timeout 5 "$LB" status "$dev" --json 2>/dev/null | grep '"isid"' | tr -d ' ",' | sort | tr '\n' ' '; }
isids_before=$(isids)
check "kill -9 the serving process (pid ${pid:-none}) during fio" kill -9 "${pid:-none}"
sleep 2
dev2=$(timeout 60 "$LB" attach "$url" --verbose --connections 2 --timeout 30 --dead-conn-timeout 60 2>"$T/attach2.err")
check "restarted attach took over $dev (got '$dev2': $(cat "$T/attach2.err"))" test "$dev2" = "$dev"
# The restarted process logs in with the same ISIDs (TSIH 0: the target ends the old
# session's tasks before it answers), and only then takes the device over, after which
# the kernel re-sends what was in flight.
check "the same ISIDs after the restart (${isids_before:-none} -> $(isids))" \
  bash -c '[ -n "$1" ] && [ "$1" = "$2" ]' _ "$isids_before" "$(isids)"
sessions=$(timeout 10 tgtadm -C "$(cat "$T/cp")" --lld iscsi --op show --mode conn --tid 1 | grep -c '^Session:')
check "tgtd has one session for the one path: the old one ended ($sessions)" test "$sessions" -eq 1
login_line=$(grep -n 'logged in' "$T/attach2.err" | head -1 | cut -d: -f1)
takeover_line=$(grep -n 'reattached an existing device' "$T/attach2.err" | head -1 | cut -d: -f1)
check "login (line ${login_line:-none}) before the device is taken over (line ${takeover_line:-none})" \
  bash -c '[ -n "$1" ] && [ -n "$2" ] && [ "$1" -lt "$2" ]' _ "$login_line" "$takeover_line"
wait $fio_pid
fio_rc=$?
check "fio verify survived kill -9 and restart (rc $fio_rc)" test $fio_rc -eq 0
grep -E "err=|verify" "$T/fio-survive.txt" | head -3

# detach: the serving process flushes, logs out and exits.
pid=$(pgrep -f "lunbridge attach $url" | head -1)
check "the restarted serving process runs (pid ${pid:-none})" test -n "$pid"
check "detach" "$LB" detach "$dev"
for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
check "the serving process exited after detach" bash -c "[ -n '$pid' ] && ! kill -0 '$pid' 2>/dev/null" ||
  { echo "# serving process log:"; sed 's/^/# /' "$T/attach2.err"; }
dev=""

# A metrics port already taken: attach fails with the reason before it announces a device,
# and leaves none behind (it used to print the device, exit 0, then let it go).
/usr/bin/python3 -c 'import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 9618)); s.listen(1); time.sleep(120)' &
busy_pid=$!
sleep 1
busy_dev=$(timeout 60 "$LB" attach "$url" --connections 1 --metrics tcp:127.0.0.1:9618 2>"$T/attach-busy.err")
busy_rc=$?
kill "$busy_pid" 2>/dev/null
check "attach with its metrics port taken fails (rc $busy_rc, printed '$busy_dev')" \
  bash -c '[ "$1" -ne 0 ] && [ -z "$2" ]' _ "$busy_rc" "$busy_dev"
check "... saying why: $(tail -1 "$T/attach-busy.err")" grep -q "^lunbridge: error: .*9618" "$T/attach-busy.err"
check "... and leaves no device for the URL" bash -c '! "$1" list 2>/dev/null | grep -qF "$2"' _ "$LB" "$url"

# A volume file: attach by NAME, the name record for udev, config check.
mkdir -p /etc/lunbridge/volumes
printf 'paths = ["%s"]\nconnections = 1\ntimeout = 20\n' "$url" >/etc/lunbridge/volumes/vmvol.toml
chmod 600 /etc/lunbridge/volumes/vmvol.toml
check "config check vmvol" "$LB" config check vmvol
dev=$(timeout 60 "$LB" attach vmvol 2>"$T/attach3.err")
check "attach by volume name printed '$dev' ($(cat "$T/attach3.err"))" test -b "${dev:-/nonexistent}"
if [ -n "$dev" ]; then
  idx=${dev#/dev/nbd}
  check "the name record for udev says vmvol" bash -c "head -1 /run/lunbridge/nbd$idx.name | grep -qx vmvol"
  check "the by-name device's timeout came from the file" test "$(cat /sys/block/nbd$idx/queue/io_timeout 2>/dev/null)" = 20000
  check "detach the volume" "$LB" detach "$dev"
  dev=""
fi

# Multipath on the kernel path: a volume file with one portal, metrics and status; SIGHUP
# after adding a second portal (127.0.0.2) to the file; a connection cut by tgtd while fio
# verifies; both paths active again afterwards; a metrics scrape that counts fio's I/O.
PY=/usr/bin/python3
P=$(cat "$T/port"); CP=$(cat "$T/cp")
tgtadm -C "$CP" --lld iscsi --op new --mode portal --param portal=127.0.0.2:"$P"
url2="iscsi://127.0.0.2:$P/$TGTD_IQN/1"
vol=/etc/lunbridge/volumes/mpvol.toml
printf 'paths = ["%s"]\nconnections = 2\nmetrics = "tcp:127.0.0.1:9617"\n' "$url" >$vol
chmod 600 $vol
dev=$(timeout 60 "$LB" attach mpvol 2>"$T/attach4.err")
check "attach mpvol printed '$dev' ($(cat "$T/attach4.err"))" test -b "${dev:-/nonexistent}"
mp_pid=$(pgrep -f "lunbridge attach mpvol" | head -1)
paths_up() {  # paths_up N: status --json shows exactly N paths, all active
  "$LB" status mpvol --json >"$T/status.json" 2>"$T/status.err" &&
    $PY -c 'import json,sys; p=json.load(open(sys.argv[1]))[0]["paths"]; sys.exit(not (len(p)==int(sys.argv[2]) and all(x["state"]=="active" for x in p)))' "$T/status.json" "$1"
}
wait_paths_up() { for _ in $(seq 1 60); do paths_up "$1" && return 0; sleep 0.5; done; return 1; }
check "status mpvol: one path, active" wait_paths_up 1
printf 'paths = ["%s", "%s"]\nconnections = 2\nmetrics = "tcp:127.0.0.1:9617"\npolicy = "round-robin"\n' \
  "$url" "$url2" >$vol
check "SIGHUP to the serving process (pid ${mp_pid:-none})" kill -HUP "${mp_pid:-none}"
check "after the reload: two paths, both active" wait_paths_up 2
"$LB" status mpvol | sed 's/^/# /'
fio --name=mpath --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=8 \
  --size=16m --time_based --runtime=12 --verify=crc32c --verify_fatal=1 --verify_backlog=256 \
  --output-format=terse --output="$T/fio-mpath.txt" &
fio_pid=$!
sleep 4
victim=$(tgtadm -C "$CP" --lld iscsi --op show --mode conn --tid 1 | awk '/Session:/ {s=$2} /Connection:/ {print s, $2; exit}')
check "tgtadm deletes one connection ($victim) during fio" \
  tgtadm -C "$CP" --lld iscsi --op delete --mode conn --tid 1 --sid "${victim% *}" --cid "${victim#* }"
wait $fio_pid
fio_rc=$?
check "fio verify through a lost path (rc $fio_rc)" test $fio_rc -eq 0
check "both paths active again after the cut" wait_paths_up 2
check "status counts the path failure and reinstatement" $PY -c '
import json,sys
p=json.load(open(sys.argv[1]))[0]["paths"]
sys.exit(not (sum(x["failures"] for x in p) >= 1 and sum(x["reinstatements"] for x in p) >= 1 and all(x["ios"] > 0 for x in p)))' "$T/status.json"
curl -sf http://127.0.0.1:9617/metrics >"$T/metrics.txt"
check "metrics scrape parses as Prometheus text" "$REPO/Tests/scripts/prom-check.py" "$T/metrics.txt"
# Bytes, not requests: the block layer merges adjacent 4 KiB writes into one NBD request
# now and then (one run counted 1264 requests for fio's 1265 writes).
fio_bytes=$(( $(cut -d';' -f47 "$T/fio-mpath.txt" | head -1) * 1024 ))  # terse v3 field 47: KiB written
nbd_bytes=$("$REPO/Tests/scripts/prom-check.py" "$T/metrics.txt" 'lunbridge_bytes_total{direction="write"}')
nbd_bytes=${nbd_bytes%.*}
check "metrics count the bytes fio wrote ($nbd_bytes >= $fio_bytes)" test "${nbd_bytes:-0}" -ge "${fio_bytes:-1}" -a "${fio_bytes:-0}" -gt 0
check "detach mpvol" "$LB" detach "$dev"
dev=""

# An attach started from a shell whose stderr reader then exits (a pipe closed after the
# first line): the background process must outlive it, recover a connection cut afterwards,
# and keep the data right. Then memory pressure: a hog takes most of the guest's memory
# while fio writes through the page cache to a filesystem on the device (writeback goes
# through the server), and the server's own memory is locked.
"$LB" attach "$url" --connections 2 --timeout 30 --dead-conn-timeout 60 --verbose 2>&1 >"$T/dev5" | head -1 >"$T/head5"
dev=$(cat "$T/dev5")
check "attach with its stderr piped into head -1 printed '$dev'" test -b "${dev:-/nonexistent}"
pid5=$(pgrep -f "lunbridge attach $url" | head -1)
sleep 1
victim=$(tgtadm -C "$CP" --lld iscsi --op show --mode conn --tid 1 | awk '/Session:/ {s=$2} /Connection:/ {print s, $2; exit}')
check "tgtadm cuts a connection after the stderr reader has gone" \
  tgtadm -C "$CP" --lld iscsi --op delete --mode conn --tid 1 --sid "${victim% *}" --cid "${victim#* }"
check "fio verify after the cut" fio --name=afterpipe --filename="$dev" --ioengine=libaio --direct=1 \
  --rw=randwrite --bs=4k --iodepth=8 --size=16m --verify=crc32c --verify_fatal=1 --output="$T/fio-pipe.txt"
check "the serving process (pid ${pid5:-none}) outlived its stderr reader" kill -0 "${pid5:-none}"
check "its stdin, stdout and stderr are /dev/null" bash -c \
  "[ \"\$(readlink /proc/${pid5:-none}/fd/0)\$(readlink /proc/${pid5:-none}/fd/1)\$(readlink /proc/${pid5:-none}/fd/2)\" = /dev/null/dev/null/dev/null ]"
vmlck=$(awk '/^VmLck:/ {print $2}' /proc/${pid5:-none}/status 2>/dev/null)
check "its memory is locked (VmLck ${vmlck:-none} kB)" test "${vmlck:-0}" -gt 1024
check "mkfs.ext4 for the pressure test" mkfs.ext4 -q -E nodiscard "$dev"
check "mount for the pressure test" mount "$dev" "$M"
avail=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
hog_kb=$((avail - 200 * 1024))
echo -1000 >/proc/${pid5:-none}/oom_score_adj 2>/dev/null  # as lunbridge@.service sets it
/usr/bin/python3 -c '
import sys, time
n = int(sys.argv[1]) * 1024
b = bytearray(n)
for i in range(0, n, 4096): b[i] = 1
time.sleep(int(sys.argv[2]))' "$hog_kb" 90 &
hog=$!
sleep 3
echo "# memory hog holds $((hog_kb / 1024)) MiB of $((avail / 1024)) MiB available: $(grep -E '^(MemFree|Cached|Dirty)' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
pressure_cg=""
if grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null && mkdir -p /sys/fs/cgroup/lbpressure 2>/dev/null &&
  echo 32M >/sys/fs/cgroup/lbpressure/memory.max 2>/dev/null; then
  pressure_cg=/sys/fs/cgroup/lbpressure
fi
echo "# fio in ${pressure_cg:-the root cgroup (no memory controller here)}${pressure_cg:+ with memory.max 32M}"
timeout 300 bash -c "${pressure_cg:+echo \$\$ > $pressure_cg/cgroup.procs;} exec fio --name=pressure --directory='$M' --rw=write \
  --bs=256k --size=64m --ioengine=psync --end_fsync=1 --verify=crc32c --verify_fatal=1 --output='$T/fio-pressure.txt'"
fio_rc=$?
check "fio through the page cache under memory pressure completed (rc $fio_rc, 124 = deadlock/timeout)" test $fio_rc -eq 0
kill "$hog" 2>/dev/null; wait "$hog" 2>/dev/null
grep -E "WRITE:|READ:" "$T/fio-pressure.txt" | sed 's/^/# /'
check "the serving process survived the pressure" kill -0 "${pid5:-none}"
check "umount after the pressure test" umount "$M"
[ -n "$pressure_cg" ] && rmdir "$pressure_cg" 2>/dev/null
check "detach after the pressure test" "$LB" detach "$dev"
dev=""

# Online resize: a LUN of its own (target 2 of the same tgtd) grown on the "array" (its
# backing file grown and the LU re-created at the new size: tgtd reads the size when the
# LU is made), then `lunbridge rescan`: the kernel device takes the new size under the
# mounted filesystem, resize2fs grows it online, fio verify passes before and after. A
# shrink under the mount is refused and changes nothing.
CP=$(cat "$T/cp"); P=$(cat "$T/port")
adm() { timeout 10 tgtadm -C "$CP" --lld iscsi "$@"; }
rimg=$T/resize.img riqn=iqn.2026-11.org.lunbridge:resize
truncate -s 64M "$rimg"
adm --op new --mode target --tid 2 -T "$riqn" && adm --op new --mode logicalunit --tid 2 --lun 1 -b "$rimg" &&
  adm --op bind --mode target --tid 2 -I ALL
rurl="iscsi://127.0.0.1:$P/$riqn/1"
rdev=$(timeout 60 "$LB" attach "$rurl" --log-file "$T/resize.log" 2>"$T/resize.err")
check "attach a 64 MiB LUN to grow (${rdev:-nothing}: $(cat "$T/resize.err"))" test -b "${rdev:-/nonexistent}"
if [ -b "${rdev:-/nonexistent}" ]; then
  dev=$rdev
  check "blockdev --getsize64: 64 MiB" test "$(blockdev --getsize64 "$rdev")" = $((64 << 20))
  check "mkfs.ext4 + mount on it" bash -c "mkfs.ext4 -q -E nodiscard '$rdev' && mount '$rdev' '$M'"
  check "fio verify before the resize" fio --name=before --filename="$M/before.dat" --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --iodepth=8 --size=8m --verify=crc32c --verify_fatal=1 --output="$T/fio-before.txt"
  sync
  truncate -s 128M "$rimg"
  check "the array grows the LU to 128 MiB (tgtd: LU re-created on the grown file)" \
    bash -c "timeout 10 tgtadm -C $CP --lld iscsi --op delete --mode logicalunit --tid 2 --lun 1 &&
      timeout 10 tgtadm -C $CP --lld iscsi --op new --mode logicalunit --tid 2 --lun 1 -b '$rimg'"
  out=$("$LB" rescan "$rdev" 2>&1)
  check "lunbridge rescan $rdev: $out" test "$out" = "the LUN grew from $((64 << 20)) to $((128 << 20)) bytes; applied"
  check "blockdev --getsize64 shows the new size ($(blockdev --getsize64 "$rdev"))" \
    test "$(blockdev --getsize64 "$rdev")" = $((128 << 20))
  check "the kernel logged the capacity change" bash -c "dmesg | grep -q 'nbd${rdev#/dev/nbd}: detected capacity change'"
  size0=$(df -k --output=size "$M" | tail -1)
  check "resize2fs grows the mounted ext4" resize2fs "$rdev"
  size1=$(df -k --output=size "$M" | tail -1)
  check "df: $size0 KiB -> $size1 KiB" test "$size1" -gt $((size0 * 3 / 2))
  check "fio verify after the resize, beyond the old end" fio --name=after --filename="$M/after.dat" --ioengine=libaio \
    --direct=1 --rw=write --bs=64k --iodepth=8 --size=64m --verify=crc32c --verify_fatal=1 --output="$T/fio-after.txt"
  check "the data written before the resize still verifies" fio --name=before --filename="$M/before.dat" \
    --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=8 --size=8m --verify=crc32c --verify_only \
    --verify_fatal=1 --output="$T/fio-before-again.txt"
  check "status counts the change (capacityChanges 1)" \
    bash -c "'$LB' status '$rdev' --json | grep -q '\"capacityChanges\" : 1'"
  sync
  # The array shrinks it (another, smaller file): refused while mounted; then back.
  truncate -s 32M "$T/small.img"
  adm --op delete --mode logicalunit --tid 2 --lun 1 && adm --op new --mode logicalunit --tid 2 --lun 1 -b "$T/small.img"
  out=$("$LB" rescan "$rdev" 2>&1); rc=$?
  check "a shrink under the mount is refused, exit 28: $out" \
    bash -c "[ $rc = 28 ] && grep -q 'is in use (mounted?) and keeps $((128 << 20)) bytes' <<<'$out'"
  check "the device kept its size" test "$(blockdev --getsize64 "$rdev")" = $((128 << 20))
  adm --op delete --mode logicalunit --tid 2 --lun 1 && adm --op new --mode logicalunit --tid 2 --lun 1 -b "$rimg"
  check "with the LU back, rescan finds the size unchanged" bash -c "'$LB' rescan '$rdev' | grep -q unchanged"
  check "umount and e2fsck -fn: clean" bash -c "umount '$M' && e2fsck -fn '$rdev' >'$T/resize-fsck.txt' 2>&1" ||
    sed 's/^/# /' "$T/resize-fsck.txt"
  check "detach the resized LUN" "$LB" detach "$rdev"
  dev=""
fi

# Errors a user meets.
out=$("$LB" attach "iscsi://127.0.0.1:$(cat "$T/port")/iqn.2026-11.org.lunbridge:nope/1" 2>&1); rc=$?
check "unknown target: one line, non-zero ($out)" bash -c "[ $rc -ne 0 ] && [ \$(wc -l <<<'$out') -eq 1 ]"

# LIO, the kernel's own target, in the same boot.
. "$REPO/Tests/vm/guest-lio.sh"
finish
