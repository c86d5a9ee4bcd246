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
  lio_pr_checks "$url"
  lio_alua_checks "$url"
  lio_stop
}

# SCSI-3 persistent reservations between two cluster nodes on one LIO LUN: node A is
# /dev/nbdN (attach, the kernel's EIO), node B an export of `serve` (libnbd, EPERM), each
# with two sessions, so two I_T nexuses. LIO keys a registration by the initiator port
# (name + ISID), so a restarted node with the same ISIDs is still registered.
lio_pr_checks() {
  local url=$1 da bpid out rc sock=$T/pr-b.sock
  local node_a=iqn.2026-11.org.lunbridge:node-a node_b=iqn.2026-11.org.lunbridge:node-b
  da=$(timeout 60 "$LB" attach "$url" --initiator-name "$node_a" --sessions-per-path 2 --log-file "$T/pr-a.log" 2>"$T/pr-a.err")
  if ! check "PR: node A attached with two sessions (${da:-no device})" test -b "${da:-/nonexistent}"; then
    sed 's/^/# /' "$T/pr-a.err"; da=""; return
  fi
  dev=$da
  pr_serve_b() {
    rm -f "$sock"
    "$LB" serve "$url" --name pr-b --initiator-name "$node_b" --sessions-per-path 2 --listen "unix:$sock" \
      >>"$T/pr-b.log" 2>&1 &
    bpid=$!
    for _ in $(seq 1 100); do [ -S "$sock" ] && timeout 5 "$LB" status pr-b >/dev/null 2>&1 && return 0; sleep 0.2; done
    return 1
  }
  check "PR: node B serves the same LUN with two sessions" pr_serve_b
  # Block status on LIO (GET LBA STATUS, or every block as data where LIO does not know
  # it): nbdinfo --map covers the whole LUN, in order, with no error.
  lio_map() {
    /usr/bin/python3 -c '
import json, subprocess, sys
run = lambda *a: subprocess.run(["nbdinfo", *a, sys.argv[1]], capture_output=True, text=True, check=True).stdout
extents, size, at = json.loads(run("--map", "--json")), int(run("--size")), 0
for e in extents:
    assert e["offset"] == at, (e, at)
    at += e["length"]
assert at == size, (at, size)
print(len(extents), "extents over", size, "bytes")' "nbd+unix:///?socket=$sock" 2>&1
  }
  out=$(lio_map); rc=$?
  check "nbdinfo --map on LIO through serve covers the LUN ($(tail -1 <<<"$out"))" test $rc -eq 0
  b_write() { /usr/bin/python3 -c 'import nbd,sys; h=nbd.NBD(); h.connect_uri(sys.argv[1]); h.pwrite(b"B"*4096, 8192)' "nbd+unix:///?socket=$sock" 2>&1; }
  b_read() { /usr/bin/python3 -c 'import nbd,sys; h=nbd.NBD(); h.connect_uri(sys.argv[1]); assert len(h.pread(4096, 8192)) == 4096' "nbd+unix:///?socket=$sock" 2>&1; }
  a_write() { dd if=/dev/urandom of="$da" bs=4k count=4 seek=100 oflag=direct status=none 2>&1; }
  # check_pr WHAT PR-ARGS...: `lunbridge pr` exits 0; its output shows in the line if not.
  check_pr() {
    local what=$1 o r; shift
    o=$("$LB" pr "$@" 2>&1); r=$?
    if [ $r -eq 0 ]; then ok "$what"; else notok "$what (rc $r: $(tr '\n' ' ' <<<"$o"))"; fi
  }

  check_pr "PR: A registers 0xa11ce (on both its paths)" "$da" --register --param-sark 0xa11ce
  out=$("$LB" pr "$da" --read-keys)
  check "PR: read-keys lists A's key once per I_T nexus ($(tr '\n' ' ' <<<"$out"))" test "$(grep -c '0xa11ce' <<<"$out")" -eq 2
  check_pr "PR: A reserves Write Exclusive, registrants only" "$da" --reserve --param-rk 0xa11ce --prout-type 5
  out=$("$LB" pr pr-b --read-full-status)
  check "PR: read-full-status names A's initiator ports and marks the holder" \
    bash -c 'grep -q "node-a,i,0x" <<<"$1" && grep -q "Reservation holder" <<<"$1" && grep -q "Write Exclusive, registrants only" <<<"$1"' _ "$out"
  echo "$out" | sed 's/^/# /'
  out=$(b_write); rc=$?
  check "PR: unregistered B cannot write: reservation conflict ($(tail -1 <<<"$out"))" \
    bash -c '[ $1 -ne 0 ] && grep -q "Operation not permitted" <<<"$2"' _ $rc "$out"
  check "PR: B can read" b_read
  check "PR: B's log says reservation conflict, and its paths stay active" \
    bash -c 'grep -q "reservation conflict" "$1" && [ "$("$2" status pr-b | grep -c " active ")" -eq 2 ]' _ "$T/pr-b.log" "$LB"
  check "PR: A writes through /dev/nbd" a_write

  check_pr "PR: B registers 0xb0b" pr-b --register --param-sark 0xb0b
  check_pr "PR: B preempts A and aborts its commands" \
    pr-b --preempt-abort --param-rk 0xb0b --param-sark 0xa11ce --prout-type 5
  out=$(a_write); rc=$?
  check "PR: A's write now fails with EIO ($(tail -1 <<<"$out"))" \
    bash -c '[ $1 -ne 0 ] && grep -q "Input/output error" <<<"$2"' _ $rc "$out"
  check "PR: B writes" b_write
  out=$("$LB" pr "$da" --read-reservation)
  check "PR: the reservation is B's ($(tr '\n' ' ' <<<"$out"))" grep -q "Key = 0xb0b" <<<"$out"
  out=$("$LB" pr "$da" --read-full-status --json)
  check "PR: read-full-status --json: B's two nexuses, one the holder, A gone" \
    /usr/bin/python3 -c 'import json,sys; r=json.loads(sys.argv[1])["registrations"]; assert len(r)==2 and sum(x["holder"] for x in r)==1 and all("node-b,i,0x" in x["initiator"] for x in r), r' "$out"

  # B is killed and restarted: the same ISIDs, so LIO still has it registered and holding.
  local isids0 isids1
  isids0=$(timeout 5 "$LB" status pr-b --json | grep '"isid"' | tr -d ' ",' | sort | tr '\n' ' ')
  kill -9 "$bpid"; wait "$bpid" 2>/dev/null
  check "PR: node B restarted after kill -9" pr_serve_b
  isids1=$(timeout 5 "$LB" status pr-b --json | grep '"isid"' | tr -d ' ",' | sort | tr '\n' ' ')
  check "PR: the same ISIDs after the restart ($isids0-> $isids1)" bash -c '[ -n "$1" ] && [ "$1" = "$2" ]' _ "$isids0" "$isids1"
  out=$("$LB" pr pr-b --read-keys)
  check "PR: still registered after the restart, no new nexus ($(tr '\n' ' ' <<<"$out"))" test "$(grep -c '0xb0b' <<<"$out")" -eq 2
  check "PR: the restarted B writes (it still holds the reservation)" b_write
  check_pr "PR: B clears every registration" pr-b --clear --param-rk 0xb0b
  out=$("$LB" pr pr-b --read-reservation)
  check "PR: no reservation after clear ($out)" grep -q "there is NO reservation held" <<<"$out"
  check "PR: A writes again" a_write
  kill "$bpid" 2>/dev/null; wait "$bpid" 2>/dev/null
  check "PR: detach node A" "$LB" detach "$da"
  dev=""
}

# The state of path N of a device as `status` shows it (active, standby, unavailable, ...).
path_state() { timeout 5 "$LB" status "$1" 2>/dev/null | awk -v n="$2" '$1 == n { print $2; exit }'; }
# Completed I/Os of path N (status --json); empty when status does not answer.
path_ios() {
  timeout 20 "$LB" status "$1" --json 2>/dev/null |
    python3 -c 'import json,sys; v=json.load(sys.stdin); v=v[0] if isinstance(v,list) else v; print([p["ios"] for p in v["paths"] if p["id"]==int(sys.argv[1])][0])' "$2" 2>/dev/null
}
# Waits up to $3 seconds (default 15: the 10 s check interval and a margin) for path 0
# and path 1 to show the states in $1 and $2. Prints what they showed and when; the
# caller checks the printed line ("... ok") rather than asking twice, so a passing state
# (transitioning) is caught when it is seen.
wait_states() {
  local want0=$1 want1=$2 limit=${3:-15} s0 s1 start=$SECONDS
  while :; do
    s0=$(path_state "$dev" 0); s1=$(path_state "$dev" 1)
    [ "$s0" = "$want0" ] && [ "$s1" = "$want1" ] && break
    [ $((SECONDS - start)) -ge "$limit" ] && break
    sleep 0.5
  done
  if [ "$s0" = "$want0" ] && [ "$s1" = "$want1" ]; then
    echo "$s0/$s1 after $((SECONDS - start)) s: ok"
  else
    echo "$s0/$s1 after $((SECONDS - start)) s, wanted $want0/$want1"
  fi
}
seen() { [[ $1 == *": ok" ]]; }
# I/O has moved to path N: within 40 s (a command the target holds through its
# transition can stall fio until the command timeout) path N completes 50 more I/Os while
# path M completes at most 8 (what it may still have had in flight, fio's depth).
io_moves_to() {
  local n=$1 m=$2 a0 b0 a1 b1 i
  a0=$(path_ios "$dev" "$n"); b0=$(path_ios "$dev" "$m")
  for ((i = 0; i < 40; i++)); do
    sleep 1
    a1=$(path_ios "$dev" "$n"); b1=$(path_ios "$dev" "$m")
    [ -n "$a0" ] && [ -n "$a1" ] && [ "$a1" -ge $((a0 + 50)) ] && break
  done
  echo "path $n: $a0 -> $a1 I/Os, path $m: $b0 -> $b1 in $((i + 1)) s"
  [ -n "$a0" ] && [ -n "$b0" ] && [ -n "$a1" ] && [ -n "$b1" ] &&
    [ "$a1" -ge $((a0 + 50)) ] && [ "$b1" -le $((b0 + 8)) ]
}
# check WHAT LINE: passes when LINE (from wait_states) ends in ": ok".
check_seen() { check "$1 ($2)" seen "$2"; }
# check WHAT for io_moves_to N M, with its figures in the line.
check_moves() {
  local out rc
  out=$(io_moves_to "$2" "$3"); rc=$?
  if [ $rc -eq 0 ]; then ok "$1 ($out)"; else notok "$1 ($out)"; fi
}

# ALUA: two target port groups on two portals, one path to each; the groups move while
# fio writes and verifies: optimized <-> standby, optimized -> unavailable with the other
# optimized, standby -> transitioning -> optimized, both standby for less than
# no-path-retry (implicit ALUA: lunbridge waits), and both standby with explicit ALUA
# allowed (lunbridge activates a group with SET TARGET PORT GROUPS). Every move must end
# with I/O on the group that allows it within the check interval, and fio must see no
# error (an array's controller failover, seen from the host).
lio_alua_checks() {
  local url1=$1 url2 fpid rc out
  if ! url2=$(lio_alua_two_groups 0 2 2>"$T/lio-alua.err"); then
    notok "LIO: two ALUA port groups on two portals ($(tr '\n' ' ' <"$T/lio-alua.err"))"
    return
  fi
  ok "LIO: two ALUA port groups on two portals (lb_a optimized, lb_b standby)"
  dev=$(timeout 60 "$LB" attach "$url1" "$url2" --alua-check-interval 3 --log-file "$T/lio-alua.log" 2>"$T/lio-alua-attach.err")
  if ! check "attach through both portals (${dev:-no device})" test -b "${dev:-/nonexistent}"; then
    sed 's/^/# /' "$T/lio-alua-attach.err"
    dev=""
    return
  fi
  check_seen "at attach: path 0 active, path 1 standby, logged in and not failed" "$(wait_states active standby 5)"
  "$LB" status "$dev" | sed 's/^/# /'
  # fio verify in 20 s rounds until the moves are done: each round must exit 0 with no
  # error (an interrupted fio exits 128, so it is never stopped by a signal).
  rm -f "$T/fio-alua.stop" "$T/fio-alua.rcs"
  (
    r=0
    while [ ! -e "$T/fio-alua.stop" ]; do
      r=$((r + 1))
      fio --name=alua --filename="$dev" --direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=8 --size=32m \
        --time_based --runtime=20 --verify=crc32c --verify_fatal=1 --verify_backlog=256 \
        --output="$T/fio-alua-$r.txt" >/dev/null 2>&1
      echo "$r $? $(grep -o 'err= *[0-9]*' "$T/fio-alua-$r.txt" | head -1 | tr -d ' ')" >>"$T/fio-alua.rcs"
    done
  ) &
  fpid=$!
  sleep 3
  check_moves "I/O on path 0 only" 0 1
  lio_alua_set lb_b 0; lio_alua_set lb_a 2
  check_seen "lb_a standby, lb_b optimized: status shows it" "$(wait_states standby active)"
  check_moves "I/O moved to path 1" 1 0
  lio_alua_set lb_a 0; lio_alua_set lb_b 2
  check_seen "back: lb_a optimized, lb_b standby" "$(wait_states active standby)"
  check_moves "I/O back on path 0" 0 1
  lio_alua_set lb_b 0; lio_alua_set lb_a 3
  check_seen "lb_a unavailable, lb_b optimized: status shows it" "$(wait_states unavailable active 45)"
  check_moves "I/O on path 1 while lb_a is unavailable" 1 0
  # lb_a comes back through an 8 s transition (LIO's trans_delay_msecs: the group reports
  # transitioning meanwhile, seen by the 3 s checks of this volume; the configfs write
  # returns at its end). (A 16 s one made LIO drop every connection as it ended.)
  local tpid
  echo 8000 >"$LIO_CFS/core/fileio_0/lun0/alua/lb_a/trans_delay_msecs"
  lio_alua_set lb_a 0 &
  tpid=$!
  check_seen "lb_a transitioning: status shows it" "$(wait_states transitioning active 8)"
  wait "$tpid"
  echo 0 >"$LIO_CFS/core/fileio_0/lun0/alua/lb_a/trans_delay_msecs"
  lio_alua_set lb_b 2
  check_seen "lb_a optimized after its transition, lb_b standby" "$(wait_states active standby)"
  check_moves "I/O on path 0 after the transition" 0 1
  # Both standby for 6 s (no-path-retry is 60 s): implicit ALUA, so lunbridge only waits.
  lio_alua_set lb_a 2
  check_seen "both groups standby: both paths standby, none failed" "$(wait_states standby standby 15)"
  sleep 4
  lio_alua_set lb_a 0
  check_seen "lb_a optimized again" "$(wait_states active standby)"
  check_moves "I/O resumes on path 0" 0 1
  check "implicit-only ALUA: no SET TARGET PORT GROUPS sent" bash -c "! grep -q 'activating port group' '$T/lio-alua.log'"
  touch "$T/fio-alua.stop"
  wait "$fpid"
  out=$(tr '\n' ';' <"$T/fio-alua.rcs")
  check "fio verify through every move, every round exit 0 and err=0 (round rc err: $out)" \
    bash -c "[ -s '$T/fio-alua.rcs' ] && awk '\$2 != 0 || \$3 != \"err=0\" { bad = 1 } END { exit bad }' '$T/fio-alua.rcs'"
  check "detach the two-path LIO volume" "$LB" detach "$dev"
  dev=""

  # Explicit ALUA allowed (alua_access_type 3: implicit and explicit): both groups
  # standby under fio; lunbridge activates one with SET TARGET PORT GROUPS.
  local so=$LIO_CFS/core/fileio_0/lun0
  echo 3 >"$so/alua/lb_a/alua_access_type"; echo 3 >"$so/alua/lb_b/alua_access_type"
  dev=$(timeout 60 "$LB" attach "$url1" "$url2" --log-file "$T/lio-alua2.log" 2>"$T/lio-alua2-attach.err")
  if ! check "attach with explicit ALUA allowed (${dev:-no device})" test -b "${dev:-/nonexistent}"; then
    sed 's/^/# /' "$T/lio-alua2-attach.err"
    dev=""
    return
  fi
  fio --name=alua2 --filename="$dev" --direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=8 --size=32m \
    --time_based --runtime=20 --verify=crc32c --verify_fatal=1 --verify_backlog=256 \
    --output="$T/fio-alua2.txt" >/dev/null 2>&1 &
  fpid=$!
  sleep 3
  lio_alua_set lb_a 2
  local i s0 s1
  for ((i = 0; i < 30; i++)); do
    s0=$(path_state "$dev" 0); s1=$(path_state "$dev" 1)
    { [ "$s0" = active ] || [ "$s1" = active ]; } && grep -q 'activating port group' "$T/lio-alua2.log" && break
    sleep 0.5
  done
  check "both groups standby: lunbridge activates one with SET TARGET PORT GROUPS ($s0/$s1 after $((i / 2)) s; $(grep -o 'activating port group [0-9]*' "$T/lio-alua2.log" | head -1))" \
    bash -c "{ [ '$s0' = active ] || [ '$s1' = active ]; } && grep -q 'activating port group' '$T/lio-alua2.log'"
  wait "$fpid"; rc=$?
  check "fio verify through the activation: exit $rc, $(grep -o 'err= *[0-9]*' "$T/fio-alua2.txt" | head -1)" \
    bash -c "[ $rc -eq 0 ] && grep -q 'err= *0' '$T/fio-alua2.txt'"
  check "detach" "$LB" detach "$dev"
  dev=""
}
lio_checks
