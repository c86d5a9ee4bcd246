#!/bin/bash
# Runs INSIDE the boot test's VM for lunbridge-test-target.service (tgtd on 127.0.0.1).
#   guest-target.sh configure       wait for tgtd, then target 1 with LUN 1 = lun.img (CHAP)
#   guest-target.sh stop            delete the target and stop tgtd (it ignores SIGTERM)
#   guest-target.sh save-journal N  the whole journal of this boot to bootN-journal.txt
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/boot-lib.sh"
adm() { timeout 10 tgtadm -C "$BT_CONTROL_PORT" --lld iscsi "$@"; }
case "${1:-}" in
configure)
  for _ in $(seq 100); do adm --op show --mode target >/dev/null 2>&1 && break; sleep 0.2; done
  adm --op new --mode target --tid 1 -T "$BT_IQN" &&
    adm --op new --mode logicalunit --tid 1 --lun 1 -b "$BT_RESULTS/lun.img" &&
    adm --op bind --mode target --tid 1 -I ALL &&
    adm --op new --mode account --user "$BT_CHAP_USER" --password "$BT_CHAP_SECRET" &&
    adm --op bind --mode account --tid 1 --user "$BT_CHAP_USER"
  ;;
stop)
  adm --op delete --mode target --tid 1 --force
  timeout 10 tgtadm -C "$BT_CONTROL_PORT" --op delete --mode system
  ;;
save-journal)
  journalctl -b -o short-monotonic --no-pager >"$BT_RESULTS/boot$2-journal.txt" 2>&1
  sync
  ;;
*) echo "usage: $0 configure | stop | save-journal PHASE" >&2; exit 2 ;;
esac
