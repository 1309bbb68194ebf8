#!/usr/bin/env bash
# The main job on an embedded default, on loopback, in a temp dir that is removed at the end:
#   journal-server  <-  cdp-agent (NBD export of a 1 GiB demo disk)  ->  replicator -> replica
# then a client writes through the export (qemu-io and nbdcopy), the replica converges, and
# `cdpctl status` shows captured = durable = applied; `cmp` proves the replica byte-identical.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${CDP_BUILD_DIR:-$here/build}"
work="$(mktemp -d /tmp/cdp-demo.XXXXXX)"
port="${CDP_DEMO_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
server="tcp://127.0.0.1:$port"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "demo disk: $work/source.img (1 GiB), journal in $work/journal, replica $work/replica.img"
truncate -s 1G "$work/source.img"
"$bin/journal-server/journal-server" --data-dir "$work/journal" --listen "$server" \
  2>"$work/journal-server.log" & pids+=($!)
"$bin/cdp-agent/cdp-agent" --server "$server" --volume demo --device "$work/source.img" \
  --nbd "unix:$work/demo.sock" --state-dir "$work/agent" 2>"$work/cdp-agent.log" & pids+=($!)
"$bin/replicator/replicator" --server "$server" --volume demo --target "$work/replica.img" \
  --state-dir "$work/replica" 2>"$work/replicator.log" & pids+=($!)
for _ in $(seq 100); do [[ -S "$work/demo.sock" ]] && break; sleep 0.1; done
uri="nbd+unix:///demo?socket=$work/demo.sock"

say "a client writes through the agent's NBD export (qemu-io)"
qemu-io -f raw "$uri" -c 'write -P 0xab 0 4M' -c 'write -P 0xcd 1M 64k' -c 'flush' \
  -c 'discard 2M 1M' -c 'write -z 3M 512k' -c 'flush' | grep -E '^(wrote|discard)'

say "nbdcopy of 256 MiB of random data into the export"
head -c 256M /dev/urandom >"$work/random.bin"
start=$(date +%s.%N)
nbdcopy "$work/random.bin" "$uri"
"$bin/cdpctl/cdpctl" --server "$server" status

say "cdpctl wait-synced: the replica converges"
"$bin/cdpctl/cdpctl" --server "$server" wait-synced --volume demo --timeout 300
end=$(date +%s.%N)
printf 'copy + replication of 256 MiB: %.1f s\n' "$(echo "$end - $start" | bc -l)"
"$bin/cdpctl/cdpctl" --server "$server" status

say "the replica equals the source byte for byte"
cmp "$work/source.img" "$work/replica.img" && echo "cmp: identical ($(du -h --apparent-size "$work/replica.img" | cut -f1))"
"$bin/cdpctl/cdpctl" --server "$server" status --json
