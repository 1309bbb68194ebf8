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

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BUILD="${CDP_BUILD_DIR:-$ROOT/build}"
SECONDS_PER_RATE=30
OUT="$HERE/RESULTS.md"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) SECONDS_PER_RATE=10; OUT="$HERE/RESULTS-quick.md" ;;
    --out) OUT="${2:?--out needs a file}"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "trace.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) -eq 0 ]] || { echo "trace.sh: needs root (loop device, mount, tracefs)" >&2; exit 1; }
for t in fio losetup mkfs.ext4 fsfreeze python3 cmp dd; do
  command -v "$t" >/dev/null || { echo "trace.sh: missing $t; run deploy/install-deps.sh" >&2; exit 1; }
done
for b in journal-server/journal-server cdp-agent/cdp-agent cdp-agent/cdp-thaw-watchdog \
         replicator/replicator cdpctl/cdpctl; do
  [[ -x "$BUILD/$b" ]] || { echo "trace.sh: $BUILD/$b is not built" >&2; exit 1; }
done

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

mkdir -p "$WORK/bin"
for b in journal-server/journal-server cdp-agent/cdp-agent cdp-agent/cdp-thaw-watchdog \
         replicator/replicator cdpctl/cdpctl; do cp -p "$BUILD/$b" "$WORK/bin/"; done
GIT="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -z "$(cd "$ROOT" && git status --porcelain --untracked-files=no)" ]] || GIT="$GIT (+ uncommitted changes)"
python3 "$HERE/trace_bench.py" --work "$WORK" --bin-dir "$WORK/bin" --pidfile "$PIDFILE" \
  --state-file "$STATE" --out "$OUT" --git "$GIT" --seconds "$SECONDS_PER_RATE" \
  ${CDP_BENCH_RATES:+--rates "$CDP_BENCH_RATES"} &
DRIVER=$!
wait "$DRIVER"
DRIVER=""
