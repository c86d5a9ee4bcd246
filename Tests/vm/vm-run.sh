#!/usr/bin/env bash
# Boot the newest installed Debian kernel under QEMU (virtme-ng, TCG: no KVM here) and run
# SCRIPT [ARGS...] inside it as root. Exits with SCRIPT's exit code.
#
#   Tests/vm/vm-run.sh Tests/vm/guest-demo.sh .build/debug/lunbridge "$PWD"
#   RESULTDIR=/tmp/myrun VM_TIMEOUT=900 Tests/vm/vm-run.sh path/to/test.sh arg1 arg2
#
# The guest sees this machine's filesystem (root read-only over 9p; /etc /lib /home /opt
# /srv /usr /var /tmp are copy-on-write overlays in guest RAM, lost at power-off), so
# /work/... and installed binaries are there. Only RESULTDIR is written through to the
# host: SCRIPT's cwd is RESULTDIR and $VM_RESULTDIR names it.
#
# RESULTDIR afterwards: stdout, stderr (SCRIPT's, streamed here while it runs), rc
# (SCRIPT's exit code, written by the guest), console.log (what vng/qemu printed: the
# guest console; not reliable for the script's output), boot-seconds (vng start until
# SCRIPT started), total-seconds, kernel.
#
# Environment:
#   RESULTDIR     where results go (default: a new mktemp -d under /tmp); absolute or not
#   VM_TIMEOUT    seconds before the VM is killed (default 600); exit 124 then
#   VM_KERNEL     kernel image (default: newest /boot/vmlinuz-*-amd64)
#   VM_MEMORY     default 2G;  VM_CPUS default 2
#   VM_QUIET=1    do not stream the guest's output to this terminal
#   VNG           the vng binary (default: /usr/local/bin/vng, else vng on PATH)
#
# Exit codes: SCRIPT's own; 124 the VM timed out; 125 the harness failed or the guest
# died before SCRIPT finished (vng says 255 for a kernel panic / unexpected power-off).
set -uo pipefail

die() { echo "vm-run: $*" >&2; exit 125; }
[ $# -ge 1 ] || die "usage: vm-run.sh SCRIPT [ARGS...]"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script=$(realpath -e "$1") || die "no such script: $1"
shift

# shellcheck source=../lib/vm.sh
. "$here/../lib/vm.sh"
vm_tools || die "install it, then run again"
kernel=$VM_KERNEL_IMAGE
timeout_s=${VM_TIMEOUT:-600}

if [ -n "${RESULTDIR:-}" ]; then
  mkdir -p "$RESULTDIR" || die "cannot create RESULTDIR $RESULTDIR"
  R=$(realpath "$RESULTDIR")
else
  R=$(mktemp -d /tmp/vm-result.XXXXXX) || die "mktemp failed"
fi
rm -f "$R"/{rc,booted,stdout,stderr,console.log,boot-seconds,total-seconds,guest-uptime-at-start}
echo "$kernel" >"$R/kernel"

# The command line the guest runs (a shell inside the guest evaluates it).
exec_cmd=$(printf '%q ' "$here/guest-wrap.sh" "$R" "$script" "$@")

echo "vm-run: booting $(basename "$kernel") (TCG, ${VM_CPUS:-2} cpus, ${VM_MEMORY:-2G}), results in $R" >&2
# The guest script's cwd is set by guest-wrap.sh.
vm_start "$R/console.log" --rwdir "$R" --exec "$exec_cmd"
tpids=()
if [ "${VM_QUIET:-0}" != 1 ]; then # stream the script's output as the guest writes it
  tail -n +1 -F -s 0.2 "$R/stdout" 2>/dev/null &
  tpids+=($!)
  tail -n +1 -F -s 0.2 "$R/stderr" >&2 2>/dev/null &
  tpids+=($!)
fi

booted=""
note_boot() { # the guest wrapper touches $R/booted when the script starts
  if [ -z "$booted" ] && [ -e "$R/booted" ]; then
    booted=$(echo "$(date +%s.%N) - $VM_T0" | bc)
    printf '%.1f\n' "$booted" >"$R/boot-seconds"
    printf 'vm-run: guest up, script started after %.1f s\n' "$booted" >&2
  fi
}
vm_wait "$timeout_s" note_boot
timed_out=$VM_TIMED_OUT vng_rc=$VM_RC
[ "$timed_out" = 0 ] || echo "vm-run: TIMEOUT after ${timeout_s}s (VM_TIMEOUT): killed the VM" >&2
if [ ${#tpids[@]} -gt 0 ]; then sleep 1; # let tail print the last lines
   kill "${tpids[@]}" 2>/dev/null; wait "${tpids[@]}" 2>/dev/null; fi
total=$VM_SECONDS
printf '%.1f\n' "$total" >"$R/total-seconds"
[ -z "$booted" ] && [ -e "$R/booted" ] && printf 'unknown\n' >"$R/boot-seconds"

if [ "$timed_out" = 1 ]; then
  echo "vm-run: FAIL: VM killed after ${timeout_s}s; output so far in $R" >&2
  exit 124
fi
if [ ! -e "$R/booted" ]; then
  echo "vm-run: FAIL: the guest never started the script (vng exit $vng_rc); see $R/console.log:" >&2
  tail -20 "$R/console.log" >&2
  exit 125
fi
if [ ! -s "$R/rc" ]; then
  echo "vm-run: FAIL: the guest died before the script finished (vng exit $vng_rc;" \
    "255 = kernel panic or unexpected power-off); see $R/console.log" >&2
  exit 125
fi
rc=$(cat "$R/rc")
[ "$rc" = "$vng_rc" ] || echo "vm-run: note: vng exited $vng_rc, the guest script $rc; using the script's" >&2
printf 'vm-run: script exit %s; boot %s s, total %.1f s; results in %s\n' \
  "$rc" "$(cat "$R/boot-seconds")" "$total" "$R" >&2
exit "$rc"
