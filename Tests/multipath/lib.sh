# Shared by Tests/multipath/faults.sh and Tests/bench/multipath-bench.sh; source it.
#
# The caller sets BIN (lunbridge binary, absolute), TAG (netns.sh tag), WORK (a short
# private temp dir: the NBD and control sockets live there) and OUT (logs), then calls
# mp_init. lunbridge serve runs inside the initiator namespace; fio and `lunbridge status`
# run in the host namespace and reach the sockets through the filesystem.

MP_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NETNS=$MP_HERE/../lib/netns.sh
JSONQ=$MP_HERE/jsonq.py
SERVER_PID=
FIO_PID=

mp_log() { printf '# [%4ds] %s\n' $(($(date +%s) - MP_T0)) "$*"; }

mp_need() { # command package
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || {
    echo "$1 not found: install the Debian package $2 (make deps)" >&2
    return 1
  }
}

mp_init() {
  MP_T0=$(date +%s)
  RUN_DIR=$WORK/run
  SOCK=$WORK/nbd.sock
  mkdir -p "$RUN_DIR" "$OUT"
  eval "$("$NETNS" env "$TAG")"
}

# Does this lunbridge have the multipath CLI (several URLs, --policy, status)?
mp_has_multipath() {
  "$BIN" serve --help 2>&1 | grep -q -- '--policy' && "$BIN" status --help 2>&1 | grep -q 'USAGE: lunbridge status'
}

# mp_start_server NAME LOG URL... [-- OPTIONS...]: serve the URLs on $SOCK inside the
# initiator namespace with control socket $RUN_DIR/NAME.sock; waits until it serves.
mp_start_server() {
  local name=$1 log=$2 urls=() opts=() i
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do urls+=("$1"); shift; done
  [ $# -eq 0 ] || { shift; opts=("$@"); }
  MP_NAME=$name
  rm -f "$SOCK" "$RUN_DIR/$name.sock"
  if [ "${MP_SINGLE:-0}" = 1 ]; then # development: today's serve, first URL only
    ip netns exec "$NS_I" "$BIN" serve "${urls[0]}" --listen "unix:$SOCK" </dev/null >"$log" 2>&1 &
  else
    ip netns exec "$NS_I" env LUNBRIDGE_RUN_DIR="$RUN_DIR" \
    "$BIN" serve "${urls[@]}" --listen "unix:$SOCK" --name "$name" "${opts[@]}" </dev/null >"$log" 2>&1 &
  fi
  SERVER_PID=$!
  for i in $(seq 300); do
    if grep -q "lunbridge: serving .* at nbd+unix://" "$log" 2>/dev/null && [ -S "$SOCK" ]; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "# lunbridge serve exited: $(tail -n 3 "$log" | tr '\n' ' ')"; SERVER_PID=; return 1; }
    sleep 0.1
  done
  echo "# lunbridge serve not serving within 30 s: $(tail -n 3 "$log" | tr '\n' ' ')"
  return 1
}

# Stops the server (SIGTERM: it flushes and logs out; SIGKILL after 15 s). Returns 1 if it
# had died before (a crash), 0 otherwise.
mp_stop_server() {
  local p=$SERVER_PID i alive=0
  SERVER_PID=
  [ -n "$p" ] || return 0
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null || true
    for i in $(seq 150); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
  else
    alive=1
  fi
  wait "$p" 2>/dev/null || true
  return $alive
}

mp_server_alive() { [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; }

# mp_status FILE: `lunbridge status NAME --json` into FILE.
mp_status() {
  LUNBRIDGE_RUN_DIR="$RUN_DIR" timeout 10 "$BIN" status "$MP_NAME" --json >"$1" 2>"$1.err"
}

# mp_path_field FILE PATHNO FIELD: a field of the path whose portal is on NIC PATHNO
# (1 or 2; 198.18.PATHNO.2). FIELD: state ios failures reinstatements failovers errors.
mp_path_field() {
  local file=$1 n=$2 field=$3 col
  case $field in state) col=3 ;; ios) col=4 ;; failures) col=5 ;; reinstatements) col=6 ;;
  failovers) col=7 ;; errors) col=8 ;; *) return 1 ;; esac
  python3 "$JSONQ" paths "$file" | awk -v p="198.18.$n.2:" -v c="$col" 'index($2, p) == 1 { print $c; found = 1 } END { exit !found }'
}

# mp_wait_states SECONDS EXPECTED FILE: poll status until every path's state is EXPECTED
# (e.g. active); the last status is left in FILE. Prints the seconds it took.
mp_wait_states() {
  local secs=$1 want=$2 file=$3 t0 states
  t0=$(date +%s.%N)
  while :; do
    if mp_status "$file" && states=$(python3 "$JSONQ" paths "$file" 2>/dev/null | awk '{ print $3 }' | sort -u | tr '\n' ' ') &&
      [ "$states" = "$want " ]; then
      echo "$t0 $(date +%s.%N)" | awk '{ printf "%.1f\n", $2 - $1 }'
      return 0
    fi
    if [ "$(echo "$t0 $(date +%s.%N) $secs" | awk '{ print ($2 - $1 > $3) }')" = 1 ]; then
      echo "timeout"
      return 1
    fi
    sleep 0.5
  done
}

# mp_fio JSON [FIO OPTIONS...]: fio through the socket export, in the foreground, from
# $WORK (fio's verify state files land there). Returns fio's exit status.
MP_FIO_BASE=()
mp_fio_args() {
  MP_FIO_BASE=(--name=mp --ioengine=nbd "--uri=nbd+unix:///?socket=$SOCK" --numjobs=1
    --output-format=json --verify_state_save=0)
}
mp_fio() {
  local json=$1
  shift
  mp_fio_args
  (cd "$WORK" && exec timeout 300 fio "${MP_FIO_BASE[@]}" --output="$json" "$@" >"$json.stderr" 2>&1)
}
# The same in the background; FIO_PID is its pid.
mp_fio_bg() {
  local json=$1
  shift
  mp_fio_args
  (cd "$WORK" && exec timeout 300 fio "${MP_FIO_BASE[@]}" --output="$json" "$@" >"$json.stderr" 2>&1) &
  FIO_PID=$!
}
