# What the bench/*.sh wrappers share; sourced, never run. Defines:
#   BENCH_HERE, BENCH_ROOT  bench/ and the repository root
#   BENCH_BUILD             the build dir: $CDP_BUILD_DIR, default build/ in the repository
#   bench_parse_args OPTIONS ARGS...
#                           parses the wrapper's arguments; OPTIONS lists the ones it takes
#                           among "quick out runs" (-h/--help always: prints the wrapper's
#                           header comment). Sets QUICK (0 or 1), RUNS (empty unless --runs N)
#                           and OUT (--out FILE; default bench/RESULTS-quick.md with --quick,
#                           else bench/RESULTS.md). An unknown argument exits 2.
#   bench_git               prints the short commit, "(+ uncommitted changes)" when tracked
#                           files differ from it
#   bench_require_root WHY  exits 1 unless root
#   bench_require_tools T...
#                           exits 1 naming the tools not on PATH
#   bench_require_binaries B...
#                           exits 1 unless each B (a path under the build dir, such as
#                           cdp-agent/cdp-agent) is built
#   bench_copy_binaries DEST B...
#                           copies each B to DEST/B (the build dir's layout, so DEST can be
#                           CDP_BIN_DIR): a run is not disturbed by others rebuilding build/
BENCH_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_ROOT="$(cd "$BENCH_HERE/.." && pwd)"
BENCH_BUILD="${CDP_BUILD_DIR:-$BENCH_ROOT/build}"
BENCH_NAME="${0##*/}"

bench_parse_args() {
  local options=" $1 "
  shift
  QUICK=0; RUNS=""; OUT=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --quick) [[ "$options" == *" quick "* ]] || bench_bad_arg "$1"; QUICK=1 ;;
      --out) [[ "$options" == *" out "* ]] || bench_bad_arg "$1"; OUT="${2:?--out needs a file}"
             shift ;;
      --runs) [[ "$options" == *" runs "* ]] || bench_bad_arg "$1"
              RUNS="${2:?--runs needs a number}"; shift ;;
      -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
                 exit 0 ;;
      *) bench_bad_arg "$1" ;;
    esac
    shift
  done
  if [[ -z "$OUT" ]]; then
    OUT="$BENCH_HERE/RESULTS.md"
    [[ $QUICK -eq 0 ]] || OUT="$BENCH_HERE/RESULTS-quick.md"
  fi
}

bench_bad_arg() {
  echo "$BENCH_NAME: unknown argument '$1'; see bash bench/$BENCH_NAME --help" >&2
  exit 2
}

bench_git() {
  local rev
  rev="$(cd "$BENCH_ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ -n "$(cd "$BENCH_ROOT" && git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    rev="$rev (+ uncommitted changes)"
  fi
  echo "$rev"
}

bench_require_root() {
  [[ $(id -u) -eq 0 ]] || { echo "$BENCH_NAME: needs root ($1)" >&2; exit 1; }
}

bench_require_tools() {
  local missing=() t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "$BENCH_NAME: missing tools: ${missing[*]}; run deploy/install-deps.sh" >&2
    exit 1
  fi
}

bench_require_binaries() {
  local b
  for b in "$@"; do
    if [[ ! -x "$BENCH_BUILD/$b" ]]; then
      echo "$BENCH_NAME: $BENCH_BUILD/$b is not built; build first (cmake --build build)" >&2
      exit 1
    fi
  done
}

bench_copy_binaries() {
  local dest="$1" b
  shift
  for b in "$@"; do
    mkdir -p "$dest/$(dirname "$b")"
    cp -p "$BENCH_BUILD/$b" "$dest/$b"
  done
}
