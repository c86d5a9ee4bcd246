#!/bin/bash
# Runs INSIDE the boot test's VM for lunbridge-test-target.service (tgtd on 127.0.0.1).
#   guest-target.sh start           tgtd (Tests/lib/tgtd.sh, staged beside this folder) with
#                                   target 1, LUN 1 = lun.img, then CHAP on it
#   guest-target.sh stop            stop that tgtd (Tests/lib/tgtd.sh)
#   guest-target.sh save-journal N  the whole journal of this boot to bootN-journal.txt
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/boot-lib.sh"
TGTD=$(dirname "${BASH_SOURCE[0]}")/../../lib/tgtd.sh
DIR=/run/lunbridge-test-target
adm() { "$TGTD" adm "$DIR" "$@"; }
case "${1:-}" in
start)
  TGTD_PORT=$BT_PORT TGTD_CP=$BT_CONTROL_PORT TGTD_IQN=$BT_IQN TGTD_BACKING_FILE=$BT_RESULTS/lun.img TGTD_THIN=0 \
    "$TGTD" start "$DIR" >/dev/null &&
    adm --op new --mode account --user "$BT_CHAP_USER" --password "$BT_CHAP_SECRET" &&
    adm --op bind --mode account --tid 1 --user "$BT_CHAP_USER"
  ;;
stop)
  "$TGTD" stop "$DIR"
  ;;
save-journal)
  journalctl -b -o short-monotonic --no-pager >"$BT_RESULTS/boot$2-journal.txt" 2>&1
  sync
  ;;
*) echo "usage: $0 start | stop | save-journal PHASE" >&2; exit 2 ;;
esac
