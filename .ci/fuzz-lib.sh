# Sourced by .ci/fuzz.sh (CI, a few seconds a target) and .ci/fuzz-long.sh (a
# given number of runs a target): builds the fuzz targets of fuzz/ with
# libFuzzer's coverage instrumentation, seeds their corpora and runs them. Run
# from the repository's root.
#
# The flags cargo-fuzz passes, minus the address sanitizer (the code fuzzed is
# safe Rust; panics and overflows are what we look for). All are stable rustc
# flags, so neither nightly nor a cargo-fuzz install is needed. `--target` keeps
# the flags off build scripts and proc macros, as cargo-fuzz does.
# shellcheck shell=bash

fuzz_host="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-fuzz/target}"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"

# Builds the targets named. otlp_json needs the agent crate (feature `agent`):
# minutes, not seconds, so CI does not build it.
fuzz_build() {
    local bins=() features=() t
    for t in "$@"; do
        bins+=(--bin "$t")
        if [ "$t" = otlp_json ]; then features=(--features agent); fi
    done
    cargo build --quiet --release --manifest-path fuzz/Cargo.toml --target "$fuzz_host" \
        "${features[@]}" "${bins[@]}"
}

# The repository's fixtures, and the shared ones beside the checkout where
# they exist.
fuzz_fixture_dirs() {
    local d
    for d in tests/fixtures ../shared/fixtures; do
        if [ -d "$d" ]; then echo "$d"; fi
    done
}

# One exec socket frame: a 4-byte big-endian length, then the JSON.
fuzz_frame() {
    local n
    n="$(printf '%s' "$1" | wc -c)"
    # shellcheck disable=SC2059 # the format is the length's bytes, built here
    printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((n >> 24 & 255)) $((n >> 16 & 255)) \
        $((n >> 8 & 255)) $((n & 255)))"
    printf '%s' "$1"
}

# Writes the seed corpus of target $1 into fuzz/corpus/$1 (kept between runs).
fuzz_seed() {
    local dir="fuzz/corpus/$1" d
    mkdir -p "$dir"
    case "$1" in
    parse_line)
        # The real tmux capture's kinds of lines.
        printf '%s' '{"level":30,"time":1795388381727,"pid":3846,"hostname":"refly-vm","msg":"x"}' \
            >"$dir/seed-pino"
        printf '%s' '{"level":30,"time":1795388381732,"msg":"written in two parts{"level":30,"time":1}' \
            >"$dir/seed-interleaved"
        printf '%s' 'time=2026-11-21T10:00:00+02:00 level=WARN msg="disk \"low\"" trace_id=ab' \
            >"$dir/seed-logfmt"
        printf '%s' '[Nest] 3846  - 11/22/2026, 10:00:00 PM     LOG [NestFactory] Starting' \
            >"$dir/seed-nest"
        printf '%s' '{"log":{"level":"warn"},"@timestamp":"2026-11-21T10:00:00.123Z","traceId":"a\u00e9"}' \
            >"$dir/seed-ecs"
        ;;
    terminal)
        # Each line of the tmux captures, as the tailer hands them (`\r` kept).
        for d in $(fuzz_fixture_dirs); do
            for f in "$d"/tmux/*.log; do
                [ -f "$f" ] || continue
                awk -v out="$dir/seed-$(basename "$(dirname "$d")")-$(basename "$f" .log)" \
                    '{ f = sprintf("%s-%03d", out, NR); printf "%s", $0 > f; close(f) }' "$f"
            done
        done
        printf 'downloading  10%%\rdownloading  55%%\rdownloading 100%%\r' >"$dir/seed-progress"
        printf 'abc\b\bX\x1b[K tail\x1b[2D!' >"$dir/seed-backspace-erase"
        printf '\x1b]0;title\x07\x1b[1;31mred\x1b[0m \x1b[?2004h\x1bP1\x24r\x1b\\ \xc2\x9b5G\xc2\x9dx\xc2\x9c end' \
            >"$dir/seed-sequences"
        printf 'ab\x1b7cd\x1b8X\x1b[3@\x1b[2P\x1b[5X\x1b[1K\x1b[10Gz\x1b(B\x00\x7f\xff' >"$dir/seed-edits"
        printf '$ \x1b]9477;wisp;run=0123456789abcdef0123456789abcdef\x07{"level":30}\x1b]9477;wisp;end\x1b\\next\r' \
            >"$dir/seed-mark"
        ;;
    exec_frame)
        # The first byte picks how many bytes each read returns (0: all).
        local hello='{"type":"hello","version":1,"job":"build","labels":{"iter":"3"},"argv":["make","-j2"],"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","started_ms":5,"git_head":"abc"}'
        local lines='{"type":"lines","seq":1,"lines":[{"stream":"stdout","text":"a\u0000b \u00e9","time_ns":7},{"stream":"stderr","text":"","time_ns":-1}]}'
        local end='{"type":"end","exit":null,"ended_ms":9}'
        {
            printf '\x00'
            fuzz_frame "$hello"
            fuzz_frame "$lines"
            fuzz_frame "$end"
        } >"$dir/seed-client-run"
        {
            printf '\x03'
            fuzz_frame '{"type":"welcome","acked":2,"complete":false}'
            fuzz_frame '{"type":"acked","seq":3}'
            fuzz_frame '{"type":"done"}'
            fuzz_frame '{"type":"refused","reason":"busy"}'
        } >"$dir/seed-daemon"
        { printf '\x01'; fuzz_frame "$hello" | head -c 40; } >"$dir/seed-cut"
        printf '\x00\x00\x10\x00\x01{}' >"$dir/seed-too-big"
        ;;
    otlp_json)
        # The first byte picks the signal: 0 traces, 1 metrics, 2 logs (JSON);
        # 0xc0..0xc2 the same as protobuf.
        local res='"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web"}},{"key":"wisp.run.id","value":{"stringValue":"4bf92f3577b34da6a3ce929d0e0e4736"}},{"key":"wisp.run.name","value":{"stringValue":"build"}},{"key":"wisp.run.labels","value":{"stringValue":"iter,task"}},{"key":"iter","value":{"stringValue":"3"}}]}'
        printf '\x00{"resourceSpans":[{%s,"scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"","name":"op","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2","status":{"code":1},"events":[{"name":"e","timeUnixNano":"1"}],"links":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}]}]}' \
            "$res" >"$dir/seed-traces"
        printf '\x01{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"vm"}}]},"scopeMetrics":[{"metrics":[{"name":"c","unit":"1","sum":{"aggregationTemporality":1,"isMonotonic":true,"dataPoints":[{"asInt":"5","startTimeUnixNano":"1","timeUnixNano":"2"}]}},{"name":"g","gauge":{"dataPoints":[{"asDouble":0.5,"attributes":[{"key":"k","value":{"doubleValue":1.5}}]}]}},{"name":"h","histogram":{"dataPoints":[{"count":"3","sum":2.5,"bucketCounts":["1","2"],"explicitBounds":[1.0]}]}}]}]}]}' \
            >"$dir/seed-metrics"
        printf '\x02{"resourceLogs":[{%s,"scopeLogs":[{"scope":{"name":"my.library"},"logRecords":[{"timeUnixNano":"1544712660300000000","observedTimeUnixNano":"1544712660300000000","severityNumber":10,"severityText":"Information","traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","body":{"stringValue":"Example log record"},"attributes":[{"key":"b","value":{"boolValue":true}},{"key":"i","value":{"intValue":"10"}},{"key":"d","value":{"doubleValue":637.704}}]},{"severityText":"err","body":{"kvlistValue":{"values":[{"key":"msg","value":{"stringValue":"db down"}},{"key":"raw","value":{"bytesValue":"AAEC"}},{"key":"list","value":{"arrayValue":{"values":[{"intValue":"3"},{}]}}}]}}}]}]}]}' \
            "$res" >"$dir/seed-logs"
        printf '\x02{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"a\\u001b[2Jb"}}]},"scopeLogs":[{"logRecords":[{}]}]}]}' \
            >"$dir/seed-logs-control"
        # A logs request in protobuf: one record whose body is the string "hi".
        printf '\xc2\x0a\x0a\x12\x08\x12\x06\x2a\x04\x0a\x02hi' >"$dir/seed-logs-protobuf"
        ;;
    esac
}

# How each target is run: the longest input, and the dictionary if it has one.
# The terminal renderer gets long lines, on which work that is not linear in the
# line's length exceeds the target's CPU-time budget. `-timeout` (wall time,
# seconds per input) only catches hangs: under `nice` on a busy machine a 20 ms
# input waited more than 3 s for a core.
fuzz_options() {
    case "$1" in
    terminal | exec_frame) echo "-max_len=16384 -timeout=30" ;;
    otlp_json) echo "-max_len=16384 -timeout=30 -dict=fuzz/dicts/otlp_json.dict" ;;
    *) echo "-max_len=4096 -timeout=30" ;;
    esac
}

# Runs target $1 on its corpus with the further libFuzzer options given. A crash
# fails; libFuzzer prints the input and leaves it under fuzz/artifacts/$1/
# (replay: the built binary with the file as argument).
fuzz_run() {
    local target="$1" options
    shift
    read -r -a options <<<"$(fuzz_options "$target")"
    mkdir -p "fuzz/artifacts/$target"
    "$CARGO_TARGET_DIR/$fuzz_host/release/$target" "fuzz/corpus/$target" \
        -artifact_prefix="fuzz/artifacts/$target/" "${options[@]}" -print_final_stats=1 "$@"
}
