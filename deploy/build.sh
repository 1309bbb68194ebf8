#!/usr/bin/env bash
# Configures and builds everything into build/ (or $CDP_BUILD_DIR). Idempotent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CDP_BUILD_DIR:-$here/build}"
# Warnings are errors under CI (CI=true) or with CDP_WERROR=ON; a user's build only warns.
werror="${CDP_WERROR:-$([[ -n "${CI:-}" ]] && echo ON || echo OFF)}"
cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${CDP_BUILD_TYPE:-RelWithDebInfo}" \
  -DCDP_WERROR="$werror" >/dev/null
cmake --build "$build" -j "${CDP_JOBS:-$(nproc)}"
