#!/usr/bin/env bash
# The migration, end to end, in the lab (docs/lab.md). Needs root. The lab is taken down at the
# end, also on failure or Ctrl-C.
#
#   bash deploy/lab/demo-cutover.sh [--source real|busybox]
#
# --source real (the default; the README's main job): `lab up --source real` brings up an
# unmodified Debian 12 server on VMware-like hardware (pvscsi, vmxnet3) with PostgreSQL on LVM and
# the cdp-agent package inside it, and the target VM waiting in the PE, synced; pgbench (TPC-B,
# 4 clients) and a ledger client (one INSERT every 20 ms, each acknowledged one recorded) run
# from cdp-client; a failover drill (deploy/lab/plans/drill-real.yaml: the target's copy boots
# PostgreSQL in the isolated namespace cdp-drill while the source keeps serving); the cutover
# (deploy/lab/plans/cutover-real.yaml: CHECKPOINT, group freeze, verify, fence, switch_root into
# the migrated Debian), its timeline and report; then from cdp-client: 192.0.2.10 is the
# target, every acknowledged INSERT is there, TPC-B's balances hold, pg_amcheck is clean, and
# the outage the ledger client saw. 5 min 36 s to 6 min 4 s here with the images cached (under
# TCG; in the faster run lab up 3 min 11 s, the drill 60 s, the cutover 64 s, 32 s of it the
# pre-verification of 6 GiB by the agent inside the busy source and by the PE; pgbench at 30
# transactions/s, 5 min 59 s unthrottled); building the Debian source and PE images the first
# time adds 1-6 min.
#
# --source busybox: the fast variant (~2 min): a busybox source VM serving 192.0.2.10:7000 from a
# disk protected by cdp-agent on the host, a client writing `PUT n` every 20 ms, the drill and
# the cutover with deploy/lab/plans/drill.yaml and cutover.yaml, every acknowledged write
# checked on the target.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${CDP_BUILD_DIR:-$here/build}"
lab="$here/deploy/lab/lab"
export CDP_BIN_DIR="$bin"
export CDP_LAB_DIR="${CDP_LAB_DIR:-/var/tmp/cdp-lab}"
source_kind=real
case "${1:-}" in
  "") ;;
  --source) source_kind="${2:-}" ;;
  --source=*) source_kind="${1#--source=}" ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "demo-cutover.sh: unknown argument '$1' (usage: demo-cutover.sh [--source real|busybox])" >&2
     exit 2 ;;
esac
if [[ "$source_kind" != real && "$source_kind" != busybox ]]; then
  echo "demo-cutover.sh: --source must be real or busybox, not '$source_kind'" >&2
  exit 2
fi
work="$(mktemp -d /tmp/cdp-demo-cutover.XXXXXX)"
client=""
bench=""
tables=""
# pgbench's rate: a busy server, not a saturated one. The TCG source's one vCPU sustains about 55
# TPC-B transactions/s with 4 clients; at 30 there is CPU left for its agent's verification and
# on the 2 host cores for the drill VM. The lab test and bench/cutover-real.sh run pgbench
# unthrottled (docs/lab.md), as this demo does with CDP_DEMO_PGBENCH_RATE=0.
rate="${CDP_DEMO_PGBENCH_RATE:-30}"
rate_args=(-R "$rate")
rate_text="$rate transactions/s"
if [[ "$rate" == 0 ]]; then rate_args=(); rate_text="unthrottled"; fi
cleanup() {
  [[ -n "$tables" ]] && kill "$tables" 2>/dev/null || true
  [[ -n "$client" ]] && kill "$client" 2>/dev/null || true
  [[ -n "$bench" ]] && kill "$bench" 2>/dev/null || true
  "$lab" down || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

pg() {  # a PostgreSQL client in cdp-client against 192.0.2.10 as cdp (password cdp)
  ip netns exec cdp-client env PGPASSWORD=cdp PGHOST=192.0.2.10 PGUSER=cdp PGDATABASE=cdp \
    PGCONNECT_TIMEOUT=5 "$@"
}
acked_count() { wc -l <"$work/acked.txt"; }

if [[ "$source_kind" == real ]]; then
  say "lab up --source real (builds the Debian source and PE images when missing: ~10 min once)"
  # lab up prints its progress ("lab: ...") and then its status JSON on stdout: the progress is
  # shown as it comes. PostgreSQL answers before the initial sync and the PE's boot preparation
  # end: a helper creates the demo's tables then (the agent captures them like any other
  # write), or once lab up has returned (a lab that was up already).
  : >"$work/up.out"
  (
    until grep -q -e "^lab: PostgreSQL answers" -e "^demo: lab up returned" "$work/up.out"; do
      sleep 1
    done
    pg psql -q -tAc "CREATE TABLE ledger (n bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
    pg pgbench -i -s 2 -q 2>&1 | tail -1 >"$work/init.txt"
  ) & tables=$!
  "$lab" up --source real | tee "$work/up.out" | grep --line-buffered "^lab:"
  echo "demo: lab up returned" >>"$work/up.out"
  rc=0
  wait "$tables" || rc=$?
  tables=""
  if ((rc != 0)); then echo "demo-cutover.sh: creating pgbench's tables failed" >&2; exit "$rc"; fi
  echo "pgbench -i -s 2, while lab up went on: $(cat "$work/init.txt")"
  echo "source service: $("$lab" probe WHO) at 192.0.2.10:7000 (the source VM's UUID)"
  echo "PostgreSQL at 192.0.2.10:5432: $(pg psql -tAc 'SELECT version()')"

  say "pgbench (TPC-B, scale 2, 4 clients, $rate_text) and a ledger client (an INSERT every 20 ms) from cdp-client"
  : >"$work/acked.txt"
  # Debian's interpreter: python3-psycopg2 is installed for it (deploy/install-deps.sh).
  ip netns exec cdp-client /usr/bin/python3 "$here/tests/integration/pg_ledger_client.py" \
    192.0.2.10 "$work/acked.txt" 0.02 & client=$!
  pg pgbench -c 4 -j 2 "${rate_args[@]}" -T 3600 -n -P 30 >"$work/pgbench.log" 2>&1 & bench=$!
  sleep 5
  echo "ledger: $(acked_count) INSERTs acknowledged so far"

  say "cdpctl drill --plan deploy/lab/plans/drill-real.yaml (the source keeps serving)"
  "$lab" exec lab -- "$bin/cdpctl/cdpctl" drill --plan "$here/deploy/lab/plans/drill-real.yaml"
  echo "192.0.2.10 is still: $("$lab" probe WHO) (the source VM's UUID)"

  say "cdpctl cutover --plan deploy/lab/plans/cutover-real.yaml"
  "$lab" exec lab -- "$bin/cdpctl/cdpctl" cutover --plan "$here/deploy/lab/plans/cutover-real.yaml"
  # The ledger client reconnects to the target: wait for its first acknowledgements there.
  before=$(acked_count)
  for _ in $(seq 120); do (( $(acked_count) >= before + 50 )) && break; sleep 1; done
  # pgbench has ended by itself: its connections broke at the outage (what it committed stays).
  kill "$client" "$bench" 2>/dev/null || true
  wait "$client" "$bench" 2>/dev/null || true
  client=""; bench=""

  say "after the cutover"
  echo "192.0.2.10 is now: $("$lab" probe WHO) (the target VM's UUID is 7a76e700-0000-4000-8000-000000000020)"
  python3 "$here/tests/integration/labtest.py" check-pg "$work/acked.txt"
  say "lab down"
  exit 0
fi

say "lab up (builds the PE and the source OS images when missing; ~1 min the first time)"
"$lab" up | tee "$work/up.json" | grep --line-buffered "^lab:"
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
