#!/usr/bin/env bash
# Semi-booted target benchmark: PE boot-to-ready seconds over several boots, and MB/s applied
# inside the target VM next to `qemu-img convert` of the same data on the host, in one run.
# Writes the "Semi-booted target" section of bench/RESULTS.md (or --out FILE). Every VM,
# process and temp file it starts is removed on exit, also on failure.
#
# Usage: bash bench/pe.sh [--quick] [--out FILE]
#   --quick   2 boots and 128 MiB instead of 5 boots and 512 MiB, report to bench/RESULTS-quick.md
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
export CDP_BIN_DIR="${CDP_BUILD_DIR:-$ROOT/build}"
OUT="$HERE/RESULTS.md"; BOOTS=5; DATA=512
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) BOOTS=2; DATA=128; OUT="$HERE/RESULTS-quick.md" ;;
    --out) OUT="${2:?--out needs a file}"; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "pe.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
for t in qemu-system-x86_64 qemu-img nbdcopy python3; do
  command -v "$t" >/dev/null || { echo "pe.sh: missing $t; run deploy/install-deps.sh" >&2; exit 1; }
done
for b in journal-server/journal-server cdp-agent/cdp-agent replicator/replicator cdpctl/cdpctl \
         pe-boot/pe-agent; do
  [[ -x "$CDP_BIN_DIR/$b" ]] || { echo "pe.sh: $CDP_BIN_DIR/$b is not built (deploy/build.sh)" >&2; exit 1; }
done
GIT="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -z "$(cd "$ROOT" && git status --porcelain --untracked-files=no)" ]] || GIT="$GIT (+ uncommitted changes)"
exec python3 -u "$HERE/pe_bench.py" --out "$OUT" --git "$GIT" --boots "$BOOTS" --data-mib "$DATA"
