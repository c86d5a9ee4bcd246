#!/bin/bash
# Runs INSIDE the boot test's VM (lunbridge-boot-test.service, ordered after
# multi-user.target): the checks of one boot. Writes "ok - ..." / "not ok - ..." lines
# to $BT_RESULTS/bootPHASE.tap and, last, bootPHASE.done; the unit then powers off.
#   guest-check.sh 1   prepare: enable the unit, mkfs, the fstab line, data, restart check
#   guest-check.sh 2   the real boot: unit and mount came up at boot, data, fsck
set -uo pipefail
phase=$1
. "$(dirname "${BASH_SOURCE[0]}")/boot-lib.sh"
R=$BT_RESULTS
exec >"$R/boot$phase.tap" 2>"$R/boot$phase.stderr"
# The guest half of the suite (Tests/lib/tap.sh, staged beside this folder): unnumbered
# lines that boot-test.sh relays, and whose plan it holds.
. "$(dirname "${BASH_SOURCE[0]}")/../../lib/tap.sh"
tap_start - 0
finish() {
  note "is-system-running: $(systemctl is-system-running 2>&1)"
  systemctl --failed --plain --no-legend --no-pager 2>&1 | sed 's/^/# failed unit: /'
  tap_counts >"$R/boot$phase.done"
  sync
  tap_finish
  exit $?
}
# When a unit entered the active state, in seconds since boot (0 if never).
since() { awk -v u="$(systemctl show -P ActiveEnterTimestampMonotonic "$1")" 'BEGIN { printf "%.1f", u / 1e6 }'; }
earlier() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > 0 && a < b) }'; }
nbd_of() { readlink -f "$BT_DEV" 2>/dev/null; }

check "systemd is PID 1 ($(systemctl --version | head -1))" test "$(cat /proc/1/comm)" = systemd
mu=$(since multi-user.target)
check "multi-user.target reached ${mu} s after boot" test "$(systemctl is-active multi-user.target)" = active
check "the test target (tgtd) is up" systemctl is-active -q lunbridge-test-target.service || finish
check "nbd was loaded at boot by systemd-modules-load (/etc/modules-load.d/lunbridge.conf)" \
  bash -c "test -d /sys/module/nbd && journalctl -b -t systemd-modules-load -o cat | grep -q \"Inserted module 'nbd'\""
# (-t, the sender's own identifier: -u needs the unit journald looks up from the sender's
# cgroup, which it can miss for a process as short-lived as systemd-modules-load.)

no_io_errors() {
  local e
  e=$(journalctl -b -k -o cat | grep -E 'I/O error|EXT4-fs (error|warning)|Buffer I/O')
  [ -z "$e" ] && return 0
  head -5 <<<"$e" | sed 's/^/# kernel: /'
  return 1
}

# systemctl restart while fio verifies on the mounted filesystem: the old process leaves the
# device to its successor, which takes it over with NBD_CMD_RECONFIGURE; the mount stays.
restart_under_fio() {
  local dev pid0 pid1 mount0 fio_pid fio_rc
  dev=$(nbd_of)
  pid0=$(systemctl show -P MainPID "$BT_UNIT")
  mount0=$(systemctl show -P ActiveEnterTimestampMonotonic "$BT_MOUNT_UNIT")
  fio --name=restart --filename="$BT_MNT/fio.dat" --size=16m --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --iodepth=8 --time_based --runtime=30 --verify=crc32c --verify_fatal=1 \
    --verify_backlog=256 --output="$R/boot$phase-fio.txt" &
  fio_pid=$!
  sleep 8
  check "systemctl restart $BT_UNIT while fio verifies on $BT_MNT" timeout 150 systemctl restart "$BT_UNIT"
  pid1=$(systemctl show -P MainPID "$BT_UNIT")
  check "a new process serves the volume (pid $pid0 -> $pid1)" test "$pid1" != 0 -a "$pid1" != "$pid0"
  check "the old process left $dev to it (device in use)" \
    bash -c "journalctl -b -o cat _PID=$pid0 | grep -q 'is in use'"
  check "the new process took $dev over with RECONFIGURE" \
    bash -c "journalctl -b -o cat _PID=$pid1 | grep -q 'reattached an existing device'"
  wait "$fio_pid"
  fio_rc=$?
  check "fio verify (crc32c, verify_fatal) ran through the restart: exit $fio_rc" test "$fio_rc" = 0
  grep -E "err=|verify:" "$R/boot$phase-fio.txt" | sed 's/^/# fio: /' | head -3
  check "$BT_DEV still links to $dev" test "$(nbd_of)" = "$dev"
  check "$BT_MNT stayed mounted (the mount unit was never restarted)" \
    test "$(systemctl show -P ActiveEnterTimestampMonotonic "$BT_MOUNT_UNIT")" = "$mount0" -a \
    "$(findmnt -n -o SOURCE "$BT_MNT")" = "$dev"
  check "no I/O error in the kernel log" no_io_errors
  rm -f "$BT_MNT/fio.dat"
}

if [ "$phase" = 1 ]; then
  # The fstab line first: enable's reload of systemd then also turns it into a mount unit
  # (a reload reads every unit file over 9p: half a minute under emulation).
  echo "$BT_FSTAB_LINE" >>/etc/fstab
  check "systemctl enable --now $BT_UNIT" systemctl enable --now "$BT_UNIT" || finish
  check "$BT_UNIT is $(systemctl is-enabled "$BT_UNIT") and active" \
    test "$(systemctl is-enabled "$BT_UNIT")/$(systemctl is-active "$BT_UNIT")" = enabled/active
  udevadm settle
  dev=$(nbd_of)
  check "udev links $BT_DEV -> ${dev:-nothing}" test -b "$BT_DEV" -a "${dev#/dev/nbd}" != "$dev" || finish
  check "its backend names the LUN ($(cat /sys/block/"${dev#/dev/}"/backend))" \
    grep -q "^lunbridge:$BT_IQN:1:" "/sys/block/${dev#/dev/}/backend"
  bypath=/dev/disk/by-path/ip-127.0.0.1:$BT_PORT-iscsi-$BT_IQN-lun-1
  check "udev links open-iscsi's by-path name $bypath -> $(readlink -f "$bypath")" test "$(readlink -f "$bypath")" = "$dev"
  wwn=$(ls /dev/disk/by-id/ | grep '^wwn-0x' | head -1)
  check "and the LU's NAA identifier as /dev/disk/by-id/${wwn:-wwn-0x...} -> $(readlink -f "/dev/disk/by-id/$wwn")" \
    test -n "$wwn" -a "$(readlink -f "/dev/disk/by-id/$wwn")" = "$dev"
  check "mkfs.ext4 $BT_DEV" mkfs.ext4 -F -q -E nodiscard "$BT_DEV" || finish
  check "the fstab line '$BT_FSTAB_LINE' gives $BT_MOUNT_UNIT" \
    test "$(systemctl show -P SourcePath "$BT_MOUNT_UNIT")" = /etc/fstab
  check "systemctl start $BT_MOUNT_UNIT" systemctl start "$BT_MOUNT_UNIT" || finish
  check "$BT_MNT is mounted from $dev" test "$(findmnt -n -o SOURCE "$BT_MNT")" = "$dev" || finish
  for i in 1 2 3; do dd if=/dev/urandom of="$BT_MNT/data$i" bs=1M count=4 status=none; done
  (cd "$BT_MNT" && sha256sum data1 data2 data3) >"$R/data.sha256"
  check "wrote 12 MiB of data, checksums kept outside the VM" \
    bash -c "sync && test \$(wc -l <'$R/data.sha256') = 3"
  restart_under_fio
  check "the data is intact after the restart" bash -c "cd '$BT_MNT' && sha256sum -c --quiet '$R/data.sha256'"
  note "powering off with $BT_MNT mounted: the shutdown must unmount it, then stop $BT_UNIT"
  finish
fi

# Boot 2: nothing was done by hand; the unit, the fstab line and the target came up at boot.
# The unit is not enabled: lunbridge's generator pulled it in (startup = "automatic").
en=$(systemctl is-enabled "$BT_UNIT" 2>&1)
# (is-enabled says enabled-runtime for a generator's link too: what counts is that no
# enable link exists and the generator's does.)
check "$BT_UNIT has no enable link ($en) and is pulled in by lunbridge-generator (startup = \"automatic\")" \
  bash -c "! ls /etc/systemd/system/*.wants/$BT_UNIT /run/systemd/system/*.wants/$BT_UNIT >/dev/null 2>&1 && test -L /run/systemd/generator/multi-user.target.wants/$BT_UNIT"
bin=$(bt_param binary)
check "lunbridge config check reports the volume as automatic" \
  bash -c "'$bin' config check $BT_VOLUME | grep -q 'startup automatic'"
unit_t=$(since "$BT_UNIT") mount_t=$(since "$BT_MOUNT_UNIT")
check "$BT_UNIT started at boot (active at ${unit_t} s, before multi-user.target at ${mu} s)" \
  earlier "$unit_t" "$mu"
dev=$(nbd_of)
dev_unit=$(systemd-escape -p --suffix=device "$BT_DEV")
check "$dev_unit waits up to 5 min for the volume (dev-lunbridge-.device.d drop-in)" \
  test "$(systemctl show -P JobRunningTimeoutUSec "$dev_unit")" = 5min
check "$BT_MOUNT_UNIT comes from the fstab line" \
  bash -c "test \"\$(systemctl show -P SourcePath '$BT_MOUNT_UNIT')\" = /etc/fstab && grep -qxF '$BT_FSTAB_LINE' /etc/fstab"
check "$BT_MNT was mounted at boot (at ${mount_t} s: after the unit, before multi-user.target)" \
  bash -c "[ \"\$(systemctl is-active '$BT_MOUNT_UNIT')\" = active ] && awk -v u=$unit_t -v m=$mount_t -v t=$mu 'BEGIN { exit !(u > 0 && u <= m && m < t) }'"
check "$BT_MNT is mounted via $BT_DEV -> ${dev:-nothing}" \
  test -n "$dev" -a "$(findmnt -n -o SOURCE "$BT_MNT")" = "$dev" || finish
pid=$(systemctl show -P MainPID "$BT_UNIT")
vmlck=$(awk '/^VmLck:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
check "$BT_UNIT's process (pid $pid) locked its memory under the unit's sandbox (VmLck ${vmlck:-none} kB)" \
  test "${vmlck:-0}" -gt 1024
check "and the OOM killer spares it (oom_score_adj $(cat "/proc/$pid/oom_score_adj" 2>/dev/null))" \
  test "$(cat "/proc/$pid/oom_score_adj" 2>/dev/null)" = -1000
fsck_unit=systemd-fsck@$(systemd-escape -p "$BT_DEV").service
fsck_log=$(journalctl -b -u "$fsck_unit" -o cat 2>&1)
echo "$fsck_log" | sed 's/^/# fsck at boot: /'
fsck_clean() {
  [ "$(systemctl show -P Result "$fsck_unit")" = success ] && grep -q ': clean,' <<<"$fsck_log" &&
    ! grep -qi recover <<<"$fsck_log"
}
check "fsck at boot ($fsck_unit) found the filesystem clean after boot 1's shutdown" fsck_clean
check "the data written in boot 1 is intact" bash -c "cd '$BT_MNT' && sha256sum -c --quiet '$R/data.sha256'"

# CHAP from the unit's LoadCredential=: the target refuses a login without it.
check "the target requires CHAP: a login without a secret exits 24 (authentication failed)" \
  bash -c "'$bin' info '$BT_URL' >/dev/null 2>'$R/boot2-nochap.txt'; test \$? = 24"
sed 's/^/# /' "$R/boot2-nochap.txt"
check "$BT_UNIT logged in with the secret from LoadCredential=bootvol.chap (\$CREDENTIALS_DIRECTORY)" \
  bash -c "systemctl is-active -q '$BT_UNIT' && test -f '/run/credentials/$BT_UNIT/bootvol.chap' && tr '\\0' '\\n' </proc/$pid/environ | grep -q '^CREDENTIALS_DIRECTORY=/run/credentials/$BT_UNIT\$'"

# systemctl reload (ExecReload=lunbridge reload %i) is synchronous: a broken file fails the
# reload with the reason, and the volume keeps running on its old settings.
vol=/etc/lunbridge/volumes/$BT_VOLUME.toml
cp "$vol" /run/bootvol.toml.good
echo 'timeout = "soon"' >>"$vol"
t0=$(date '+%Y-%m-%d %H:%M:%S')
systemctl reload "$BT_UNIT" >"$R/boot2-reload.txt" 2>&1
rc=$?
check "systemctl reload with a broken volume file fails (exit $rc)" test "$rc" != 0
journalctl -u "$BT_UNIT" --since "$t0" -o cat | grep -E 'reload' | head -3 | sed 's/^/# journal: /'
check "and says why: lunbridge: error: ... key 'timeout' (journal of $BT_UNIT)" \
  bash -c "journalctl -u '$BT_UNIT' --since '$t0' -o cat | grep -q \"lunbridge: error: .*key 'timeout'\""
check "the volume kept running: $BT_UNIT active, same process" \
  test "$(systemctl is-active "$BT_UNIT")/$(systemctl show -P MainPID "$BT_UNIT")" = "active/$pid"
check "and the filesystem still takes writes (4 MiB, fsync)" \
  dd if=/dev/urandom of="$BT_MNT/after-reload" bs=1M count=4 conv=fsync status=none
cp /run/bootvol.toml.good "$vol"
check "systemctl reload with the file repaired succeeds" systemctl reload "$BT_UNIT"

# The watchdog (WatchdogSec=): a stopped process sends no WATCHDOG=1; systemd aborts and
# restarts it, and the new process takes the device over under the mount.
dev=$(nbd_of)
mount0=$(systemctl show -P ActiveEnterTimestampMonotonic "$BT_MOUNT_UNIT")
restarts0=$(systemctl show -P NRestarts "$BT_UNIT")
t0=$(date '+%Y-%m-%d %H:%M:%S')
kill -STOP "$pid"
pid1=$pid
for _ in $(seq 150); do
  pid1=$(systemctl show -P MainPID "$BT_UNIT")
  [ "$pid1" != "$pid" ] && [ "$pid1" != 0 ] && [ "$(systemctl is-active "$BT_UNIT")" = active ] && break
  sleep 1
done
check "the watchdog restarted the stopped process (pid $pid -> $pid1, NRestarts $restarts0 -> $(systemctl show -P NRestarts "$BT_UNIT"))" \
  bash -c "test '$pid1' != '$pid' && journalctl -u '$BT_UNIT' --since '$t0' -o cat | grep -q 'Watchdog timeout'"
journalctl -u "$BT_UNIT" --since "$t0" -o cat | grep -E 'Watchdog|reattached|Failed' | head -4 | sed 's/^/# journal: /'
check "the new process took $dev over with RECONFIGURE" \
  bash -c "journalctl -b -o cat _PID=$pid1 | grep -q 'reattached an existing device'"
check "$BT_MNT stayed mounted through the watchdog restart" \
  test "$(systemctl show -P ActiveEnterTimestampMonotonic "$BT_MOUNT_UNIT")" = "$mount0" -a \
  "$(findmnt -n -o SOURCE "$BT_MNT")" = "$dev"
check "and takes writes again (4 MiB, fsync), no I/O error in the kernel log" \
  bash -c "dd if=/dev/urandom of='$BT_MNT/after-watchdog' bs=1M count=4 conv=fsync status=none && sync" && no_io_errors
rm -f "$BT_MNT/after-reload" "$BT_MNT/after-watchdog"
check "the data written in boot 1 is still intact" bash -c "cd '$BT_MNT' && sha256sum -c --quiet '$R/data.sha256'"

check "unmount ($BT_MOUNT_UNIT stopped)" systemctl stop "$BT_MOUNT_UNIT"
check "e2fsck -fn $BT_DEV finds nothing" bash -c "e2fsck -fn '$BT_DEV' >'$R/boot2-e2fsck.txt' 2>&1"
sed 's/^/# e2fsck: /' "$R/boot2-e2fsck.txt"
check "tune2fs -l: filesystem state clean" bash -c "tune2fs -l '$BT_DEV' | grep -Eq '^Filesystem state: +clean$'"
check "mount it again for the shutdown" systemctl start "$BT_MOUNT_UNIT"
note "powering off with $BT_MNT mounted"
finish
