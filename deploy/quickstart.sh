#!/usr/bin/env bash
# Installs dependencies, builds, and runs the main job on an embedded default: protect a demo
# disk over NBD, write to it, show the replica converge and `cdpctl status`; then the migration
# in the lab (deploy/lab/demo-cutover.sh): an unmodified Debian server with PostgreSQL and the
# agent inside it, the target VM in the PE, a drill and a cutover under pgbench and a ledger
# client, the outage the client saw, every acknowledged INSERT checked on the target.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/deploy/install-deps.sh"
bash "$here/deploy/build.sh"
bash "$here/deploy/demo.sh"
exec bash "$here/deploy/lab/demo-cutover.sh"
