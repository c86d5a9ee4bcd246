#!/usr/bin/env bash
# Boot from SAN (issue 13): a diskless QEMU guest whose root filesystem is an iSCSI LUN,
# attached by lunbridge from the initramfs that Debian's update-initramfs built with
# lunbridge's hook, two paths, CHAP. See README.md next to this script.
#
#   Tests/vm/sanboot/sanboot-test.sh LUNBRIDGE_BINARY OUTDIR
#
# OUTDIR gets stdout (TAP lines, "sanboot checks: N passed, F failed"), bootN-console.log
# (the guest's console), bootN-ctl.log (its second serial port: checks and requests),
# initramfs.txt, tgtd/ and the LUN image while the test runs. Exit 0 = all passed.
# Environment:
#   BOOT_TIMEOUT     seconds per boot before the VM is killed (default 900)
#   SANBOOT_STALL_SECONDS  no console output for this long before the kernel has started
#                    the initramfs: the boot is started again, once (default 120)
#   VM_KERNEL        kernel image (default: newest /boot/vmlinuz-*-amd64)
#   SANBOOT_KEEP=1   keep the LUN image and the root folder afterwards
#   SANBOOT_APPEND   more kernel command line (lunbridge.debug: lunbridge's debug log)
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
[ $# -eq 2 ] || { echo "usage: $0 LUNBRIDGE_BINARY OUTDIR" >&2; exit 2; }
mkdir -p "$2" || exit 2
OUT=$(cd "$2" && pwd)
: >"$OUT/stdout"
. "$(dirname "${BASH_SOURCE[0]}")/../../lib/tap.sh"
say() { echo "$*" | tee -a "$OUT/stdout"; }
# The checks each boot's guest reports (guest-check.sh), in order; a missing one fails.
GUEST_COMMON="root-on-nbd by-name-link root-writable storage-daemon status-two-paths-active list-shows-device reload metrics kernel-log-lines"
GUEST_1="$GUEST_COMMON files-written path2-cut-seen path1-still-active path2-back all-paths-cut-seen all-paths-back fio-verify-through-cut no-io-error"
GUEST_2="$GUEST_COMMON files-intact fio-data-intact no-io-error"
# Host checks per boot (boot_checks): console, power-off, e2fsck.
HOST_PER_BOOT=4
TGT=$OUT/tgtd
cleanup() {
  [ -z "${qemu_pid:-}" ] || kill -9 "$qemu_pid" 2>/dev/null
  [ ! -e "$TGT/pid" ] || "$repo/Tests/lib/tgtd.sh" stop "$TGT" >/dev/null 2>&1
  if [ "${SANBOOT_KEEP:-0}" != 1 ]; then rm -rf "$OUT/root" "$OUT/lun.img"; fi
}
trap cleanup EXIT
g1=$(echo $GUEST_1 | wc -w)
g2=$(echo $GUEST_2 | wc -w)
PLAN=$((7 + g1 + g2 + 2 * HOST_PER_BOOT))
# Every check not reached counts as failed (Tests/lib/tap.sh), so the count never varies.
tap_start sanboot "$PLAN" "$OUT/stdout"

# --- what the test needs ---------------------------------------------------------------
BIN=$(realpath "$1" 2>/dev/null) && [ -x "$BIN" ] || { notok "no lunbridge binary at $1"; finish; }
kernel=${VM_KERNEL:-$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -1)}
kver=${kernel#*/vmlinuz-}
missing=""
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] || missing="$missing $1 (Debian package $2)"; }
need debootstrap debootstrap; need qemu-system-x86_64 qemu-system-x86; need tgtd tgt; need tgtadm tgt
need mke2fs e2fsprogs; need e2fsck e2fsprogs; need dumpe2fs e2fsprogs; need lsinitramfs initramfs-tools-core
need unshare util-linux; need strip binutils
[ -n "$kernel" ] && [ -r "$kernel" ] && [ -d "/lib/modules/$kver" ] && [ -r "/boot/config-$kver" ] ||
  missing="$missing /boot/vmlinuz-*-amd64 and its modules (Debian package linux-image-amd64)"
if [ -n "$missing" ]; then
  notok "missing for the boot-from-SAN test:$missing; run make deps"
  finish
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- the guest's root filesystem: debootstrap, cached ----------------------------------
# What a minimal Debian server with lunbridge needs: systemd, udev, initramfs-tools (its
# busybox/klibc), and the tools the checks use.
PACKAGES=python3,systemd,systemd-sysv,udev,initramfs-tools,busybox,klibc-utils,zstd,kmod,e2fsprogs,fio,iproute2,procps,libnl-3-200,libnl-genl-3-200
MIRROR=http://deb.debian.org/debian
SUITE=bookworm
cache=$repo/.build/sanboot-cache
key=$(echo "$SUITE $MIRROR $PACKAGES" | sha256sum | cut -c1-12)
base=$cache/base-$key
prepare_base() {
  [ -d "$base" ] && return 0
  mkdir -p "$cache"
  rm -rf "$cache"/base-* "$cache"/tmp-*
  local t0=$SECONDS tmp=$cache/tmp-$$
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 ||
    { tail -n 20 "$OUT/debootstrap.log"; rm -rf "$tmp"; return 1; }
  rm -rf "$tmp/var/cache/apt/archives/"*.deb
  mv "$tmp" "$base"
  say "# debootstrap: $((SECONDS - t0)) s (cached in $base)"
}
check "root filesystem made by debootstrap ($SUITE minbase + systemd, udev, initramfs-tools; cached)" prepare_base ||
  finish

# --- lunbridge installed into it as `make install` does, the root volume ---------------
R=$OUT/root
IQN=iqn.2026-11.org.lunbridge:sanroot
INITIATOR=iqn.2026-11.org.lunbridge:sanboot-guest
CHAP_USER=sanhost
CHAP_SECRET=sanboot-chap-secret-1
HOST=198.18.0.2 # QEMU's user network: the host's loopback, as the guest sees it
free_port() {
  local p
  for p in $(shuf -i 20000-60999 -n 200); do
    if ! (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! ss -Htan "sport = :$p" | grep -q .; then echo "$p"; return 0; fi
  done
  return 1
}
install_root() {
  rm -rf "$R" && cp -a "$base" "$R" || return 1
  # The kernel and its modules (update-initramfs takes the modules from the root).
  install -D -m 0644 "$kernel" "$R/boot/vmlinuz-$kver"
  cp "/boot/config-$kver" "/boot/System.map-$kver" "$R/boot/" || return 1
  mkdir -p "$R/lib/modules"
  cp -al "/lib/modules/$kver" "$R/lib/modules/" 2>/dev/null || cp -a "/lib/modules/$kver" "$R/lib/modules/" || return 1
  # The debug build links the Swift runtime dynamically (make install's release build
  # links it statically): its libraries go where the binary looks for them; the hook's
  # copy_exec takes them into the initramfs the same way.
  strip --strip-debug -o "$OUT/lunbridge" "$BIN" || return 1
  ldd "$BIN" | awk '$3 ~ /^\/opt\// { print $3 }' | while read -r lib; do install -D -m 0644 "$lib" "$R$lib"; done
  make -C "$repo" --no-print-directory -s install-files DESTDIR="$R" INSTALL_BIN="$OUT/lunbridge" >"$OUT/install.log" 2>&1 ||
    { tail -n 20 "$OUT/install.log"; return 1; }
  PORT1=$(free_port) && PORT2=$(free_port) && [ "$PORT1" != "$PORT2" ] || return 1
  printf '%s\n' "$CHAP_SECRET" >"$R/etc/lunbridge/sanroot.secret"
  chmod 0600 "$R/etc/lunbridge/sanroot.secret"
  cat >"$R/etc/lunbridge/volumes/sanroot.toml" <<EOF
# The root filesystem (boot from SAN): attached by the initramfs.
paths = ["iscsi://$HOST:$PORT1/$IQN/1", "iscsi://$HOST:$PORT2/$IQN/1"]
startup = "onboot"
initiator_name = "$INITIATOR"
chap_user = "$CHAP_USER"
chap_secret_file = "/etc/lunbridge/sanroot.secret"
metrics = "tcp:127.0.0.1:9464"
EOF
  chmod 0600 "$R/etc/lunbridge/volumes/sanroot.toml"
  cat >"$R/etc/fstab" <<EOF
/dev/lunbridge/sanroot / ext4 errors=remount-ro 0 1
EOF
  echo sanboot >"$R/etc/hostname"
  # The fsck hook probes the root device for its type, which does not exist in this chroot
  # (on the running system it does): name the type, so the initramfs checks the root.
  echo FSTYPE=ext4 >"$R/etc/initramfs-tools/conf.d/sanboot-test"
  install -D -m 0755 "$here/guest-check.sh" "$R/usr/local/sbin/sanboot-check"
  install -D -m 0644 "$here/../../lib/tap.sh" "$R/usr/local/lib/lunbridge-tests/tap.sh"
  cat >"$R/etc/systemd/system/sanboot-check.service" <<EOF
[Unit]
Description=lunbridge boot-from-SAN checks
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/sanboot-check
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=600
EOF
  mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
  ln -sf ../sanboot-check.service "$R/etc/systemd/system/multi-user.target.wants/sanboot-check.service"
}
check "lunbridge installed into the root with make install-files DESTDIR= (hook, local-top script, UMASK=0077, udev rule, units); root volume file with startup = onboot, two paths, CHAP" install_root ||
  finish

# update-initramfs inside the root, as `apt install` or an administrator runs it there.
build_initramfs() {
  unshare --mount --propagation private sh -c "
    mount -t proc proc '$R/proc' && mount -t sysfs sys '$R/sys' && mount --bind /dev '$R/dev' &&
    chroot '$R' update-initramfs -c -k '$kver'" >"$OUT/update-initramfs.log" 2>&1 ||
    { tail -n 20 "$OUT/update-initramfs.log"; return 1; }
  grep -q "lunbridge: root volume sanroot.toml" "$OUT/update-initramfs.log" ||
    { cat "$OUT/update-initramfs.log"; return 1; }
  cp "$R/boot/initrd.img-$kver" "$OUT/initrd.img" && cp "$R/boot/vmlinuz-$kver" "$OUT/vmlinuz"
}
check "update-initramfs -c -k $kver in the root ran lunbridge's hook" build_initramfs || finish
initramfs_private() {
  local mode
  mode=$(stat -c %a "$R/boot/initrd.img-$kver")
  [ "$mode" = 600 ] || { echo "initrd.img is mode $mode"; return 1; }
}
check "the initramfs holds a CHAP secret and is readable by root only (mode 600)" initramfs_private
initramfs_contents() {
  lsinitramfs -l "$OUT/initrd.img" >"$OUT/initramfs.txt" || return 1
  local f
  for f in sbin/lunbridge etc/lunbridge/volumes/sanroot.toml etc/lunbridge/sanroot.secret \
    lib/udev/rules.d/99-lunbridge.rules scripts/local-top/lunbridge drivers/block/nbd.ko; do
    grep -q "$f" "$OUT/initramfs.txt" || { echo "initramfs lacks $f"; return 1; }
  done
  grep "etc/lunbridge/sanroot.secret" "$OUT/initramfs.txt" | grep -q '^-rw-------' ||
    { echo "secret mode: $(grep sanroot.secret "$OUT/initramfs.txt")"; return 1; }
}
check "the initramfs has lunbridge, the volume file, its secret (0600), the udev rule, the script and nbd.ko" initramfs_contents

# --- the LUN: the root folder as an ext4 image, served by a private tgtd ----------------
make_lun() {
  mke2fs -q -F -t ext4 -L sanroot -d "$R" "$OUT/lun.img" 2G >"$OUT/mke2fs.log" 2>&1 || { cat "$OUT/mke2fs.log"; return 1; }
  [ "${SANBOOT_KEEP:-0}" = 1 ] || rm -rf "$R"
}
check "LUN image: ext4 made from the root folder (mke2fs -d)" make_lun || finish
start_target() {
  TGTD_BACKING_FILE=$OUT/lun.img TGTD_IQN=$IQN "$repo/Tests/lib/tgtd.sh" start "$TGT" >/dev/null || return 1
  CP=$(cat "$TGT/cp")
  local p
  p=$(cat "$TGT/port")
  # tgtd.sh chose its own port for path 1; path 2 gets PORT2.
  tgtadm_ --op new --mode portal --param "portal=127.0.0.1:$PORT1" &&
    tgtadm_ --op new --mode portal --param "portal=127.0.0.1:$PORT2" &&
    tgtadm_ --op delete --mode portal --param "portal=127.0.0.1:$p" &&
    tgtadm_ --op new --mode account --user "$CHAP_USER" --password "$CHAP_SECRET" &&
    tgtadm_ --op bind --mode account --tid 1 --user "$CHAP_USER"
}
tgtadm_() { timeout 10 tgtadm -C "$CP" --lld iscsi "$@"; }
check "private tgtd: the image as LUN 1 on two portals (127.0.0.1:$PORT1, :$PORT2), CHAP required" start_target ||
  finish

# --- the boots ---------------------------------------------------------------------------
# One boot: QEMU with the kernel and the initramfs, no disk, the user network on
# 198.18.0.0/24 (the guest reaches the portals at 198.18.0.2, this machine's loopback).
# Runs the guest's path requests from its second serial port until it powers off.
boot() {
  local b=$1 console=$OUT/boot$1-console.log ctl=$OUT/boot$1-ctl.log
  : >"$console"
  : >"$ctl"
  local t0=$SECONDS done_lines=0 line retried=0 size=-1 still=$SECONDS
  start_qemu() {
    qemu-system-x86_64 -machine accel=tcg -cpu max -smp 2 -m 1536 -no-reboot -display none -monitor none \
      -kernel "$OUT/vmlinuz" -initrd "$OUT/initrd.img" \
      -append "console=ttyS0 ip=dhcp lunbridge.root=sanroot root=/dev/lunbridge/sanroot panic=10 printk.devkmsg=on net.ifnames=0 sanboot.phase=$b sanboot.port2=$PORT2 ${SANBOOT_APPEND:-}" \
      -netdev "user,id=n0,net=198.18.0.0/24,host=$HOST" -device virtio-net-pci,netdev=n0 \
      -serial "file:$console" -serial "file:$ctl" >"$OUT/boot$b-qemu.log" 2>&1 &
    qemu_pid=$!
  }
  start_qemu
  while kill -0 "$qemu_pid" 2>/dev/null; do
    if [ $((SECONDS - t0)) -ge "${BOOT_TIMEOUT:-900}" ]; then
      kill -9 "$qemu_pid"
      say "# boot $b: killed after ${BOOT_TIMEOUT:-900} s"
      break
    fi
    # Under TCG the kernel now and then hangs in its own early boot (seen once: no console
    # line for minutes after "Switched to clocksource hpet"), before it has started the
    # initramfs, let alone touched the LUN: that boot is started again, once, and said so.
    if [ "$(stat -c %s "$console")" != "$size" ]; then size=$(stat -c %s "$console"); still=$SECONDS; fi
    if [ "$retried" = 0 ] && [ $((SECONDS - still)) -ge "${SANBOOT_STALL_SECONDS:-120}" ] &&
      ! grep -q 'Freeing unused kernel' "$console"; then
      kill -9 "$qemu_pid"
      wait "$qemu_pid" 2>/dev/null
      cp "$console" "$OUT/boot$b-stalled-console.log"
      say "# boot $b: the kernel stalled in early boot (no console output for ${SANBOOT_STALL_SECONDS:-120} s, TCG; $OUT/boot$b-stalled-console.log): booting again"
      retried=1 size=-1 still=$SECONDS done_lines=0
      : >"$console"
      : >"$ctl"
      start_qemu
      continue
    fi
    local lines
    lines=$(tr -d '\r' <"$ctl" | grep -c '')
    while [ "$done_lines" -lt "$lines" ]; do
      done_lines=$((done_lines + 1))
      line=$(tr -d '\r' <"$ctl" | sed -n "${done_lines}p")
      case $line in
      "up "*) say "# boot $b: checks start at ${line#up } s of guest uptime, $((SECONDS - t0)) s after QEMU started" ;;
      "cut "*)
        # Path 2 goes: its portal stops listening and its session's connection is deleted.
        tgtadm_ --op delete --mode portal --param "portal=127.0.0.1:$PORT2"
        tgtadm_ --op delete --mode conn --tid 1 --sid "${line#cut }" --cid 0 ||
          say "# boot $b: no connection for session ${line#cut }"
        say "# boot $b: path 2 cut at $((SECONDS - t0)) s" ;;
      restore)
        tgtadm_ --op new --mode portal --param "portal=127.0.0.1:$PORT2"
        say "# boot $b: path 2 back at $((SECONDS - t0)) s" ;;
      "cutall "*)
        # Both paths go; the guest's I/O must wait (no-path-retry) rather than fail.
        tgtadm_ --op delete --mode portal --param "portal=127.0.0.1:$PORT1"
        tgtadm_ --op delete --mode portal --param "portal=127.0.0.1:$PORT2"
        for sid in ${line#cutall }; do
          tgtadm_ --op delete --mode conn --tid 1 --sid "$sid" --cid 0 || say "# boot $b: no connection for session $sid"
        done
        say "# boot $b: both paths cut at $((SECONDS - t0)) s" ;;
      restoreall)
        tgtadm_ --op new --mode portal --param "portal=127.0.0.1:$PORT1"
        tgtadm_ --op new --mode portal --param "portal=127.0.0.1:$PORT2"
        say "# boot $b: both paths back at $((SECONDS - t0)) s" ;;
      "fio rounds "*) say "# boot $b: $line" ;;
      done) say "# boot $b: checks done at $((SECONDS - t0)) s" ;;
      esac
    done
    sleep 1
  done
  wait "$qemu_pid"
  qemu_rc=$?
  qemu_pid=
  say "# boot $b: QEMU exited ($qemu_rc) after $((SECONDS - t0)) s"
}

# The guest's checks of boot N, in the fixed order, then the host's.
boot_checks() {
  local b=$1 names=$2 ctl=$OUT/boot$1-ctl.log console=$OUT/boot$1-console.log name line
  for name in $names; do
    line=$(tr -d '\r' <"$ctl" | grep -E "^(ok|not ok) - $name(:|$)" | head -n 1)
    case $line in
    "ok - $name") ok "boot $b guest: $name" ;;
    "") notok "boot $b guest: $name (not reported)" ;;
    *) notok "boot $b guest: ${line#not ok - }" ;;
    esac
  done
  check "boot $b: the guest ran its checks and powered off (QEMU exit 0, 'reboot: Power down')" \
    eval "grep -q '^done' <(tr -d '\r' <'$ctl') && [ '$qemu_rc' = 0 ] && grep -q 'reboot: Power down' '$console'"
  console_clean() {
    local bad
    bad=$(tr -d '\r' <"$console" | grep -E 'I/O error|EXT4-fs error|Buffer I/O|[Ff]ailed to unmount|[Cc]ould not unmount|[Ff]ailed to remount|Kernel panic|lunbridge: cannot attach|Sending SIGKILL to PID [0-9]+ \(lunbridge\)')
    [ -z "$bad" ] || { echo "$bad" | head -n 10; return 1; }
  }
  check "boot $b: console has no I/O error, failed unmount/remount, panic or killed lunbridge" console_clean
  check "boot $b: the initramfs attached the root volume (console)" \
    grep -q 'lunbridge\[[0-9]*\]: .*attached' "$console"
  fs_clean() {
    e2fsck -fn "$OUT/lun.img" >"$OUT/boot$b-e2fsck.log" 2>&1 || { tail -n 5 "$OUT/boot$b-e2fsck.log"; return 1; }
    dumpe2fs -h "$OUT/lun.img" 2>/dev/null | grep -E '^Filesystem (state|features):' >>"$OUT/boot$b-e2fsck.log"
    grep -q '^Filesystem state: *clean$' "$OUT/boot$b-e2fsck.log" && ! grep -q needs_recovery "$OUT/boot$b-e2fsck.log" ||
      { cat "$OUT/boot$b-e2fsck.log" | tail -n 3; return 1; }
  }
  check "boot $b: e2fsck -fn of the LUN on the host: clean, no journal to recover" fs_clean
}

boot 1
boot_checks 1 "$GUEST_1"
boot 2
boot_checks 2 "$GUEST_2"
finish
