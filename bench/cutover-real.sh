#!/usr/bin/env bash
# Cutover benchmark of the real source: N consecutive cutovers of the lab's Debian server
# (deploy/lab/plans/cutover-real.yaml) under pgbench (TPC-B, 4 clients) and a ledger client
# inserting every 20 ms; client-measured outage p50/p95/max, acknowledged INSERTs lost and a
# typical per-step timeline, into the "Cutover of the real source" section of bench/RESULTS.md
# (or --out FILE). Each run brings a fresh `lab up --source real` up (about 4 min with the
# images cached) and takes it down again, also on failure. Needs root.
#
# Usage: bash bench/cutover-real.sh [--runs N (default 10)] [--quick (3 runs, RESULTS-quick.md)] [--out FILE]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_parse_args "quick out runs" "$@"
[[ -n "$RUNS" ]] || { if [[ $QUICK -eq 1 ]]; then RUNS=3; else RUNS=10; fi; }
bench_require_root "the lab's namespaces"
export CDP_BIN_DIR="$BENCH_BUILD"
exec python3 -u "$BENCH_HERE/cutover_bench.py" --out "$OUT" --git "$(bench_git)" --runs "$RUNS" \
  --source real
