#!/usr/bin/env bash
# Cutover benchmark: N consecutive cutovers in the lab under a client writing every 20 ms;
# client-measured outage p50/p95/max and a typical per-step timeline, into the "Cutover"
# section of bench/RESULTS.md (or --out FILE). Each run brings a fresh lab up and takes it down
# again, also on failure. Needs root.
#
# Usage: bash bench/cutover.sh [--runs N (default 10)] [--quick (3 runs, RESULTS-quick.md)] [--out FILE]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_parse_args "quick out runs" "$@"
[[ -n "$RUNS" ]] || { if [[ $QUICK -eq 1 ]]; then RUNS=3; else RUNS=10; fi; }
bench_require_root "the lab's namespaces"
export CDP_BIN_DIR="$BENCH_BUILD"
exec python3 -u "$BENCH_HERE/cutover_bench.py" --out "$OUT" --git "$(bench_git)" --runs "$RUNS"
