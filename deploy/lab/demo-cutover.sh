#!/usr/bin/env bash
# The migration, end to end, in the lab (docs/lab.md): bring the lab up (a source VM serving
# 192.0.2.10:7000 from a disk protected by cdp-agent, the target VM waiting in the PE, synced),
# start a client in cdp-client that writes `PUT n` every 20 ms, run a failover drill with
# deploy/lab/plans/drill.yaml (the target's copy boots in the isolated namespace cdp-drill and
# answers there while the source keeps serving and replication goes on), cut over with
# deploy/lab/plans/cutover.yaml (the timeline and the report), then show that 192.0.2.10 is now
# the target, that every acknowledged write is there, and the outage the client measured.
# The lab is taken down at the end, also on failure or Ctrl-C. Needs root.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${CDP_BUILD_DIR:-$here/build}"
lab="$here/deploy/lab/lab"
export CDP_BIN_DIR="$bin"
export CDP_LAB_DIR="${CDP_LAB_DIR:-/var/tmp/cdp-lab}"
work="$(mktemp -d /tmp/cdp-demo-cutover.XXXXXX)"
client=""
cleanup() {
  [[ -n "$client" ]] && kill "$client" 2>/dev/null || true
  "$lab" down || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "lab up (builds the PE and the source OS images when missing; ~1 min the first time)"
"$lab" up >"$work/up.json"
echo "source service: $("$lab" probe WHO) at 192.0.2.10:7000 (the source VM's UUID)"

say "a client in cdp-client writes PUT n every 20 ms"
ip netns exec cdp-client python3 "$here/tests/integration/lab_client.py" 192.0.2.10 7000 \
  "$work/acked.txt" 0.02 & client=$!
sleep 3

say "cdpctl drill --plan deploy/lab/plans/drill.yaml (the source keeps serving)"
"$lab" exec lab -- "$bin/cdpctl/cdpctl" drill --plan "$here/deploy/lab/plans/drill.yaml"
echo "192.0.2.10 is still: $("$lab" probe WHO) (the source VM's UUID)"

say "cdpctl cutover --plan deploy/lab/plans/cutover.yaml"
"$lab" exec lab -- "$bin/cdpctl/cdpctl" cutover --plan "$here/deploy/lab/plans/cutover.yaml"
sleep 3
kill "$client"; wait "$client" 2>/dev/null || true; client=""

say "after the cutover"
echo "192.0.2.10 is now: $("$lab" probe WHO) (the target VM's UUID is 7a76e700-0000-4000-8000-000000000020)"
python3 "$here/tests/integration/labtest.py" check-acked "$work/acked.txt"
say "lab down"
