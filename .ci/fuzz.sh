#!/usr/bin/env bash
# Fuzzes the line parser briefly (issue 3): installs cargo-fuzz when missing, then
# runs the `parse_line` target of fuzz/ for FUZZ_SECONDS (default 30).
#
# cargo fuzz needs nightly flags (-Zsanitizer, sancov passes); RUSTC_BOOTSTRAP=1
# lets the stable toolchain accept them. The fuzz crate compiles only the parser's
# source files (not the whole agent), so the instrumented build is short; the
# cargo-fuzz install is the longest step on a fresh machine.
#
# A crash fails the script; libFuzzer prints the input and leaves it under
# fuzz/artifacts/parse_line/ (replay: cargo fuzz run parse_line <file>).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi

export RUSTC_BOOTSTRAP=1
# Its own target dir, so a CARGO_TARGET_DIR shared with the main build is not
# filled with instrumented artefacts.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-fuzz/target}"
mkdir -p fuzz/corpus/parse_line
# Seed the corpus with the real tmux capture's kinds of lines.
printf '%s' '{"level":30,"time":1795388381727,"pid":3846,"hostname":"refly-vm","msg":"x"}' \
    > fuzz/corpus/parse_line/seed-pino
printf '%s' '{"level":30,"time":1795388381732,"msg":"written in two parts{"level":30,"time":1}' \
    > fuzz/corpus/parse_line/seed-interleaved
printf '%s' 'time=2026-11-21T10:00:00+02:00 level=WARN msg="disk \"low\"" trace_id=ab' \
    > fuzz/corpus/parse_line/seed-logfmt
printf '%s' '[Nest] 3846  - 11/22/2026, 10:00:00 PM     LOG [NestFactory] Starting' \
    > fuzz/corpus/parse_line/seed-nest
printf '%s' '{"log":{"level":"warn"},"@timestamp":"2026-11-21T10:00:00.123Z","traceId":"a\u00e9"}' \
    > fuzz/corpus/parse_line/seed-ecs

cargo fuzz run parse_line -- -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
