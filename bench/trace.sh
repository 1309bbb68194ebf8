#!/usr/bin/env bash
# Trace-mode benchmark: cdp-agent --trace --freeze on a mounted ext4 (loop device) under fio
# random writes at 10 and 50 MB/s: agent CPU and RSS, freeze p50/p99, replication lag, and
# blktrace's CPU at the same load as the baseline. Writes the "Trace mode" section of
# bench/RESULTS.md (or --out FILE). Needs root. Everything it creates (processes, mount, loop
# device, tracefs instance, temp dir) is removed on exit, also on failure or Ctrl-C.
#
# Usage: bash bench/trace.sh [--quick] [--out FILE]
#   --quick   10 s per rate instead of 30 s, report to bench/RESULTS-quick.md
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_parse_args "quick out" "$@"
SECONDS_PER_RATE=30
[[ $QUICK -eq 0 ]] || SECONDS_PER_RATE=10
BINARIES=(journal-server/journal-server cdp-agent/cdp-agent cdp-agent/cdp-thaw-watchdog
          replicator/replicator cdpctl/cdpctl)
bench_require_root "loop device, mount, tracefs"
bench_require_tools fio losetup mkfs.ext4 fsfreeze python3 cmp dd
bench_require_binaries "${BINARIES[@]}"

# blktrace (the baseline) needs debugfs.
mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug 2>/dev/null || true
WORK="$(mktemp -d /tmp/cdp-trace-bench.XXXXXX)"
PIDFILE="$WORK/pids"; STATE="$WORK/state"; : >"$PIDFILE"; : >"$STATE"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n "${DRIVER:-}" ]] && kill -TERM "$DRIVER" 2>/dev/null && sleep 1
  while read -r pid; do [[ -n "$pid" ]] && kill -KILL -- "-$pid" 2>/dev/null; done <"$PIDFILE" || true
  mnt="$(sed -n 's/^mnt //p' "$STATE")"; loop="$(sed -n 's/^loop //p' "$STATE")"
  inst="$(sed -n 's/^instance //p' "$STATE")"
  pkill -9 -f "cdp-thaw-watchdog --mount $WORK" 2>/dev/null || true
  if [[ -n "$mnt" ]]; then
    fsfreeze --unfreeze "$mnt" 2>/dev/null || true
    for _ in 1 2 3 4 5; do umount "$mnt" 2>/dev/null && break; sleep 1; done
  fi
  [[ -n "$loop" ]] && losetup -d "$loop" 2>/dev/null || true
  if [[ -n "$inst" && -d /sys/kernel/tracing/instances/$inst ]]; then
    echo 0 >"/sys/kernel/tracing/instances/$inst/events/block/block_rq_complete/enable" || true
    rmdir "/sys/kernel/tracing/instances/$inst" || true
  fi
  rm -rf -- "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Private copies of the binaries: others may rebuild build/ while this runs.
bench_copy_binaries "$WORK/bin" "${BINARIES[@]}"
CDP_BIN_DIR="$WORK/bin" python3 "$BENCH_HERE/trace_bench.py" --work "$WORK" \
  --pidfile "$PIDFILE" --state-file "$STATE" --out "$OUT" --git "$(bench_git)" \
  --seconds "$SECONDS_PER_RATE" \
  ${CDP_BENCH_RATES:+--rates "$CDP_BENCH_RATES"} &
DRIVER=$!
wait "$DRIVER"
DRIVER=""
