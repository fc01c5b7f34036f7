#!/usr/bin/env bash
# Fuzzes every target of fuzz/ for a given number of runs (issue 22), not in CI:
#
#     .ci/fuzz-long.sh [RUNS] [TARGET...]
#
# RUNS defaults to 10000000 (libFuzzer's -runs), the targets to all four:
# parse_line, terminal, exec_frame and otlp_json (the last builds the agent
# crate with instrumentation: minutes). Each is seeded (.ci/fuzz-lib.sh), run
# in one process, and its log kept in fuzz/logs/<target>.log; the end prints
# libFuzzer's final figures for each: runs, time, exec/s, coverage, corpus,
# slowest input, peak RSS. A crash stops the script; libFuzzer leaves the input
# under fuzz/artifacts/<target>/. Long: run it under `nice -n 19` on a shared
# machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=.ci/fuzz-lib.sh
. .ci/fuzz-lib.sh

runs="${1:-10000000}"
if [ "$#" -gt 0 ]; then shift; fi
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(parse_line terminal exec_frame otlp_json)
fi

fuzz_build "${targets[@]}"
mkdir -p fuzz/logs
for target in "${targets[@]}"; do
    fuzz_seed "$target"
    echo "== $target: $runs runs"
    if ! fuzz_run "$target" -runs="$runs" >"fuzz/logs/$target.log" 2>&1; then
        tail -n 40 "fuzz/logs/$target.log"
        echo "== $target failed: see fuzz/logs/$target.log and fuzz/artifacts/$target/" >&2
        exit 1
    fi
done

echo "== figures"
for target in "${targets[@]}"; do
    log="fuzz/logs/$target.log"
    # The last status line (coverage, features, corpus) and the final stats.
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)"
    secs="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log")"
    printf '%-11s %s  time: %s s\n' "$target" "$done_line" "$secs"
    grep '^stat::' "$log" | sed 's/^/            /'
done
