#!/usr/bin/env bash
# Run every fuzz target (or those named with -t) for a time or a number of executions, one
# after the other, one libFuzzer process at a time, and append a row per target to the results
# table in fuzz/RESULTS.md.
#
#   fuzz/run.sh 60s                  each target for 60 seconds (also 10m, 2h)
#   fuzz/run.sh 10000000             each target for 10 million executions (also 10M, 500k)
#   fuzz/run.sh -t form -t twiml 5m  only those targets
#   fuzz/run.sh --no-results 30s     do not touch RESULTS.md (a quick local check)
#   fuzz/run.sh --update-seeds 10m   then add to fuzz/seeds/<target> the few inputs of the run
#                                    that reach code the seeds do not (set-cover merge, edges)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The targets are
# built with `cargo fuzz build -s none`: release, debug assertions and overflow checks on, no
# sanitizer (no unsafe code in this repository's crates; ASan would halve the speed). Working
# corpora go to fuzz/corpus/<target> (not committed; they start from fuzz/seeds/<target>),
# crash inputs to fuzz/artifacts/<target>/, libFuzzer's output to fuzz/logs/<target>.log.
# Exit status: 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

targets=()
results=1
update_seeds=0
limit=""
while [ $# -gt 0 ]; do
  case "$1" in
    -t) targets+=("$2"); shift 2 ;;
    --no-results) results=0; shift ;;
    --update-seeds) update_seeds=1; shift ;;
    -h|--help) usage ;;
    *) [ -z "$limit" ] || usage; limit="$1"; shift ;;
  esac
done
[ -n "$limit" ] || usage
if [ ${#targets[@]} -eq 0 ]; then
  targets=(form signature lambda_event lambda_fields payload twiml stored_json sqlite_rows)
fi

case "$limit" in
  *s) arg="-max_total_time=${limit%s}" ;;
  *m) arg="-max_total_time=$(( ${limit%m} * 60 ))" ;;
  *h) arg="-max_total_time=$(( ${limit%h} * 3600 ))" ;;
  *M) arg="-runs=$(( ${limit%M} * 1000000 ))" ;;
  *k) arg="-runs=$(( ${limit%k} * 1000 ))" ;;
  *[0-9]) arg="-runs=$limit" ;;
  *) usage ;;
esac

echo "==> cargo +nightly fuzz build -s none"
cargo +nightly fuzz build -s none
bin=fuzz/target/x86_64-unknown-linux-gnu/release
commit=${FUZZ_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
dirty=$(git status --porcelain -- shared functions fuzz/bodies 2>/dev/null | grep -q . && echo "+changes" || true)

# The sqlite_rows target's database: in memory when there is a tmpfs.
shm=/dev/shm; [ -d "$shm" ] && [ -w "$shm" ] || shm="${TMPDIR:-/tmp}"
FUZZ_SQLITE_DIR=$(mktemp -d "$shm/fuzz-sqlite.XXXXXX")
export FUZZ_SQLITE_DIR
trap 'rm -rf "$FUZZ_SQLITE_DIR"' EXIT

# sqlite_rows hands every store call to the database thread and waits for the answer: with
# both threads on one CPU that is a context switch, across two a wake-up of the other CPU
# (about 1.5 times the executions a second pinned, on the 2-vCPU machine). Its threads
# inherit the mask.
pin=()
if command -v taskset >/dev/null; then
  cpus=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)
  pin=(taskset -c "${cpus##*[,-]}")
fi

mkdir -p fuzz/logs
rows=()
failed=0
for t in "${targets[@]}"; do
  [ -x "$bin/$t" ] || { echo "no fuzz target $t" >&2; exit 2; }
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  log="fuzz/logs/$t.log"
  echo "==> $t ($arg)"
  start=$(date +%s)
  date_utc=$(date -u +%Y-%m-%dT%H:%MZ)
  status=0
  run=("$bin/$t")
  if [ "$t" = sqlite_rows ]; then run=("${pin[@]}" "$bin/$t"); fi
  "${run[@]}" "fuzz/corpus/$t" "fuzz/seeds/$t" "$arg" \
    -dict="fuzz/dict/$t.dict" -artifact_prefix="fuzz/artifacts/$t/" \
    -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(( $(find "fuzz/artifacts/$t" -type f | wc -l) - before ))
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes="? (exit $status)"; fi
  [ "$crashes" = 0 ] || failed=1
  printf '    %s executions, %s crashes, %ss\n' "${execs:-?}" "$crashes" "$secs"
  [ "$crashes" = 0 ] || grep -m1 -A3 -E "panicked at|ERROR: libFuzzer" "$log" | sed 's/^/    /' || true
  dur=$(printf '%dh%02dm%02ds' $((secs / 3600)) $((secs % 3600 / 60)) $((secs % 60)))
  rows+=("| $t | ${execs:-?} | $crashes | $date_utc | $dur | \`$limit\` | $commit$dirty |")
  if [ "$update_seeds" = 1 ] && [ "$crashes" = 0 ]; then
    n=$(ls "fuzz/seeds/$t" | wc -l)
    "$bin/$t" -set_cover_merge=1 -use_counters=0 "fuzz/seeds/$t" "fuzz/corpus/$t" \
      >"fuzz/logs/$t.merge.log" 2>&1
    echo "    seeds: $n -> $(ls "fuzz/seeds/$t" | wc -l) files"
  fi
done

if [ "$results" = 1 ]; then
  results_md=fuzz/RESULTS.md
  end='<!-- run.sh appends rows above this line -->'
  if ! grep -qF "$end" "$results_md" 2>/dev/null; then
    {
      echo
      echo "| target | executions | crashes | date (UTC) | duration | limit | commit |"
      echo "|---|---:|---:|---|---:|---|---|"
      echo "$end"
    } >>"$results_md"
  fi
  tmp=$(mktemp)
  awk -v end="$end" -v rows="$(printf '%s\n' "${rows[@]}")" \
    '$0 == end { printf "%s\n", rows } { print }' "$results_md" >"$tmp"
  cat "$tmp" >"$results_md"
  rm -f "$tmp"
  echo "==> results appended to $results_md"
fi
exit "$failed"
