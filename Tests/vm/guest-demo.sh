#!/usr/bin/env bash
# The kernel half of `make demo`, run where an nbd driver exists (the VM, or a host that
# has one): a LUN attached as /dev/nbdN, a filesystem made, mounted, written and shown,
# then everything taken down again.
#   guest-demo.sh LUNBRIDGE_BINARY REPO_DIR
set -euo pipefail
LB=$(realpath "$1")
REPO=$(realpath "$2")
T=$(mktemp -d /tmp/lunbridge-demo.XXXXXX)
M=$T/mnt
dev=""
cleanup() {
  set +e
  mountpoint -q "$M" && umount "$M"
  [ -n "$dev" ] && "$LB" detach "$dev" 2>/dev/null
  "$REPO/Tests/lib/tgtd.sh" stop "$T" >/dev/null 2>&1
}
trap cleanup EXIT
step() { printf '\n$ %s\n' "$*"; }

modprobe nbd nbds_max=8
export TGTD_LUN_SIZE_MIB=${TGTD_LUN_SIZE_MIB:-256} TGTD_IQN=${TGTD_IQN:-iqn.2026-11.org.lunbridge:demo}
url=$("$REPO/Tests/lib/tgtd.sh" start "$T")
echo "A private tgtd serves a ${TGTD_LUN_SIZE_MIB} MiB RAM-backed LUN at $url"

step lunbridge attach "$url"
dev=$("$LB" attach "$url")
echo "$dev"
step mkfs.ext4 -q "$dev"
mkfs.ext4 -q "$dev"
mkdir -p "$M"
step mount "$dev" "$M"
mount "$dev" "$M"
step "write 32 MiB of data and a note"
dd if=/dev/urandom of="$M/data.bin" bs=1M count=32 status=none
echo "hello from an iSCSI LUN through /dev/nbd" >"$M/hello.txt"
sha256sum "$M/data.bin"
cat "$M/hello.txt"
step df -h "$M"
df -h "$M"
step lunbridge list
"$LB" list
step umount "$M"
umount "$M"
step lunbridge detach "$dev"
"$LB" detach "$dev"
dev=""
echo
echo "Demo done."
