#!/usr/bin/env bash
# Installs dependencies, builds, and runs every test (unit + integration) with ctest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CDP_BUILD_DIR:-$here/build}"
bash "$here/deploy/install-deps.sh"
bash "$here/deploy/build.sh"
# Unit tests in parallel, then the integration tests one at a time (they move real data).
status=0
ctest --test-dir "$build" -L unit -j "$(nproc)" --output-on-failure || status=$?
ctest --test-dir "$build" -L integration --output-on-failure || status=$?
if [[ $status -ne 0 ]]; then
  echo "test-all: FAILED (see the output above)" >&2
fi
exit $status
