#!/usr/bin/env bash
# Semi-booted target benchmark: PE boot-to-ready seconds over several boots, and MB/s applied
# inside the target VM next to `qemu-img convert` of the same data on the host, in one run.
# Writes the "Semi-booted target" section of bench/RESULTS.md (or --out FILE). Every VM,
# process and temp file it starts is removed on exit, also on failure.
#
# Usage: bash bench/pe.sh [--quick] [--out FILE]
#   --quick   2 boots and 128 MiB instead of 5 boots and 512 MiB, report to bench/RESULTS-quick.md
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_parse_args "quick out" "$@"
BOOTS=5; DATA=512
[[ $QUICK -eq 0 ]] || { BOOTS=2; DATA=128; }
bench_require_tools qemu-system-x86_64 qemu-img nbdcopy python3
bench_require_binaries journal-server/journal-server cdp-agent/cdp-agent replicator/replicator \
  cdpctl/cdpctl pe-boot/pe-agent
export CDP_BIN_DIR="$BENCH_BUILD"
exec python3 -u "$BENCH_HERE/pe_bench.py" --out "$OUT" --git "$(bench_git)" --boots "$BOOTS" \
  --data-mib "$DATA"
