# shellcheck shell=bash
# The one TAP writer of lunbridge's shell harnesses (sourced, bash). A suite declares up
# front how many checks a complete run makes; every check prints "ok N - ..." or
# "not ok N - ...", and a run that stops early is padded with "not ok" lines for the
# checks it never reached, so a suite's count is the same in every run and a check that
# did not run can never count as passed.
#
#   . Tests/lib/tap.sh
#   tap_start SUITE PLAN [FILE]  "1..PLAN"; SUITE names the closing line ("vm" -> "vm checks:
#                                N passed, F failed", what Tests/scripts/test-summary.sh
#                                adds up); FILE, when given, gets a copy of every line
#   ok WHAT / notok WHAT         one check passed / failed
#   check WHAT COMMAND...        ok when COMMAND succeeds, else not ok; returns its status
#   check_output WHAT COMMAND... the same with COMMAND's output kept quiet; a failure's
#                                line ends with its last 3 lines ("not ok - WHAT: ...")
#   note TEXT                    a "# TEXT" line (diagnostics, not a check)
#   tap_finish                   pads to PLAN, closing line; status 0 when every planned
#                                check ran and passed (more checks than planned fail too)
#   finish                       tap_finish, then exit with its status
#
# Guest-side halves (checks run inside a VM and relayed by the host script) use
# `tap_start - 0`: unnumbered "ok - ..." lines, no plan and no closing line; the host
# reads them back with `tap_relay FILE [PREFIX]`, and its own plan covers them.

TAP_SUITE=-
TAP_PLAN=0
TAP_FILE=
TAP_N=0
TAP_FAILED=0

tap_say() {
  if [ -n "$TAP_FILE" ]; then echo "$*" | tee -a "$TAP_FILE"; else echo "$*"; fi
}

tap_start() {
  TAP_SUITE=$1 TAP_PLAN=$2 TAP_FILE=${3:-} TAP_N=0 TAP_FAILED=0
  [ "$TAP_SUITE" = - ] || tap_say "1..$TAP_PLAN"
}

tap_line() { # STATUS WHAT
  TAP_N=$((TAP_N + 1))
  if [ "$TAP_SUITE" = - ]; then tap_say "$1 - $2"; else tap_say "$1 $TAP_N - $2"; fi
}

ok() { tap_line ok "$*"; }
notok() { TAP_FAILED=$((TAP_FAILED + 1)); tap_line "not ok" "$*"; }
note() { tap_say "# $*"; }

check() {
  local what=$1 rc=0
  shift
  "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then ok "$what"; else notok "$what"; fi
  return "$rc"
}

check_output() {
  local what=$1 out rc=0
  shift
  out=$("$@" 2>&1) || rc=$?
  if [ "$rc" -eq 0 ]; then ok "$what"; else notok "$what: $(echo "$out" | tail -n 3 | tr '\n' ' ')"; fi
  return "$rc"
}

# Counts of the checks made so far, "PASSED FAILED" (the guest halves report them).
tap_counts() { echo "$((TAP_N - TAP_FAILED)) $TAP_FAILED"; }

# The guest half's lines of FILE as checks of this suite: "ok - X" / "not ok - X" become
# numbered checks (PREFIX before X), "#" lines pass through, anything else is a comment.
tap_relay() {
  local file=$1 prefix=${2:-} line
  [ -f "$file" ] || return 0
  while IFS= read -r line; do
    case $line in
      "ok - "*) ok "$prefix${line#ok - }" ;;
      "not ok - "*) notok "$prefix${line#not ok - }" ;;
      "#"*) tap_say "$line" ;;
      *) tap_say "# $line" ;;
    esac
  done <"$file"
}

tap_finish() {
  [ "$TAP_SUITE" = - ] && return $((TAP_FAILED > 0))
  local extra=0
  while [ "$TAP_N" -lt "$TAP_PLAN" ]; do
    notok "not run: the suite stopped before this check (see the lines above)"
  done
  if [ "$TAP_N" -gt "$TAP_PLAN" ]; then
    # More checks than planned: the plan is out of date, which is a failure of its own.
    extra=1
    TAP_FAILED=$((TAP_FAILED + 1))
    tap_say "# $TAP_SUITE: $TAP_N checks ran but the plan says $TAP_PLAN: update the plan in the suite"
  fi
  tap_say "$TAP_SUITE checks: $((TAP_N - TAP_FAILED + extra)) passed, $TAP_FAILED failed"
  [ "$TAP_FAILED" -eq 0 ]
}

finish() {
  tap_finish
  exit $?
}
