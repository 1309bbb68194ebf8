#!/usr/bin/env bash
# Restore / folding / journal-size benchmark: `cdpctl restore` of a point in the middle of a
# 1 GiB volume with 10 % churn next to `qemu-img convert` of the same image (raw and qcow2),
# folding throughput, journal bytes per byte written; into the "Restore, folding and journal
# size" section of bench/RESULTS.md (or --out FILE). Needs root (drops the page cache).
#
# Usage: bash bench/restore.sh [--out FILE]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_parse_args "out" "$@"
bench_require_root "drops the page cache"
export CDP_BIN_DIR="$BENCH_BUILD"
exec python3 -u "$BENCH_HERE/restore_bench.py" --out "$OUT" --git "$(bench_git)"
