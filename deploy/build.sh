#!/usr/bin/env bash
# Configures and builds everything into build/ (or $CDP_BUILD_DIR). Idempotent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CDP_BUILD_DIR:-$here/build}"
cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${CDP_BUILD_TYPE:-RelWithDebInfo}" >/dev/null
cmake --build "$build" -j "${CDP_JOBS:-$(nproc)}"
