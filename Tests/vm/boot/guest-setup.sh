#!/bin/bash
# Runs INSIDE the boot test's VM, early (lunbridge-boot-test-setup.service): gives the
# guest a writable /etc and /var (tmpfs overlays over the host's read-only ones; gone at
# power-off) and installs lunbridge's files as `make install` does, plus the volume file.
#   guest-setup.sh PHASE
# Boot 1 also gets lunbridge@.service in /etc/systemd/system (not enabled: the checks
# enable it); boot 2 has it from the generator, already enabled.
set -euo pipefail
phase=$1
. "$(dirname "${BASH_SOURCE[0]}")/boot-lib.sh"

modprobe overlay
base=/run/lunbridge-boot-test-overlay
for d in etc var; do
  mkdir -p "$base/$d/upper" "$base/$d/work"
  # Files mounted over ones in /$d (vng binds its fstab over /etc/fstab) are not part of
  # the overlay's lower layer: keep their contents in the upper one, then drop the mount.
  while read -r mp; do
    [ -f "$mp" ] || { echo "guest-setup: $mp (a mount in /$d) will be hidden by the overlay" >&2; continue; }
    rel=${mp#/"$d"/}
    mkdir -p "$base/$d/upper/$(dirname "$rel")"
    cat "$mp" >"$base/$d/upper/$rel"
    umount "$mp"
  done < <(findmnt -rn -o TARGET | grep "^/$d/" || true)
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$base/$d/upper,workdir=$base/$d/work" "/$d"
done

install -D -m 0644 "$BT_REPO/systemd/99-lunbridge.rules" /etc/udev/rules.d/99-lunbridge.rules
install -D -m 0644 "$BT_REPO/systemd/lunbridge-modules.conf" /etc/modules-load.d/lunbridge.conf
install -d -m 0755 /etc/lunbridge/volumes
install -m 0644 "$BT_BOOT/volumes/$BT_VOLUME.toml" /etc/lunbridge/volumes/$BT_VOLUME.toml
printf '%s\n' "$BT_CHAP_SECRET" | install -m 0600 /dev/stdin /etc/lunbridge/$BT_VOLUME.secret
if [ "$phase" = 1 ]; then
  bt_install_unit /etc/systemd/system "$(bt_param binary)"
fi
echo "guest-setup: /etc and /var writable; lunbridge's files installed (boot $phase)"
