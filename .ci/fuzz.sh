#!/usr/bin/env bash
# Fuzzes briefly in CI (issues 3 and 22): the line parser for FUZZ_SECONDS
# (default 30), the terminal renderer and the exec frame decoder for
# FUZZ_SHORT_SECONDS each (default 10). The three targets compile only the
# files they test, not the whole agent, so the instrumented build is short.
# The OTLP body conversion (otlp_json) needs the agent crate built with
# instrumentation, minutes: .ci/fuzz-long.sh runs it, with every target for
# millions of runs (not in CI). `cargo fuzz run <target>` works too where
# cargo-fuzz is installed.
#
# A crash fails the script; libFuzzer prints the input and leaves it under
# fuzz/artifacts/<target>/ (replay: run the built binary with the file as argument).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=.ci/fuzz-lib.sh
. .ci/fuzz-lib.sh

fuzz_build parse_line terminal exec_frame
fuzz_seed parse_line
fuzz_run parse_line -max_total_time="${FUZZ_SECONDS:-30}"
for target in terminal exec_frame; do
    fuzz_seed "$target"
    fuzz_run "$target" -max_total_time="${FUZZ_SHORT_SECONDS:-10}"
done
