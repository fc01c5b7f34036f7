#!/usr/bin/env bash
# Fuzzes the line parser briefly (issue 3): builds the `parse_line` target of
# fuzz/ with libFuzzer's coverage instrumentation and runs it for FUZZ_SECONDS
# (default 30). `cargo fuzz run parse_line` works too where cargo-fuzz is
# installed. The fuzz crate compiles only the parser's source files (not the whole
# agent), so the instrumented build is short.
#
# A crash fails the script; libFuzzer prints the input and leaves it under
# fuzz/artifacts/parse_line/ (replay: run the built parse_line binary with the file as argument).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"

# The flags cargo-fuzz passes, minus the address sanitizer (the parser is safe
# Rust; panics and overflows are what we look for). All are stable rustc flags,
# so neither nightly nor a cargo-fuzz install is needed, and the build takes
# seconds. `--target` keeps the flags off build scripts, as cargo-fuzz does.
target="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-fuzz/target}"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
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

cargo build --quiet --release --manifest-path fuzz/Cargo.toml --target "$target" --bin parse_line
mkdir -p fuzz/artifacts/parse_line
"$CARGO_TARGET_DIR/$target/release/parse_line" fuzz/corpus/parse_line \
    -artifact_prefix=fuzz/artifacts/parse_line/ -max_total_time="$seconds" -max_len=4096 \
    -print_final_stats=1
