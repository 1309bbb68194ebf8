#!/usr/bin/env bash
# Restore / folding / journal-size benchmark: `cdpctl restore` of a point in the middle of a
# 1 GiB volume with 10 % churn next to `qemu-img convert` of the same image (raw and qcow2),
# folding throughput, journal bytes per byte written; into the "Restore, folding and journal
# size" section of bench/RESULTS.md (or --out FILE). Needs root (drops the page cache).
#
# Usage: bash bench/restore.sh [--out FILE]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
export CDP_BIN_DIR="${CDP_BUILD_DIR:-$ROOT/build}"
OUT="$HERE/RESULTS.md"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="${2:?--out needs a file}"; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "restore.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
[[ $(id -u) -eq 0 ]] || { echo "restore.sh: needs root (drops the page cache)" >&2; exit 1; }
GIT="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -z "$(cd "$ROOT" && git status --porcelain --untracked-files=no)" ]] || GIT="$GIT (+ uncommitted changes)"
exec python3 -u "$HERE/restore_bench.py" --out "$OUT" --git "$GIT"
