#!/usr/bin/env bash
# Configures and builds everything into build/ (or $CDP_BUILD_DIR): the developers' and the
# tests' build, which deploy/quickstart.sh, deploy/test-all.sh and .ci/run share. Its
# configuration depends only on the variables below, never on who calls it or on CI, so the
# second of two calls rebuilds nothing (.ci/run checks that).
#   CDP_BUILD_TYPE  RelWithDebInfo  CMAKE_BUILD_TYPE
#   CDP_WERROR      OFF             warnings are errors (.ci/run and developers set ON)
#   CDP_TEST_HOOKS  ON              test-only hooks the tests need (docs/testing.md)
#   CDP_CXX         cmake's choice  the C++ compiler of a new build directory, e.g. clang++-16
#   CDP_JOBS        nproc           parallel compile jobs
# A user's own build (cmake -S . -B b -DCMAKE_BUILD_TYPE=Release) has neither -Werror nor hooks;
# quickstart and test-all (the README's two commands) share build/ without -Werror, so a newer
# compiler's new warning never stops a user.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CDP_BUILD_DIR:-$here/build}"
args=(-G Ninja -DCMAKE_BUILD_TYPE="${CDP_BUILD_TYPE:-RelWithDebInfo}"
  -DCDP_WERROR="${CDP_WERROR:-OFF}" -DCDP_TEST_HOOKS="${CDP_TEST_HOOKS:-ON}")
if [[ -n "${CDP_CXX:-}" ]]; then args+=(-DCMAKE_CXX_COMPILER="$CDP_CXX"); fi
cmake -S "$here" -B "$build" "${args[@]}" >/dev/null
if ! cmake --build "$build" -j "${CDP_JOBS:-$(nproc)}"; then
  echo "build: building $build failed (above)." >&2
  if [[ "${CDP_WERROR:-OFF}" == ON ]]; then
    echo "build: warnings are errors here (CDP_WERROR=ON); if the error is a warning of a" \
      "newer compiler than deploy/install-deps.sh installs, CDP_WERROR=OFF builds anyway." >&2
  fi
  exit 1
fi
