# Sourced by guest-attach.sh INSIDE the VM (same boot, same ok/notok/check helpers and
# TAP plan): LIO, the kernel's own target, as an administrator first meets it:
# discovery, CHAP one-way and mutual (right, wrong, and required but not configured),
# digests, attach + ext4, and UNMAP reaching the backing file. Needs $LB, $REPO, $T.

. "$REPO/Tests/vm/lio.sh"
lio_checks() {
  local url out rc secret=$T/lio.secret msecret=$T/lio.msecret wrong=$T/lio.wrong
  if ! url=$(lio_start 64 2>"$T/lio-start.err"); then
    notok "LIO target set up through configfs ($(tr '\n' ' ' <"$T/lio-start.err"))"
    return
  fi
  ok "LIO target set up through configfs: $url"

  out=$(timeout 60 "$LB" discover "127.0.0.1:$LIO_PORT" 2>&1)
  check "discover lists the LIO target ($out)" grep -q "$LIO_IQN" <<<"$out"
  out=$(timeout 60 "$LB" info "$url" 2>&1); rc=$?
  check "info on the LIO LUN (rc $rc)" bash -c "[ $rc -eq 0 ] && grep -q 'LIO-ORG' <<<\"\$1\"" _ "$out"

  printf '%s' lio-secret-1234 >"$secret"; printf '%s' lio-target-5678 >"$msecret"
  printf '%s' not-the-secret-0 >"$wrong"; chmod 600 "$secret" "$msecret" "$wrong"
  lio_chap lbuser lio-secret-1234
  out=$(timeout 60 "$LB" info "$url" 2>&1); rc=$?
  check "CHAP required, none configured: the error says so ($out)" \
    bash -c "[ $rc -ne 0 ] && [ \$(wc -l <<<\"\$1\") -eq 1 ] && grep -q '^lunbridge: error: authentication required: the target wants CHAP, and no CHAP user/secret is configured' <<<\"\$1\"" _ "$out"
  out=$(timeout 60 "$LB" info "$url" --chap-user lbuser --chap-secret-file "$secret" 2>&1); rc=$?
  check "one-way CHAP, right secret (rc $rc)" test $rc -eq 0
  out=$(timeout 60 "$LB" info "$url" --chap-user lbuser --chap-secret-file "$wrong" 2>&1); rc=$?
  check "one-way CHAP, wrong secret: refused ($out)" bash -c "[ $rc -ne 0 ] && grep -q 'authentication' <<<\"\$1\"" _ "$out"
  lio_chap lbuser lio-secret-1234 lbtarget lio-target-5678
  out=$(timeout 60 "$LB" info "$url" --chap-user lbuser --chap-secret-file "$secret" \
    --mutual-user lbtarget --mutual-secret-file "$msecret" 2>&1); rc=$?
  check "mutual CHAP, right secrets (rc $rc)" test $rc -eq 0
  out=$(timeout 60 "$LB" info "$url" --chap-user lbuser --chap-secret-file "$secret" \
    --mutual-user lbtarget --mutual-secret-file "$wrong" 2>&1); rc=$?
  check "mutual CHAP, wrong target secret: refused ($out)" bash -c "[ $rc -ne 0 ] && grep -q 'authentication' <<<\"\$1\"" _ "$out"
  lio_open

  dev=$(timeout 60 "$LB" attach "$url" --header-digest crc32c --data-digest crc32c 2>"$T/lio-attach.err")
  if ! check "attach the LIO LUN with CRC32C digests (${dev:-no device})" test -b "${dev:-/nonexistent}"; then
    sed 's/^/# /' "$T/lio-attach.err"
    dev=""
    lio_stop
    return
  fi
  mkdir -p "$T/lio-mnt"
  check "mkfs.ext4 and mount" bash -c "mkfs.ext4 -q -F '$dev' && mount '$dev' '$T/lio-mnt'"
  head -c 8M /dev/urandom >"$T/lio-data"
  cp "$T/lio-data" "$T/lio-mnt/data" && sync
  umount "$T/lio-mnt" && mount "$dev" "$T/lio-mnt"
  check "a file written through LIO reads back the same after a remount" cmp -s "$T/lio-data" "$T/lio-mnt/data"
  umount "$T/lio-mnt"
  local before after
  before=$(du -k "$LIO_BACKING" | cut -f1)
  blkdiscard "$dev" 2>"$T/lio-discard.err"; sync
  after=$(du -k "$LIO_BACKING" | cut -f1)
  check "UNMAP reaches LIO's backing file (allocated ${before} KiB -> ${after} KiB; discard_max_bytes $(cat "/sys/block/${dev#/dev/}/queue/discard_max_bytes"); $(tr '\n' ' ' <"$T/lio-discard.err"))" \
    test "$after" -lt "$((before / 2))"
  check "detach the LIO LUN" "$LB" detach "$dev"
  dev=""
  lio_alua_checks "$url"
  lio_stop
}

# The state of path N of a device as `status` shows it (active, failed, ...).
path_state() { "$LB" status "$1" 2>/dev/null | awk -v n="$2" '$1 == n { print $2; exit }'; }

# ALUA: two target port groups on two portals, one path to each; the groups move while
# fio writes and verifies. Every move must end with I/O on the group that allows it, and
# fio must see no error (an array's controller failover, seen from the host).
lio_alua_checks() {
  local url1=$1 url2 fpid rc
  if ! url2=$(lio_alua_two_groups 0 2 2>"$T/lio-alua.err"); then
    notok "LIO: two ALUA port groups on two portals ($(tr '\n' ' ' <"$T/lio-alua.err"))"
    return
  fi
  ok "LIO: two ALUA port groups on two portals (lb_a optimized, lb_b standby)"
  dev=$(timeout 60 "$LB" attach "$url1" "$url2" --log-file "$T/lio-alua.log" 2>"$T/lio-alua-attach.err")
  if ! check "attach through both portals (${dev:-no device})" test -b "${dev:-/nonexistent}"; then
    sed 's/^/# /' "$T/lio-alua-attach.err"
    dev=""
    return
  fi
  sleep 2
  check "path 0 active, path 1 (standby group) not carrying I/O ($(path_state "$dev" 0)/$(path_state "$dev" 1))" \
    bash -c "[ '$(path_state "$dev" 0)' = active ] && [ '$(path_state "$dev" 1)' != active ]"
  fio --name=alua --filename="$dev" --direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=8 --size=32m \
    --time_based --runtime=50 --verify=crc32c --verify_fatal=1 --verify_backlog=256 \
    --output="$T/fio-alua.txt" >/dev/null 2>&1 &
  fpid=$!
  sleep 5
  lio_alua_set lb_b 0; lio_alua_set lb_a 2; sleep 8
  check "lb_a standby, lb_b optimized: I/O on path 1 ($(path_state "$dev" 0)/$(path_state "$dev" 1))" \
    bash -c "[ '$(path_state "$dev" 1)' = active ] && [ '$(path_state "$dev" 0)' != active ]"
  lio_alua_set lb_a 0; lio_alua_set lb_b 2; sleep 8
  check "back: I/O on path 0 ($(path_state "$dev" 0)/$(path_state "$dev" 1))" \
    bash -c "[ '$(path_state "$dev" 0)' = active ] && [ '$(path_state "$dev" 1)' != active ]"
  lio_alua_set lb_b 0; lio_alua_set lb_a 3; sleep 8
  check "lb_a unavailable, lb_b optimized: I/O on path 1 ($(path_state "$dev" 0)/$(path_state "$dev" 1))" \
    bash -c "[ '$(path_state "$dev" 1)' = active ] && [ '$(path_state "$dev" 0)' != active ]"
  lio_alua_set lb_b 2; sleep 5  # both standby: I/O waits (no-path-retry is 60 s)
  lio_alua_set lb_a 0
  wait "$fpid"; rc=$?
  check "fio verify through every move: exit $rc, $(grep -o 'err= *[0-9]*' "$T/fio-alua.txt" | head -1)" \
    bash -c "[ $rc -eq 0 ] && grep -q 'err= *0' '$T/fio-alua.txt'"
  grep -E "WRITE:" "$T/fio-alua.txt" | sed 's/^/# /'
  check "detach the two-path LIO volume" "$LB" detach "$dev"
  dev=""
}
lio_checks
