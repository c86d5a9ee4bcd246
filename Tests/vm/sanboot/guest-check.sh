#!/bin/bash
# Boot from SAN test, in the guest: runs once multi-user.target is reached
# (sanboot-check.service), then the unit powers the guest off. Results and requests for the
# host go to the second serial port (/dev/ttyS1), one line each:
#   ok - NAME | not ok - NAME: WHY   a check (Tests/lib/tap.sh, installed in the image;
#                                the host expects a fixed list of names per boot)
#   up SECONDS                   uptime when the checks start
#   cut SID / restore            cut path 2 (tgtadm: portal deleted, its session's
#                                connection deleted) / bring it back
#   cutall SID1 SID2 / restoreall  the same for both paths
#   done                         the checks are over; power-off follows
# Kernel command line: sanboot.phase=1|2, sanboot.port2=P (path 2's portal port).
set -u
exec 3>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo 2>/dev/null
say() { echo "$*" >&3; echo "sanboot: $*"; }
. /usr/local/lib/lunbridge-tests/tap.sh
tap_start - 0 /dev/ttyS1
param() { local a; for a in $(</proc/cmdline); do case $a in "sanboot.$1="*) echo "${a#*=}"; return 0 ;; esac; done; return 1; }

PHASE=$(param phase)
PORT2=$(param port2)
VOLUME=sanroot
DATA=/var/lib/sanboot
FIO=(fio --name=verify --filename="$DATA/fio.dat" --size=8m --rw=randwrite --bs=4k --ioengine=libaio --iodepth=8
  --direct=1 --verify=crc32c --verify_fatal=1)

say "up $(cut -d' ' -f1 /proc/uptime)"

# The root filesystem is the LUN, served through /dev/nbdN by the process the initramfs
# started, named as the udev rule names it.
root_dev=$(readlink -f "$(findmnt -n -o SOURCE /)")
root_on_nbd() { case $root_dev in /dev/nbd*) return 0 ;; esac; echo "root is on $root_dev"; return 1; }
by_name() { [ "$(readlink -f /dev/lunbridge/$VOLUME)" = "$root_dev" ] || { ls -l /dev/lunbridge; return 1; }; }
check_output root-on-nbd root_on_nbd
check_output by-name-link by_name
check_output root-writable touch /var/lib/sanboot-writable
# systemd's shutdown spares processes whose argv[0] starts with '@'.
storage_daemon() {
  local pid
  pid=$(pgrep -f '^@lunbridge attach' | head -n 1)
  [ -n "$pid" ] && [ "$(tr '\0' ' ' </proc/"$pid"/cmdline | cut -c1-10)" = "@lunbridge" ] && return 0
  ps -eo pid,args | grep -i lunbridge
  return 1
}
check_output storage-daemon storage_daemon

# path_state N: the state of path N (1 or 2; path 2 is the one on port PORT2);
# path_tsih N likewise.
paths() {
  lunbridge status "$VOLUME" --json | python3 -c '
import json, sys
port2 = ":" + sys.argv[1] + "/"
volumes = json.load(sys.stdin)
for v in volumes if isinstance(volumes, list) else [volumes]:
    for p in v["paths"]:
        print(2 if port2 in p["url"] else 1, p["state"], p["tsih"])' "$PORT2"
}
path_state() { paths | awk -v n="$1" '$1 == n { print $2 }'; }
path_tsih() { paths | awk -v n="$1" '$1 == n { print $3 }'; }
wait_state() { # N STATE SECONDS
  local i
  for i in $(seq "$3"); do
    [ "$(path_state "$1")" = "$2" ] && return 0
    sleep 1
  done
  echo "path $1 is '$(path_state "$1")' after $3 s, expected $2"
  return 1
}

two_active() { wait_state 1 active 60 && wait_state 2 active 60; }
check_output status-two-paths-active two_active
list_shows() { local out; out=$(lunbridge list 2>&1); grep -q "${root_dev#/dev/}" <<<"$out" || { echo "$out"; return 1; }; }
check_output list-shows-device list_shows
# The volume file the process reads on reload is the system's, not the initramfs copy
# (run-init emptied that): a reload with a changed file must take effect.
check_output reload bash -c "lunbridge reload $VOLUME"
check_output metrics bash -c 'exec 4<>/dev/tcp/127.0.0.1/9464 && printf "GET /metrics HTTP/1.0\r\n\r\n" >&4 && grep -q "^lunbridge_" <&4'
check_output kernel-log-lines bash -c "dmesg | grep -q 'lunbridge\\[[0-9]*\\]: .*attached'"

if [ "$PHASE" = 1 ]; then
  mkdir -p "$DATA"
  check_output files-written bash -c "set -e; for i in 1 2 3; do head -c 4194304 /dev/urandom >$DATA/data\$i; done; (cd $DATA && sha256sum data1 data2 data3 >SHA256SUMS); sync"

  # fio verify rounds while path 2 is cut and comes back: every round must pass.
  rm -f /run/sanboot-stop
  (
    r=0
    while [ ! -e /run/sanboot-stop ] || [ $r -lt 2 ]; do
      r=$((r + 1))
      "${FIO[@]}" --do_verify=1 >"/run/sanboot-fio.$r" 2>&1 || { echo "round $r failed" >/run/sanboot-fio.failed; break; }
      echo $r >/run/sanboot-fio.rounds
    done
  ) &
  fio_pid=$!
  sleep 3
  tsih=$(path_tsih 2)
  # tgtd numbers its sessions as the TSIH's high byte.
  say "cut $((tsih >> 8))"
  check_output path2-cut-seen wait_state 2 failed 60
  check_output path1-still-active bash -c "[ \"\$(lunbridge status $VOLUME --json | tr -d ' \\n' | grep -o '\"state\":\"active\"' | wc -l)\" -ge 1 ]"
  sleep 5
  say "restore"
  check_output path2-back wait_state 2 active 120
  # Every path gone for 10 s, well within no-path-retry: I/O waits, nothing fails.
  say "cutall $(($(path_tsih 1) >> 8)) $(($(path_tsih 2) >> 8))"
  both_failed() { wait_state 1 failed 60 && wait_state 2 failed 60; }
  check_output all-paths-cut-seen both_failed
  sleep 10
  say "restoreall"
  both_active() { wait_state 1 active 120 && wait_state 2 active 120; }
  check_output all-paths-back both_active
  touch /run/sanboot-stop
  wait "$fio_pid"
  check_output fio-verify-through-cut bash -c "[ ! -e /run/sanboot-fio.failed ] && [ \"\$(cat /run/sanboot-fio.rounds)\" -ge 2 ] || { cat /run/sanboot-fio.failed /run/sanboot-fio.* 2>/dev/null | tail -n 20; exit 1; }"
  say "fio rounds $(cat /run/sanboot-fio.rounds 2>/dev/null)"
  sync
else
  check_output files-intact bash -c "cd $DATA && sha256sum -c --quiet SHA256SUMS"
  check_output fio-data-intact "${FIO[@]}" --verify_only
fi

# No I/O error reached the root filesystem (the cut included).
check_output no-io-error bash -c "! dmesg | grep -E 'I/O error|EXT4-fs error|Buffer I/O|blk_update_request|critical medium'"
say "done"
