#!/usr/bin/env bash
# make demo: a private tgtd with a RAM-backed LUN on loopback, then lunbridge against it.
set -euo pipefail
LB=${1:-.build/release/lunbridge}
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d /tmp/lunbridge-demo.XXXXXX)
cleanup() { "$here/../lib/tgtd.sh" stop "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

export TGTD_IQN=${TGTD_IQN:-iqn.2026-11.org.lunbridge:demo}
export TGTD_LUN_SIZE_MIB=${TGTD_LUN_SIZE_MIB:-256}
echo "Starting a private tgtd with a ${TGTD_LUN_SIZE_MIB} MiB RAM-backed LUN on loopback..."
url=$("$here/../lib/tgtd.sh" start "$dir")
port=$(cat "$dir/port")
addr=$(cat "$dir/addr" 2>/dev/null || echo 127.0.0.1)

step lunbridge discover "$addr:$port"
"$LB" discover "$addr:$port"

step lunbridge info "$url"
"$LB" info "$url"

step lunbridge info "$url" --json
"$LB" info "$url" --json | head -n 12
echo "  ..."

step lunbridge info "iscsi://$addr:$port/$TGTD_IQN/7"
"$LB" info "iscsi://$addr:$port/$TGTD_IQN/7" 2>&1 || echo "(exit status $?, as expected: there is no LUN 7)"

echo
echo "Demo done; stopping tgtd."
