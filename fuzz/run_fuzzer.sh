#!/usr/bin/env bash
# Runs one libFuzzer target (built in a -DDINO_FUZZ=ON tree) for a number of seconds from its
# seed corpus, and prints one line: "<target>: <executions> executions in <s> s, ...".
#   fuzz/run_fuzzer.sh <fuzzer binary> <seconds>
# The seeds in fuzz/corpus/<target> are only read: new inputs go to a scratch folder (or to
# $FUZZ_CORPUS_OUT/<target> when set, to keep them). A crash, sanitizer report, leak, timeout
# (10 s per input) or out-of-memory (2 GiB) fails the run, and libFuzzer writes the input to
# $FUZZ_ARTIFACTS/<target>/ (default: ./fuzz-artifacts) and the log beside it; add the input to
# fuzz/corpus/<target> with the fix, so that every build tree's ctest replays it.
set -euo pipefail
binary=$1
seconds=$2
name=$(basename "$binary")
here=$(cd "$(dirname "$0")" && pwd)
seeds="$here/corpus/$name"
artifacts="${FUZZ_ARTIFACTS:-$PWD/fuzz-artifacts}/$name"
mkdir -p "$artifacts"
if [[ -n "${FUZZ_CORPUS_OUT:-}" ]]; then
  work="$FUZZ_CORPUS_OUT/$name"
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
      -artifact_prefix="$artifacts/")
if [[ -f "$here/dict/$name.dict" ]]; then args+=(-dict="$here/dict/$name.dict"); fi
# The suppressions of make asan (uninstrumented third-party code only).
export LSAN_OPTIONS="suppressions=$here/../scripts/sanitizers/lsan.supp:${LSAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
log="$artifacts/last-run.log"
status=0
"$binary" "${args[@]}" "$work" "$seeds" >"$log" 2>&1 || status=$?
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
corpus=$(ls "$work" | wc -l)
if [[ $status -ne 0 ]]; then
  tail -60 "$log" >&2
  echo "$name: FAILED (exit $status) after ${runs:-?} executions; input and log in $artifacts" >&2
  exit 1
fi
echo "$name: ${runs:-0} executions in $seconds s, $corpus new corpus inputs"
