# Shared by the boot test's generator and guest scripts (sourced, bash). See README.md.

BT_VOLUME=bootvol                         # /etc/lunbridge/volumes/bootvol.toml
BT_MNT=/mnt/$BT_VOLUME
BT_DEV=/dev/lunbridge/$BT_VOLUME
BT_UNIT=lunbridge@$BT_VOLUME.service
BT_MOUNT_UNIT=mnt-$BT_VOLUME.mount
BT_PORT=3261                              # the guest's own loopback: nothing else listens
BT_CONTROL_PORT=23261                     # tgtd's control port (tgtd wants <= 32767)
BT_IQN=iqn.2026-11.org.lunbridge:boot
BT_URL=iscsi://127.0.0.1:$BT_PORT/$BT_IQN/1
BT_RESULTS=/run/lunbridge-boot-test       # the host folder (vng --rwdir), mounted over 9p
BT_TAG=virtme.initmount0                  # its 9p mount tag (vng's first --rwdir)
BT_FSTAB_LINE="$BT_DEV $BT_MNT ext4 _netdev 0 2"
BT_CHAP_USER=boothost                     # the target's CHAP account (volumes/bootvol.toml)
BT_CHAP_SECRET=boot-test-chap-secret      # /etc/lunbridge/bootvol.secret, loaded as a credential

BT_BOOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)   # Tests/vm/boot
BT_REPO=$(cd "$BT_BOOT/../../.." && pwd)

# The value of lunbridge_boot.NAME=VALUE on the kernel command line (boot-test.sh sets
# phase and binary); fails if absent.
bt_param() {
  local a
  set -f
  for a in $(</proc/cmdline); do
    case $a in "lunbridge_boot.$1="*) set +f; echo "${a#*=}"; return 0 ;; esac
  done
  set +f
  return 1
}

# Installs lunbridge@.service and the device timeout drop-in from the repository into
# the unit directory $1 (as `make install` does into /etc/systemd/system), with a drop-in
# that runs the binary $2 (the shipped unit runs /usr/local/bin/lunbridge, which the test
# does not touch), and the volume's credentials drop-in: the shipped example with NAME =
# bootvol (LoadCredential=bootvol.chap:/etc/lunbridge/bootvol.secret).
bt_install_unit() {
  install -D -m 0644 "$BT_REPO/systemd/lunbridge@.service" "$1/lunbridge@.service"
  install -D -m 0644 "$BT_REPO/systemd/lunbridge-device-timeout.conf" \
    "$1/dev-lunbridge-.device.d/40-lunbridge.conf"
  mkdir -p "$1/lunbridge@.service.d"
  cat >"$1/lunbridge@.service.d/50-boot-test.conf" <<EOT
# lunbridge boot test: the freshly built binary instead of /usr/local/bin/lunbridge
# (a staged copy in the results folder, mounted over 9p).
[Unit]
RequiresMountsFor=$BT_RESULTS
[Service]
ExecStart=
ExecStart=$2 attach %i --foreground
ExecReload=
ExecReload=$2 reload %i
EOT
  sed "s/NAME/$BT_VOLUME/g" "$BT_REPO/systemd/credentials.conf.example" \
    | install -D -m 0644 /dev/stdin "$1/lunbridge@$BT_VOLUME.service.d/credentials.conf"
}
