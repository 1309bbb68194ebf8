#!/usr/bin/env bash
# Data-path benchmark: nbdcopy throughput through cdp-agent + journal-server + replicator
# against qemu-nbd, replication lag at a steady paced load, and the agent's CPU and RSS.
# Everything runs on loopback in a temp dir under /tmp; every process and file it creates is
# removed on exit, also on failure or Ctrl-C.
#
# Usage: bash bench/run.sh [--quick] [--out FILE]
#   --quick     smoke check: 64 MiB copies and one 10 s lag run instead of three of 30 s
#               (writes bench/RESULTS-quick.md unless --out is given, so the full results are
#               not overwritten)
#   --out FILE  where to write the report (default bench/RESULTS.md)
# Environment: CDP_BUILD_DIR (default: build/ next to bench/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_parse_args "quick out" "$@"
QUICK_ARG=()
[[ $QUICK -eq 0 ]] || QUICK_ARG=(--quick)
BINARIES=(journal-server/journal-server cdp-agent/cdp-agent replicator/replicator cdpctl/cdpctl)
bench_require_tools nbdcopy qemu-nbd python3 cmp sync df
bench_require_binaries "${BINARIES[@]}"

WORK="$(mktemp -d /tmp/cdp-bench.XXXXXX)"
PIDFILE="$WORK/pids"
: >"$PIDFILE"
BENCH_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [[ -n "$BENCH_PID" ]]; then
    # The python driver first: on SIGTERM it SIGKILLs the daemons it started and exits.
    if kill -0 "$BENCH_PID" 2>/dev/null; then
      kill -TERM "$BENCH_PID" 2>/dev/null || true
      for _ in 1 2 3 4 5 6 7 8 9 10; do
        kill -0 "$BENCH_PID" 2>/dev/null || break
        sleep 0.5
      done
    fi
    # Its process group (it runs under setsid, so the group id is its pid): short-lived
    # clients still running (nbdcopy, cdpctl, cmp) and the driver itself if it hung.
    kill -KILL -- "-$BENCH_PID" 2>/dev/null || true
    wait "$BENCH_PID" 2>/dev/null || true
  fi
  if [[ -f "$PIDFILE" ]]; then
    # Daemons each lead their own session; the file lists those not yet reaped.
    while read -r pid; do
      [[ -n "$pid" ]] || continue
      kill -KILL -- "-$pid" 2>/dev/null || true
    done <"$PIDFILE"
  fi
  rm -rf -- "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Private copies of the binaries: others may rebuild build/ while this runs.
bench_copy_binaries "$WORK/bin" "${BINARIES[@]}"
GIT="$(bench_git)"
BIN_TIMES="$(for b in "${BINARIES[@]}"; do
  printf '%s %s; ' "${b#*/}" "$(date -u -r "$WORK/bin/$b" +%Y-%m-%dT%H:%M:%SZ)"; done)"
BUILD_TYPE="$(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$BENCH_BUILD/CMakeCache.txt" 2>/dev/null ||
  true)"
[[ -n "$BUILD_TYPE" ]] || BUILD_TYPE="unset (CMakeLists.txt defaults it to RelWithDebInfo: -O2 -g)"

echo "run.sh: work dir $WORK, report $OUT, load average $(cut -d' ' -f1-3 /proc/loadavg)"
CDP_BIN_DIR="$WORK/bin" setsid python3 "$BENCH_HERE/bench.py" --work "$WORK" \
  --pidfile "$PIDFILE" --out "$OUT" --git "$GIT" --build-dir "$BENCH_BUILD" \
  --build-type "$BUILD_TYPE" --bin-times "${BIN_TIMES%; }" "${QUICK_ARG[@]}" &
BENCH_PID=$!
wait "$BENCH_PID"
