#!/usr/bin/env bash
# The one way lunbridge's tests start and stop a private tgtd (Debian package tgt): the
# XCTest harness (Tests/IntegrationTests/TGTD.swift), make demo and bench, the VM suites,
# the multipath namespaces and the boot test's target unit all come here.
#
#   Tests/lib/tgtd.sh start DIR      start; prints one iscsi:// URL per portal (LUN 1)
#   Tests/lib/tgtd.sh stop DIR       stop it, remove its files (a backing file given is kept)
#   Tests/lib/tgtd.sh adm DIR ARG... tgtadm --lld iscsi ARG... against it (10 s limit)
#   Tests/lib/tgtd.sh kill PID CP    stop any tgtd by PID and control port
#   Tests/lib/tgtd.sh pid DIR        print its pid if it still runs (exit 1 if not)
#
# DIR gets port, cp, iqn, addr, pid, tgtd.log (and shm, lun.img with a LUN). Environment:
#   TGTD_PORTALS       addresses to listen on, one port for all (default 127.0.0.1); each
#                      127.0.0.0/8 or ::1, unless TGTD_NETNS is set
#   TGTD_NETNS         a network namespace (made by the test) to run tgtd in
#   TGTD_PORT, TGTD_CP the iSCSI port and control port (default: free ones; given to
#                      start again on the same ones)
#   TGTD_LUNS          1 (default): target 1 with LUN 1, open to all; 0: no target
#   TGTD_IQN           target name (default iqn.2024-01.org.lunbridge:private)
#   TGTD_LUN_SIZE_MIB  RAM-backed LUN size (default 256)
#   TGTD_BLOCK_SIZE    logical block size (default 512)
#   TGTD_THIN          1 (default): thin provisioning on (UNMAP, GET LBA STATUS); 0: off
#   TGTD_BACKING_FILE  an existing file to serve instead of a RAM file (kept at stop)
#
# tgtd facts (tgt 1.0.85): it ignores SIGTERM (a clean exit is deleting all targets, then
# `--op delete --mode system`); if it cannot bind its portal it keeps running on
# 0.0.0.0:3260 instead, so the portal list is checked after start; control ports above
# 32767 are refused; /var/run/tgtd/socket.CP.lock is POSIX-locked while it runs.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "tgtd: $*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: install the Debian package tgt (make deps)"
}

in_ns() { if [ -n "${TGTD_NETNS:-}" ]; then ip netns exec "$TGTD_NETNS" "$@"; else "$@"; fi; }

portal() { case $1 in *:*) echo "[$1]:$2" ;; *) echo "$1:$2" ;; esac; }

# True when something accepts connections on ADDRESS PORT (in tgtd's namespace).
answers() { in_ns timeout 2 bash -c "echo >/dev/tcp/$1/$2" 2>/dev/null; }

# A TCP port nothing listens on or holds, on every portal address.
free_port() {
  local p a busy
  for p in $(shuf -i 20000-60999 -n 200); do
    busy=
    for a in $PORTALS; do
      if answers "$a" "$p" || in_ns ss -Htan "sport = :$p" | grep -q .; then busy=1; break; fi
    done
    [ -n "$busy" ] || { echo "$p"; return 0; }
  done
  return 1
}

# A control port nobody holds (tgtd POSIX-locks /var/run/tgtd/socket.N.lock).
free_cp() {
  local cp
  for cp in $(shuf -i 10000-32767 -n 200); do
    if [ ! -e "/var/run/tgtd/socket.$cp.lock" ] ||
      ! grep -q ":$(stat -c %i "/var/run/tgtd/socket.$cp.lock" 2>/dev/null) " /proc/locks 2>/dev/null; then
      echo "$cp"; return 0
    fi
  done
  return 1
}

kill_tgtd() { # PID CP: a clean exit if it answers, SIGKILL after 3 s
  local pid=$1 cp=$2 tid i
  if kill -0 "$pid" 2>/dev/null; then
    kill -CONT "$pid" 2>/dev/null || true
    for tid in $(timeout 3 tgtadm -C "$cp" --lld iscsi --op show --mode target 2>/dev/null |
      sed -n 's/^Target \([0-9]*\):.*/\1/p'); do
      timeout 3 tgtadm -C "$cp" --lld iscsi --op delete --mode target --tid "$tid" --force || true
    done
    timeout 3 tgtadm -C "$cp" --op delete --mode system >/dev/null 2>&1 || true
    for i in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "/var/run/tgtd/socket.$cp" "/var/run/tgtd/socket.$cp.lock"
}

adm() { timeout 10 tgtadm -C "$CP" --lld iscsi "$@"; }

start() {
  dir=$1 # global on purpose: the EXIT trap uses it
  need tgtd
  need tgtadm
  PORTALS=${TGTD_PORTALS:-127.0.0.1}
  local a
  for a in $PORTALS; do
    [ -n "${TGTD_NETNS:-}" ] || case $a in 127.* | ::1) ;; *) die "portal $a: only 127.0.0.0/8 or ::1 outside a test's own namespace (TGTD_NETNS)" ;; esac
  done
  local luns=${TGTD_LUNS:-1} size=${TGTD_LUN_SIZE_MIB:-256} iqn=${TGTD_IQN:-iqn.2024-01.org.lunbridge:private}
  local bs=${TGTD_BLOCK_SIZE:-512} thin=${TGTD_THIN:-1}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ ! -e "$dir/pid" ] || ! kill -0 "$(cat "$dir/pid")" 2>/dev/null ||
    die "a tgtd from $dir is still running (pid $(cat "$dir/pid")); stop it first"

  PORT=${TGTD_PORT:-$(free_port)} || die "no free port on $PORTALS"
  CP=${TGTD_CP:-$(free_cp)} || die "no free control port"
  PID= shm=
  cleanup() {
    [ -z "$PID" ] || kill_tgtd "$PID" "$CP"
    [ -z "$shm" ] || rm -rf "$shm"
    rm -f "$dir/port" "$dir/cp" "$dir/iqn" "$dir/addr" "$dir/pid" "$dir/shm" "$dir/lun.img"
  }
  trap 'rc=$?; if [ $rc -ne 0 ]; then echo "tgtd: start failed; tgtd log:" >&2; cat "$dir/tgtd.log" >&2 2>/dev/null || true; cleanup; fi' EXIT

  local arg="" p
  for a in $PORTALS; do arg="$arg${arg:+,}portal=$(portal "$a" "$PORT")"; done
  # tgtd must not inherit our fds beyond 0-2: make's jobserver pipes, or the socket
  # through which Swift's Foundation.Process notices that this script has exited.
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-"; fi
    done
    exec setsid bash -c 'if [ -n "$1" ]; then exec ip netns exec "$1" tgtd -f --control-port "$2" --iscsi "$3"; else exec tgtd -f --control-port "$2" --iscsi "$3"; fi' \
      tgtd "${TGTD_NETNS:-}" "$CP" "$arg" </dev/null >>"$dir/tgtd.log" 2>&1
  ) &
  PID=$!

  local i ok=
  for i in $(seq 100); do
    kill -0 "$PID" 2>/dev/null || die "tgtd exited"
    ok=1
    for a in $PORTALS; do answers "$a" "$PORT" || ok=; done
    if [ -n "$ok" ] && adm --op show --mode target >/dev/null 2>&1; then break; fi
    ok=
    sleep 0.1
  done
  [ -n "$ok" ] || die "tgtd not ready on $arg within 10 s"
  local listed wanted=""
  listed=$(adm --op show --mode portal | sed -n 's/^Portal: \(.*\),1$/\1/p' | sort | tr '\n' ' ')
  for a in $PORTALS; do wanted="$wanted$(portal "$a" "$PORT")"$'\n'; done
  wanted=$(printf '%s' "$wanted" | sort | tr '\n' ' ')
  [ "$listed" = "$wanted" ] || die "tgtd portals are '$listed', expected '$wanted'"

  if [ "$luns" = 1 ]; then
    shm=$(mktemp -d /dev/shm/lunbridge-tgtd-XXXXXX)
    if [ -n "${TGTD_BACKING_FILE:-}" ]; then
      [ -f "$TGTD_BACKING_FILE" ] || die "TGTD_BACKING_FILE $TGTD_BACKING_FILE is not a file"
      ln -s "$(cd "$(dirname "$TGTD_BACKING_FILE")" && pwd)/$(basename "$TGTD_BACKING_FILE")" "$shm/lun.img"
    else
      truncate -s "${size}M" "$shm/lun.img"
    fi
    adm --op new --mode target --tid 1 -T "$iqn"
    if [ "$bs" = 512 ]; then
      adm --op new --mode logicalunit --tid 1 --lun 1 -b "$shm/lun.img"
    else
      adm --op new --mode logicalunit --tid 1 --lun 1 -b "$shm/lun.img" --blocksize="$bs"
    fi
    [ "$thin" != 1 ] || adm --op update --mode logicalunit --tid 1 --lun 1 --params thin_provisioning=1
    adm --op bind --mode target --tid 1 -I ALL
    echo "$shm" >"$dir/shm"
    ln -sfn "$shm/lun.img" "$dir/lun.img"
  fi
  echo "$PORT" >"$dir/port"
  echo "$CP" >"$dir/cp"
  echo "$iqn" >"$dir/iqn"
  echo "$PORTALS" >"$dir/addr"
  echo "$PID" >"$dir/pid"
  trap - EXIT
  if [ "$luns" = 1 ]; then
    for a in $PORTALS; do echo "iscsi://$(portal "$a" "$PORT")/$iqn/1"; done
  fi
}

# The pid recorded in DIR, if that process still is DIR's tgtd (a pid may be reused).
running_pid() {
  local dir=$1 pid cp
  pid=$(cat "$dir/pid" 2>/dev/null) || return 1
  cp=$(cat "$dir/cp" 2>/dev/null) || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--control-port $cp " || return 1
  echo "$pid"
}

stop() {
  local dir=$1 pid cp
  [ -d "$dir" ] || die "no such directory: $dir"
  if [ -f "$dir/pid" ] && [ -f "$dir/cp" ]; then
    cp=$(cat "$dir/cp")
    if pid=$(running_pid "$dir"); then
      kill_tgtd "$pid" "$cp"
    else
      rm -f "/var/run/tgtd/socket.$cp" "/var/run/tgtd/socket.$cp.lock"
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
adm) [ $# -ge 2 ] || die "usage: $0 adm DIR ARG..."; CP=$(cat "$2/cp") || die "no tgtd in $2"; shift 2; adm "$@" ;;
kill) [ $# -eq 3 ] || die "usage: $0 kill PID CONTROL-PORT"; kill_tgtd "$2" "$3" ;;
pid) [ $# -eq 2 ] || die "usage: $0 pid DIR"; running_pid "$2" ;;
*) die "usage: $0 start DIR | stop DIR | adm DIR ARG... | kill PID CONTROL-PORT | pid DIR" ;;
esac
