#!/usr/bin/env bash
# Agent overhead inside the real source: pgbench's TPS with and without cdp-agent@lab in the lab's
# Debian server, and the agent's CPU and memory meanwhile (bench/agent_overhead_bench.py). Writes
# the "agent-overhead" section of bench/RESULTS.md (or --out FILE). Brings a fresh
# `lab up --source real` up (about 4 min with the images cached) and takes it down, also on
# failure. Needs root.
#
# Usage: bash bench/agent-overhead.sh [--quick (20 s runs, RESULTS-quick.md)] [--out FILE]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_parse_args "quick out" "$@"
SECONDS_PER_RUN=60
[[ $QUICK -eq 0 ]] || SECONDS_PER_RUN=20
bench_require_root "the lab's namespaces"
export CDP_BIN_DIR="$BENCH_BUILD"
exec python3 -u "$BENCH_HERE/agent_overhead_bench.py" --out "$OUT" --git "$(bench_git)" \
  --seconds "$SECONDS_PER_RUN"
