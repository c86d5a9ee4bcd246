#!/usr/bin/env bash
# The one network-namespace builder of lunbridge's tests: two "NICs" (veth pairs) between
# an initiator and a target network namespace, a private tgtd (Tests/lib/tgtd.sh) inside
# the target namespace listening on both, and the faults the tests inject.
#
#   Tests/lib/netns.sh setup TAG        # prints the two URLs, one per line
#   Tests/lib/netns.sh teardown TAG     # removes everything setup made (idempotent)
#   Tests/lib/netns.sh env TAG          # shell assignments: NS_I NS_T IF_I1 ... URL1 URL2
#   Tests/lib/netns.sh exec TAG CMD...  # runs CMD inside the initiator namespace
#
# Faults (PATH is 1 or 2; path N is NIC N: initiator 198.18.N.1 <-> target 198.18.N.2):
#   link-down TAG PATH | link-up TAG PATH        ip link set down/up (initiator side)
#   blackhole TAG PATH | unblackhole TAG PATH    nft DROP of the path's traffic, both
#                                                directions, in the initiator namespace
#   reset TAG PATH | unreset TAG PATH            nft reject with tcp reset in the target
#                                                namespace: the initiator gets an RST at once
#   conn-delete TAG PATH                         tgtadm deletes every iSCSI connection whose
#                                                initiator address is on that path
#   conns TAG                                    "sid cid address" of every connection
#   tgtd-stop TAG | tgtd-cont TAG                SIGSTOP / SIGCONT the tgtd
#   all-down TAG | all-up TAG                    both links down / up
#   limit TAG PATH RATE | unlimit TAG PATH       tc tbf on both ends of a path's veth
#
# TAG: 1-8 characters [a-z0-9], unique per run (interface names are lb<TAG>i1 etc.,
# at most 12 characters). Namespaces: lbmp-<TAG>-ini and lbmp-<TAG>-tgt. Addresses are in
# 198.18.0.0/15 and exist only inside those namespaces. State (tgtd pid, control port,
# LUN file) in /tmp/lbmp-<TAG>/. The LUN is target 1, LUN 1, RAM-backed in /dev/shm.
#
# Environment:
#   MPATH_LUN_MIB   LUN size in MiB (default 256)
#   MPATH_PORT      iSCSI port inside the target namespace (default 3260)
#   NETNS_INITIATOR "host": the initiator ends of the NICs stay in this namespace (for
#                   kernel initiators such as open-iscsi, which live there); the link and
#                   black-hole faults then act here
#
# A new fault: one case below (on and off) and, in a suite, one fault_case line.
#
# Needs root, iproute2 (ip, tc), nftables (nft) and tgt (tgtd, tgtadm).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "netns: $*" >&2; exit 1; }

IQN=iqn.2024-01.org.lunbridge:mpath

names() { # TAG -> globals
  TAG=$1
  [[ "$TAG" =~ ^[a-z0-9]{1,8}$ ]] || die "TAG must be 1-8 characters [a-z0-9], not '$TAG'"
  NS_I=lbmp-$TAG-ini
  NS_T=lbmp-$TAG-tgt
  IF_I1=lb${TAG}i1 IF_I2=lb${TAG}i2
  IF_T1=lb${TAG}t1 IF_T2=lb${TAG}t2
  ADDR_I1=198.18.1.1 ADDR_I2=198.18.2.1
  ADDR_T1=198.18.1.2 ADDR_T2=198.18.2.2
  PORT=${MPATH_PORT:-3260}
  STATE=/tmp/lbmp-$TAG
  URL1="iscsi://$ADDR_T1:$PORT/$IQN/1?iface=$IF_I1"
  URL2="iscsi://$ADDR_T2:$PORT/$IQN/1?iface=$IF_I2"
}

need() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found: install the Debian package $pkg (make deps)"
}

path_if() { # PATH -> initiator-side interface
  case $1 in 1) echo "$IF_I1" ;; 2) echo "$IF_I2" ;; *) die "PATH must be 1 or 2, not '$1'" ;; esac
}
path_tif() { case $1 in 1) echo "$IF_T1" ;; 2) echo "$IF_T2" ;; *) die "PATH must be 1 or 2" ;; esac; }
path_addr() { case $1 in 1) echo "$ADDR_I1" ;; 2) echo "$ADDR_I2" ;; *) die "PATH must be 1 or 2" ;; esac; }

cp_() { cat "$STATE/cp" 2>/dev/null || die "no tgtd state in $STATE (setup $TAG first)"; }
tgtadm_() { timeout 10 tgtadm -C "$(cp_)" --lld iscsi "$@"; }

TGTD_SH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tgtd.sh

# Runs a command where the initiator ends of the NICs are.
on_i() { if [ "${NETNS_INITIATOR:-}" = host ]; then "$@"; else ip netns exec "$NS_I" "$@"; fi; }

teardown() {
  local pid p ns
  [ ! -f "$STATE/pid" ] || "$TGTD_SH" stop "$STATE" || true
  for ns in "$NS_I" "$NS_T"; do
    ip netns list 2>/dev/null | grep -q "^$ns\b" || continue
    # Whatever still runs inside a namespace of this TAG was started by this run.
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true # takes its veth ends and nft tables with it
  done
  # A veth end left in the host namespace (setup interrupted between add and move).
  for p in "$IF_I1" "$IF_I2" "$IF_T1" "$IF_T2"; do ip link del "$p" 2>/dev/null || true; done
  rm -rf "$STATE"
}

setup() {
  need ip iproute2
  need tc iproute2
  need nft nftables
  need tgtd tgt
  need tgtadm tgt
  [ "$(id -u)" = 0 ] || die "setup needs root (network namespaces, tgtd)"
  if ip netns list | grep -q "^$NS_I\b\|^$NS_T\b"; then die "namespaces for TAG $TAG exist already; teardown $TAG first"; fi
  mkdir -p "$STATE"
  trap 'rc=$?; if [ $rc -ne 0 ]; then echo "netns: setup failed; tgtd log:" >&2; cat "$STATE/tgtd.log" >&2 2>/dev/null || true; teardown; fi' EXIT

  [ "${NETNS_INITIATOR:-}" = host ] || { ip netns add "$NS_I"; ip -n "$NS_I" link set lo up; }
  ip netns add "$NS_T"
  ip -n "$NS_T" link set lo up
  local n ifi ift
  for n in 1 2; do
    ifi=$(path_if $n)
    ift=$(path_tif $n)
    if [ "${NETNS_INITIATOR:-}" = host ]; then
      ip link add "$ifi" type veth peer name "$ift" netns "$NS_T"
    else
      ip link add "$ifi" netns "$NS_I" type veth peer name "$ift" netns "$NS_T"
    fi
    on_i ip addr add "198.18.$n.1/24" dev "$ifi"
    ip -n "$NS_T" addr add "198.18.$n.2/24" dev "$ift"
    on_i ip link set "$ifi" up
    ip -n "$NS_T" link set "$ift" up
  done
  # The target: tgtd in the target namespace on both NICs (no thin provisioning, as a
  # plain array LUN), its state in $STATE.
  TGTD_NETNS=$NS_T TGTD_PORTALS="$ADDR_T1 $ADDR_T2" TGTD_PORT=$PORT TGTD_IQN=$IQN \
    TGTD_LUN_SIZE_MIB=${MPATH_LUN_MIB:-256} TGTD_THIN=0 "$TGTD_SH" start "$STATE" >/dev/null
  local i
  for i in $(seq 50); do # the initiator's side reaches both portals
    on_i bash -c "(echo >/dev/tcp/$ADDR_T1/$PORT) && (echo >/dev/tcp/$ADDR_T2/$PORT)" 2>/dev/null && break
    [ "$i" -lt 50 ] || die "the target's portals are not reachable over the NICs"
    sleep 0.1
  done
  trap - EXIT
  echo "$URL1"
  echo "$URL2"
}

# "sid cid address" per connection, from tgtadm's
#   Session: 3
#       Connection: 0
#           Initiator: iqn...
#           IP Address: 198.18.1.1
conns() {
  tgtadm_ --op show --mode conn --tid 1 | awk '
    /^[ \t]*Session:/ { sid = $2 }
    /^[ \t]*Connection:/ { cid = $2 }
    /^[ \t]*IP Address:/ { print sid, cid, $3 }'
}

conn_delete() { # PATH: delete every connection from that path's initiator address
  local addr sid cid a n=0
  addr=$(path_addr "$1")
  while read -r sid cid a; do
    [ "$a" = "$addr" ] || continue
    tgtadm_ --op delete --mode conn --tid 1 --sid "$sid" --cid "$cid"
    n=$((n + 1))
  done < <(conns)
  [ "$n" -gt 0 ] || die "no iSCSI connection from $addr (path $1) to delete"
  echo "$n"
}

nft_i() { on_i nft "$@"; }

blackhole() { # PATH: drop everything in and out of the path's NIC (no reset, no ICMP)
  local ifn
  ifn=$(path_if "$1")
  nft_i -f - <<EOF
table inet lbbh$1 {
  chain in { type filter hook input priority -10; policy accept; iifname "$ifn" drop; }
  chain out { type filter hook output priority -10; policy accept; oifname "$ifn" drop; }
}
EOF
}
unblackhole() { nft_i delete table inet "lbbh$1" 2>/dev/null || true; }

reset() { # PATH: the target side answers every TCP segment of the path with a reset
  # (in the target namespace, so the RST crosses the wire as a target's or a switch's
  # would; a reject in the initiator's own output hook reaches no local socket)
  local ifn
  ifn=$(path_tif "$1")
  ip netns exec "$NS_T" nft -f - <<EOF
table inet lbrst$1 {
  chain in { type filter hook input priority -10; policy accept; iifname "$ifn" meta l4proto tcp reject with tcp reset; }
}
EOF
}
unreset() { ip netns exec "$NS_T" nft delete table inet "lbrst$1" 2>/dev/null || true; }

limit() { # PATH RATE: tbf on both ends (initiator side shapes writes, target side reads)
  local rate=$2
  on_i tc qdisc replace dev "$(path_if "$1")" root tbf rate "$rate" burst 64kb latency 50ms
  ip netns exec "$NS_T" tc qdisc replace dev "$(path_tif "$1")" root tbf rate "$rate" burst 64kb latency 50ms
}
unlimit() {
  on_i tc qdisc del dev "$(path_if "$1")" root 2>/dev/null || true
  ip netns exec "$NS_T" tc qdisc del dev "$(path_tif "$1")" root 2>/dev/null || true
}

tgtd_signal() {
  local pid
  pid=$("$TGTD_SH" pid "$STATE") || die "the tgtd of $TAG is not running"
  kill "-$1" "$pid"
}

cmd=${1:-}
[ $# -ge 2 ] || die "usage: $0 setup|teardown|env|exec|link-down|link-up|blackhole|unblackhole|reset|unreset|conn-delete|conns|tgtd-stop|tgtd-cont|all-down|all-up|limit|unlimit TAG [PATH] [...]"
names "$2"
shift 2
case $cmd in
setup) setup ;;
teardown) teardown ;;
env)
  for v in TAG NS_I NS_T IF_I1 IF_I2 IF_T1 IF_T2 ADDR_I1 ADDR_I2 ADDR_T1 ADDR_T2 PORT IQN STATE URL1 URL2; do
    printf '%s=%q\n' "$v" "${!v}"
  done
  ;;
exec) on_i "$@" ;;
link-down) on_i ip link set "$(path_if "${1:?PATH}")" down ;;
link-up) on_i ip link set "$(path_if "${1:?PATH}")" up ;;
all-down) on_i ip link set "$IF_I1" down; on_i ip link set "$IF_I2" down ;;
all-up) on_i ip link set "$IF_I1" up; on_i ip link set "$IF_I2" up ;;
blackhole) blackhole "${1:?PATH}" ;;
unblackhole) unblackhole "${1:?PATH}" ;;
reset) reset "${1:?PATH}" ;;
unreset) unreset "${1:?PATH}" ;;
conn-delete) conn_delete "${1:?PATH}" ;;
conns) conns ;;
tgtd-stop) tgtd_signal STOP ;;
tgtd-cont) tgtd_signal CONT ;;
limit) limit "${1:?PATH}" "${2:?RATE}" ;;
unlimit) unlimit "${1:?PATH}" ;;
*) die "unknown command '$cmd'" ;;
esac
