#!/usr/bin/env bash
# A private tgtd (Debian package tgt) on a free loopback port with one RAM-backed LUN,
# for `make demo` / `make bench` and manual runs.
#
#   Tests/scripts/tgtd-private.sh start DIR   # writes DIR/{port,cp,iqn,pid,lun.img,tgtd.log}
#   Tests/scripts/tgtd-private.sh stop DIR    # stops that tgtd, removes the LUN file
#
# Environment:
#   TGTD_LUN_SIZE_MIB   LUN size in MiB (default 256)
#   TGTD_IQN            target IQN (default iqn.2024-01.org.lunbridge:private)
#   TGTD_BLOCK_SIZE     logical block size (default 512)
#   TGTD_ADDR           loopback address to listen on (default 127.0.0.1)
#   TGTD_BACKING_FILE   an existing file to serve as the LUN instead of a RAM file (kept
#                       at stop; the boot-from-SAN test's root filesystem image)
#
# The LUN is target 1, LUN 1:  iscsi://$TGTD_ADDR:$(cat DIR/port)/$(cat DIR/iqn)/1
#
# tgtd facts (tgt 1.0.85): it ignores SIGTERM (a clean exit is deleting all targets and
# then `--op delete --mode system`); if it cannot bind its portal it keeps running on
# 0.0.0.0:3260 instead, so the portal list is checked after start.
set -euo pipefail

die() { echo "tgtd-private: $*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] ||
    die "$1 not found: install the Debian package tgt (make deps)"
}

tgtadm_() { timeout 10 tgtadm -C "$CP" --lld iscsi "$@"; }

# A TCP port free on $ADDR: nothing listens on it and no socket uses it.
free_port() {
  local p
  for p in $(shuf -i 20000-60999 -n 200); do
    if ! (echo >"/dev/tcp/$ADDR/$p") 2>/dev/null; then
      # nothing listens; make sure nothing else has it bound either
      if ! ss -Htan "sport = :$p" | grep -q .; then echo "$p"; return 0; fi
    fi
  done
  return 1
}

# A tgtd control port nobody holds (tgtd POSIX-locks /var/run/tgtd/socket.N.lock).
free_cp() {
  local cp
  for cp in $(shuf -i 10000-32767 -n 200); do # tgtd refuses -C above 32767
    if [ ! -e "/var/run/tgtd/socket.$cp.lock" ] ||
      ! grep -q ":$(stat -c %i "/var/run/tgtd/socket.$cp.lock" 2>/dev/null) " /proc/locks 2>/dev/null; then
      echo "$cp"; return 0
    fi
  done
  return 1
}

kill_tgtd() { # pid cp : clean exit if possible, SIGKILL after 3 s
  local pid=$1 cp=$2 tid i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -CONT "$pid" 2>/dev/null || true
  for tid in $(timeout 3 tgtadm -C "$cp" --lld iscsi --op show --mode target 2>/dev/null |
    sed -n 's/^Target \([0-9]*\):.*/\1/p'); do
    timeout 3 tgtadm -C "$cp" --lld iscsi --op delete --mode target --tid "$tid" --force || true
  done
  timeout 3 tgtadm -C "$cp" --op delete --mode system >/dev/null 2>&1 || true
  for i in $(seq 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  for i in $(seq 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  rm -f "/var/run/tgtd/socket.$cp" "/var/run/tgtd/socket.$cp.lock"
}

start() {
  dir=$1 # global on purpose: the EXIT trap uses it
  need tgtd
  need tgtadm
  export PATH="$PATH:/usr/sbin:/sbin"
  ADDR=${TGTD_ADDR:-127.0.0.1}
  case "$ADDR" in 127.*) ;; *) die "TGTD_ADDR must be a 127.0.0.0/8 address, not $ADDR" ;; esac
  local size=${TGTD_LUN_SIZE_MIB:-256} iqn=${TGTD_IQN:-iqn.2024-01.org.lunbridge:private}
  local bs=${TGTD_BLOCK_SIZE:-512}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ ! -e "$dir/pid" ] || ! kill -0 "$(cat "$dir/pid")" 2>/dev/null ||
    die "a tgtd from $dir is still running (pid $(cat "$dir/pid")); stop it first"

  shm=$(mktemp -d /dev/shm/lunbridge-tgtd-XXXXXX)
  PORT=$(free_port) || die "no free port on $ADDR"
  CP=$(free_cp) || die "no free control port"
  PID=
  cleanup() {
    [ -z "$PID" ] || kill_tgtd "$PID" "$CP"
    rm -rf "$shm"
    rm -f "$dir/port" "$dir/cp" "$dir/iqn" "$dir/pid" "$dir/lun.img"
  }
  trap 'rc=$?; if [ $rc -ne 0 ]; then echo "tgtd-private: start failed; tgtd log:" >&2; cat "$dir/tgtd.log" >&2 2>/dev/null || true; cleanup; fi' EXIT

  if [ -n "${TGTD_BACKING_FILE:-}" ]; then
    [ -f "$TGTD_BACKING_FILE" ] || die "TGTD_BACKING_FILE $TGTD_BACKING_FILE is not a file"
    ln -s "$(cd "$(dirname "$TGTD_BACKING_FILE")" && pwd)/$(basename "$TGTD_BACKING_FILE")" "$shm/lun.img"
  else
    truncate -s "${size}M" "$shm/lun.img"
  fi
  # tgtd must not inherit our fds beyond 0-2: make's jobserver pipes, or the socket
  # through which Swift's Foundation.Process notices that this script has exited.
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-"; fi
    done
    exec setsid tgtd -f --control-port "$CP" --iscsi "portal=$ADDR:$PORT" </dev/null >"$dir/tgtd.log" 2>&1
  ) &
  PID=$!

  local i ok=
  for i in $(seq 100); do
    kill -0 "$PID" 2>/dev/null || die "tgtd exited"
    if (echo >"/dev/tcp/$ADDR/$PORT") 2>/dev/null &&
      tgtadm_ --op show --mode target >/dev/null 2>&1; then
      ok=1; break
    fi
    sleep 0.1
  done
  [ -n "$ok" ] || die "tgtd not ready within 10 s"
  local portals
  portals=$(tgtadm_ --op show --mode portal | sed -n 's/^Portal: \(.*\),1$/\1/p')
  [ "$portals" = "$ADDR:$PORT" ] || die "tgtd portals are '$portals', expected $ADDR:$PORT"

  tgtadm_ --op new --mode target --tid 1 -T "$iqn"
  if [ "$bs" = 512 ]; then
    tgtadm_ --op new --mode logicalunit --tid 1 --lun 1 -b "$shm/lun.img"
  else
    tgtadm_ --op new --mode logicalunit --tid 1 --lun 1 -b "$shm/lun.img" --blocksize="$bs"
  fi
  tgtadm_ --op update --mode logicalunit --tid 1 --lun 1 --params thin_provisioning=1
  tgtadm_ --op bind --mode target --tid 1 -I ALL

  echo "$PORT" >"$dir/port"
  echo "$CP" >"$dir/cp"
  echo "$iqn" >"$dir/iqn"
  echo "$ADDR" >"$dir/addr"
  echo "$shm" >"$dir/shm"
  ln -sf "$shm/lun.img" "$dir/lun.img"
  echo "$PID" >"$dir/pid"
  trap - EXIT
  echo "iscsi://$ADDR:$PORT/$iqn/1"
}

stop() {
  local dir=$1
  [ -d "$dir" ] || die "no such directory: $dir"
  export PATH="$PATH:/usr/sbin:/sbin"
  if [ -f "$dir/pid" ] && [ -f "$dir/cp" ]; then
    local pid cp
    pid=$(cat "$dir/pid")
    cp=$(cat "$dir/cp")
    # only kill it if it still is our tgtd (pid not reused)
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--control-port $cp "; then
      kill_tgtd "$pid" "$cp"
    fi
  fi
  if [ -f "$dir/shm" ]; then
    case "$(cat "$dir/shm")" in /dev/shm/lunbridge-tgtd-*) rm -rf "$(cat "$dir/shm")" ;; esac
  fi
  rm -f "$dir/port" "$dir/cp" "$dir/iqn" "$dir/pid" "$dir/addr" "$dir/shm" "$dir/lun.img"
}

case "${1:-}" in
start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
# Stops any tgtd by PID and control port (for harnesses that start tgtd themselves).
kill) [ $# -eq 3 ] || die "usage: $0 kill PID CONTROL-PORT"; kill_tgtd "$2" "$3" ;;
*) die "usage: $0 start DIR | stop DIR | kill PID CONTROL-PORT" ;;
esac
