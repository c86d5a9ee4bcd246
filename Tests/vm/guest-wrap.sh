#!/usr/bin/env bash
# Runs INSIDE the VM (vm-run.sh passes it to `vng --exec`):
#   guest-wrap.sh RESULTDIR SCRIPT [ARGS...]
# Marks the boot as done, runs SCRIPT (cwd RESULTDIR, stdin /dev/null) with its stdout and
# stderr going to RESULTDIR/stdout and RESULTDIR/stderr, then writes SCRIPT's exit code to
# RESULTDIR/rc. RESULTDIR is the host folder shared with --rwdir; vm-run.sh streams the
# two files to the host terminal.
#
# Plain files, not pipes through tee: a daemon the script leaves running in the
# background (tgtd, lunbridge, `sleep &`) inherits the script's stdout/stderr, and with a
# pipe the reader would wait for that daemon forever. The VM powers off once this
# wrapper exits, which kills whatever the script left running.
R=$1; shift
cut -d' ' -f1 /proc/uptime >"$R/guest-uptime-at-start" 2>/dev/null
: >"$R/booted"
cd "$R" || exit 125
export VM_RESULTDIR=$R
if [ -x "$1" ]; then cmd=("$@"); else cmd=(bash "$@"); fi
"${cmd[@]}" </dev/null >"$R/stdout" 2>"$R/stderr"
rc=$?
echo "$rc" >"$R/rc"
sync
exit "$rc"
