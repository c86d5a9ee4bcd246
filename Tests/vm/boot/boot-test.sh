#!/usr/bin/env bash
# The boot test (issue #5): a Debian kernel under QEMU booting this machine's own
# filesystem (virtme-ng, `vng --systemd`) with systemd as PID 1, twice, on one LUN whose
# backing file lives in a host folder, so the data outlives each VM:
#
#   boot 1 (prepare): systemctl enable --now lunbridge@bootvol, mkfs.ext4, the fstab line
#     "/dev/lunbridge/bootvol /mnt/bootvol ext4 _netdev 0 2", 12 MiB of data and their
#     checksums, `systemctl restart lunbridge@bootvol` while fio verifies on the mounted
#     filesystem; then a clean power-off with the filesystem mounted.
#   boot 2 (the real boot): the unit enabled, the fstab line in /etc/fstab; the boot must
#     reach multi-user.target with the filesystem mounted from /dev/lunbridge/bootvol,
#     fsck at boot must find it clean, the data must be intact; unmount, e2fsck -fn,
#     mount again, clean power-off.
#   After each boot, here on the host: e2fsck -fn of the LUN's backing file (the clean
#   shutdown left nothing to repair), and the shutdown order in the guest's journal
#   (unmounted before the volume was detached, no I/O errors).
#
#   Tests/vm/boot/boot-test.sh LUNBRIDGE_BINARY OUTDIR
#
# OUTDIR gets stdout (TAP lines and "vm checks: N passed, F failed"), bootN-console.log
# (the VM's console), and guest/ (the folder the guest sees as /run/lunbridge-boot-test:
# lun.img, bootN.tap, bootN-journal.txt, bootN-fio.txt, ...). Exit 0 = all passed.
#
# How the guest is set up: see README.md next to this script. Environment:
#   BOOT_TIMEOUT  seconds per boot before the VM is killed and the boot fails (default 600)
#   VM_KERNEL     kernel image (default: newest /boot/vmlinuz-*-amd64)
#   VNG           the vng binary (default: /usr/local/bin/vng, else vng on PATH)
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -eq 2 ] || { echo "usage: $0 LUNBRIDGE_BINARY OUTDIR" >&2; exit 2; }
mkdir -p "$2" || exit 2
OUT=$(cd "$2" && pwd)
: >"$OUT/stdout"
say() { echo "$*" | tee -a "$OUT/stdout"; }
# Checks of both boots, the guest's relayed ones included; a run that stops early is
# padded with "not ok" (Tests/lib/tap.sh), so the count never varies.
. "$here/../../lib/tap.sh"
tap_start vm 63 "$OUT/stdout"

# --- what the test needs (the guest runs this machine's own programs) -----------------
BIN=$(realpath "$1" 2>/dev/null) && [ -x "$BIN" ] || { notok "no lunbridge binary at $1: build it (swift build --product lunbridge)"; finish; }
. "$here/../../lib/vm.sh"
missing=""
vm_tools 2>"$OUT/vm-tools.err" || missing="$missing $(sed 's/^missing for the VM: //' "$OUT/vm-tools.err")"
kernel=$VM_KERNEL_IMAGE
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] || missing="$missing $1 (Debian package $2)"; }
need qemu-system-x86_64 qemu-system-x86; need tgtd tgt; need tgtadm tgt; need fio fio
need mkfs.ext4 e2fsprogs; need e2fsck e2fsprogs; need dumpe2fs e2fsprogs; need findmnt util-linux
need journalctl systemd; need systemd-escape systemd; need udevadm udev
[ -x /lib/systemd/systemd ] && [ "$(readlink -f /sbin/init)" = "$(readlink -f /lib/systemd/systemd)" ] ||
  missing="$missing systemd as /sbin/init (Debian package systemd-sysv)"
if [ -n "$missing" ]; then
  notok "missing for the boot test:$missing; run make deps (Tests/vm/vm-deps.sh)"
  finish
fi
# The guest's kernel command line and the unit's sandbox limit where things may live.
case "$here$BIN$OUT" in *[[:space:]]*)
  notok "the boot test needs paths without spaces (repo, binary, OUTDIR)"; finish ;; esac
case "$BIN" in /home/* | /root/*)
  notok "$BIN is under /home or /root, which lunbridge@.service hides (ProtectHome=yes): build in a repo elsewhere"; finish ;; esac

# --- a fresh LUN and the per-boot configuration ---------------------------------------
G=$OUT/guest
rm -rf "$G" "$OUT/home" "$OUT"/boot*-console.log
mkdir -p "$G" "$OUT/home/.config/virtme-ng"
truncate -s 64M "$G/lun.img"
# The guest mounts a tmpfs on /tmp (its services need a writable /tmp), which hides a
# repository or binary under this machine's /tmp (CI clones may live there). What runs
# after that mount -- tgtd's unit, the checks, lunbridge@.service -- runs staged copies
# from the results folder, which the guest mounts over 9p.
mkdir -p "$G/stage/Tests/vm" "$G/stage/systemd"
cp -a "$here" "$G/stage/Tests/vm/boot"
cp -a "$here/../../lib" "$G/stage/Tests/lib"
cp -a "$here/../../../systemd/." "$G/stage/systemd/"
cp "$BIN" "$G/stage/lunbridge"
guest_bin=$(. "$here/boot-lib.sh"; echo "$BT_RESULTS/stage/lunbridge")
# The generator runs again at every daemon-reload (systemctl enable does one): once /tmp
# is covered, from the staged copy (the first directory that has it wins).
guest_generator=$(. "$here/boot-lib.sh"; echo "$BT_RESULTS/stage/Tests/vm/boot/generator")
# The guest's /etc/fstab: vng binds the file named by its "systemd.fstab" setting there
# before systemd starts. HOME points vng at a configuration of this test's own.
tmpfs='tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0
tmpfs /mnt tmpfs mode=0755 0 0'
printf '%s\n' "$tmpfs" >"$OUT/fstab-1"
printf '%s\n%s\n' "$tmpfs" "$(. "$here/boot-lib.sh"; echo "$BT_FSTAB_LINE")" >"$OUT/fstab-2"

boot() { # PHASE: boots, waits for the guest to power off (or kills it); sets boot_s, timed_out
  local phase=$1 limit=${BOOT_TIMEOUT:-600}
  printf '{"systemd": {"masks": [], "fstab": "%s"}}\n' "$OUT/fstab-$phase" \
    >"$OUT/home/.config/virtme-ng/virtme-ng.conf"
  echo "boot-test: boot $phase: $(basename "$kernel"), systemd as PID 1 (TCG; limit ${limit}s)" >&2
  # HOME points vng at this test's configuration (the guest's fstab). container= (empty)
  # tells systemd it is not in a container: it would take this machine's /.dockerenv for
  # one, and then exit instead of powering off.
  HOME="$OUT/home" vm_start "$OUT/boot$phase-console.log" \
    --systemd --rwdir "$G" --append "container=" --append "SYSTEMD_GENERATOR_PATH=$here/generator:$guest_generator:" \
    --append "lunbridge_boot.phase=$phase" --append "lunbridge_boot.binary=$guest_bin" --append "lunbridge_boot.host_binary=$BIN" \
    --append systemd.show_status=1
  vm_wait "$limit"
  timed_out=$VM_TIMED_OUT
  boot_s=$(printf '%.0f' "$VM_SECONDS")
}

# The guest's own checks of boot PHASE (bootN.tap), renumbered into ours.
guest_results() {
  local phase=$1
  tap_relay "$G/boot$phase.tap" "boot $phase: "
  check "boot $phase: the checks in the guest ran to the end" test -f "$G/boot$phase.done" ||
    { sed 's/^/# guest stderr: /' "$G/boot$phase.stderr" 2>/dev/null | tail -20 | tee -a "$OUT/stdout"; }
}

# What the guest's journal, saved as the test target stopped at shutdown, says about the
# shutdown: the filesystem was unmounted before the volume was detached, lunbridge
# disconnected the device itself and exited cleanly, and no I/O failed.
shutdown_order() {
  local j=$G/boot$1-journal.txt s
  [ -f "$j" ] || { echo "# no $j: the shutdown never stopped the test target" | tee -a "$OUT/stdout"; return 1; }
  # The shutdown starts when the checks' unit has ended and multi-user.target stops.
  s=$(grep -n 'Stopped target multi-user.target' "$j" | head -1 | cut -d: -f1)
  [ -n "$s" ] || { echo "# no shutdown in $j" | tee -a "$OUT/stdout"; return 1; }
  tail -n +"$s" "$j" >"$OUT/boot$1-shutdown.txt"
  j=$OUT/boot$1-shutdown.txt
  grep -E 'Unmounted .*/mnt/bootvol|lunbridge.*stopping|lunbridge@bootvol.service: (Deactivated|Failed)|I/O error|EXT4-fs error' "$j" |
    sed 's/^/# shutdown: /' | head -8 | tee -a "$OUT/stdout"
  awk '/Unmounted .*\/mnt\/bootvol/ && !u { u = NR }
       /lunbridge.*stopping: disconnecting \/dev\/nbd/ && !d { d = NR }
       /lunbridge@bootvol.service: Deactivated successfully/ && !e { e = NR }
       END { exit !(u && d && e && u < d && d < e) }' "$j" &&
    ! grep -Eq 'I/O error|EXT4-fs error|lunbridge@bootvol.service: Failed' "$j"
}

# The LUN's backing file, here on the host after the VM is gone.
image_clean() {
  e2fsck -fn "$G/lun.img" >"$OUT/e2fsck-after-boot$1.txt" 2>&1 &&
    dumpe2fs -h "$G/lun.img" 2>/dev/null | grep -Eq '^Filesystem state: +clean$' &&
    ! dumpe2fs -h "$G/lun.img" 2>/dev/null | grep -q needs_recovery
}

t_all=$(date +%s)
for phase in 1 2; do
  boot "$phase"
  check "boot $phase: the guest powered itself off after ${boot_s} s" test "$timed_out" = 0 ||
    { say "# killed after ${BOOT_TIMEOUT:-600} s (BOOT_TIMEOUT); console: $OUT/boot$phase-console.log"; }
  guest_results "$phase"
  check "boot $phase: the shutdown unmounted /mnt/bootvol before detaching the volume, without I/O errors" \
    shutdown_order "$phase"
  check "boot $phase: e2fsck -fn of the LUN image on the host after power-off: clean, nothing to recover" \
    image_clean "$phase" || sed 's/^/# e2fsck: /' "$OUT/e2fsck-after-boot$phase.txt" | tail -5 | tee -a "$OUT/stdout"
  if [ "$phase" = 1 ] && [ ! -s "$G/data.sha256" ]; then
    notok "boot 2 not run: boot 1 wrote no data"
    break
  fi
done
say "# boot test: $(($(date +%s) - t_all)) s for both boots"
finish
