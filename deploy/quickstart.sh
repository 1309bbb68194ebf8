#!/usr/bin/env bash
# Installs dependencies, builds, and runs the main job on an embedded default: protect a demo
# disk over NBD, write to it, show the replica converge and `cdpctl status`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/deploy/install-deps.sh"
bash "$here/deploy/build.sh"
exec bash "$here/deploy/demo.sh"
