#!/usr/bin/env bash
# Installs dependencies, builds, and runs the main job on an embedded default: protect a demo
# disk over NBD, write to it, show the replica converge and `cdpctl status`; then the migration
# in the lab: a source VM and a target VM in the PE, a cutover under client load, the outage
# the client saw, every acknowledged write checked on the target.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/deploy/install-deps.sh"
bash "$here/deploy/build.sh"
bash "$here/deploy/demo.sh"
exec bash "$here/deploy/lab/demo-cutover.sh"
