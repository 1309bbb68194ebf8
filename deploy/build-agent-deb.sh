#!/usr/bin/env bash
# Builds the cdp-agent Debian package for customers' servers (docs/packaging.md) and prints the
# .deb's path on its last line. Its own build directory, configured as a user's build (Release,
# no test hooks) with the agent's third-party libraries bundled (CDP_AGENT_BUNDLE_LIBS); builds
# only the two agent binaries, then packages them.
#   CDP_AGENT_PACKAGE_BUILD_DIR  build-agent-package   the build directory
#   CDP_WERROR                   OFF                   warnings are errors (.ci/run sets ON)
#   CDP_JOBS                     nproc                 parallel compile jobs
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CDP_AGENT_PACKAGE_BUILD_DIR:-$here/build-agent-package}"
args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DCDP_TEST_HOOKS=OFF -DCDP_AGENT_BUNDLE_LIBS=ON
  -DCDP_WERROR="${CDP_WERROR:-OFF}")
if command -v ccache >/dev/null; then args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S "$here" -B "$build" "${args[@]}" >/dev/null
rm -f "$build"/cdp-agent_*.deb
cmake --build "$build" -j "${CDP_JOBS:-$(nproc)}" --target agent-deb >&2
debs=("$build"/cdp-agent_*_amd64.deb)
if [[ ${#debs[@]} -ne 1 || ! -f "${debs[0]}" ]]; then
  echo "build-agent-deb: expected one cdp-agent_*_amd64.deb in $build, found: ${debs[*]}" >&2
  exit 1
fi
echo "${debs[0]}"
