#!/usr/bin/env bash
# Cutover benchmark: N consecutive cutovers in the lab under a client writing every 20 ms;
# client-measured outage p50/p95/max and a typical per-step timeline, into the "Cutover"
# section of bench/RESULTS.md (or --out FILE). Each run brings a fresh lab up and takes it down
# again, also on failure. Needs root.
#
# Usage: bash bench/cutover.sh [--runs N (default 10)] [--quick (3 runs, RESULTS-quick.md)] [--out FILE]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
export CDP_BIN_DIR="${CDP_BUILD_DIR:-$ROOT/build}"
OUT="$HERE/RESULTS.md"; RUNS=10
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) RUNS="${2:?--runs needs a number}"; shift ;;
    --quick) RUNS=3; OUT="$HERE/RESULTS-quick.md" ;;
    --out) OUT="${2:?--out needs a file}"; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "cutover.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) -eq 0 ]] || { echo "cutover.sh: needs root (the lab's namespaces)" >&2; exit 1; }
GIT="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -z "$(cd "$ROOT" && git status --porcelain --untracked-files=no)" ]] || GIT="$GIT (+ uncommitted changes)"
exec python3 -u "$HERE/cutover_bench.py" --out "$OUT" --git "$GIT" --runs "$RUNS"
