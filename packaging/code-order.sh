#!/bin/sh
# Makes packaging/code-order.txt anew: the functions a release build of the
# agent runs, from its start through shipping ten files and idling (90 s by
# default) with every default on (benches/idle.rs), in the order they first
# ran, as callgrind saw them. build.rs hands the list to the linker, which puts
# those functions first in .text (docs/decisions/041-code-in-the-order-it-runs.md).
#
# Run it after a change of rustc or of Cargo.lock (Rust names change with
# them) and when the idle bench's resident code grows past about 3.5 MiB.
# Needs valgrind and binutils (apt-get install valgrind binutils); about 6
# minutes on 2 cores.
#
#   packaging/code-order.sh [IDLE_SECONDS]
set -eu
cd "$(dirname "$0")/.."

die() {
    echo "code-order.sh: $*" >&2
    exit 1
}

idle="${1:-90}"
case "$idle" in
'' | *[!0-9]*) die "IDLE_SECONDS must be a whole number of seconds, not '$idle'" ;;
esac
command -v valgrind >/dev/null 2>&1 || die "valgrind is missing: apt-get install valgrind"
command -v nm >/dev/null 2>&1 || die "nm is missing: apt-get install binutils"

# Two builds of the agent, one per profile: cargo bench builds its own (profile
# `bench`), whose Rust names differ from `cargo build --release`'s in their
# hashes though the code is the same; the list serves both.
bench=$(cargo bench --locked --bench idle --no-run 2>&1 |
    sed -n 's/^ *Executable .*(\(.*\))$/\1/p' | tail -n 1)
{ [ -n "$bench" ] && [ -x "$bench" ]; } || die "the idle bench did not build: cargo bench --bench idle --no-run"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp target/release/wisp-agent "$work/bench"
cargo build --locked --release --bin wisp-agent
cp target/release/wisp-agent "$work/release"

agents=""
for build in release bench; do
    printf '#!/bin/sh\nexec valgrind --tool=callgrind --demangle=no --callgrind-out-file="%s" "%s" "$@"\n' \
        "$work/$build.callgrind" "$work/$build" >"$work/$build-under-callgrind"
    chmod +x "$work/$build-under-callgrind"
    agents="$agents${agents:+,}$work/$build-under-callgrind"
done
WISP_BENCH_AGENT="$agents" WISP_BENCH_RUNS=1 WISP_BENCH_IDLE_SECS="$idle" \
    "$bench" >&2 || die "the idle bench failed under callgrind"

# Each build's own functions, then every one callgrind names (as the function
# of a cost line, fn=, or as one called, cfn=), first seen first.
for build in release bench; do
    [ -f "$work/$build.callgrind" ] || die "callgrind wrote no profile of the $build build"
    nm --defined-only "$work/$build" | awk '$2 ~ /^[tTwW]$/ { print $3 }' >"$work/$build.functions"
done
{
    echo "# The functions the agent runs, first run first: made by packaging/code-order.sh,"
    echo "# read by build.rs; see docs/decisions/041-code-in-the-order-it-runs.md."
    echo "# rustc: $(rustc --version)"
    {
        for build in release bench; do
            awk 'NR == FNR { known[$1] = 1; next }
                 /^c?fn=\([0-9]+\) / {
                     name = $0
                     sub(/^c?fn=\([0-9]+\) /, "", name)
                     if ((name in known) && !(name in seen)) { seen[name] = 1; print name }
                 }' "$work/$build.functions" "$work/$build.callgrind"
        done
        # Then the small functions of every tokio task type's vtable: which of
        # them runs depends on timing (a JoinHandle dropped before or after its
        # task ends), so one profile misses some, and each one missed maps the
        # 64 KiB around it.
        grep -hE '^_ZN5tokio7runtime4task3raw[0-9]+(dealloc|drop_join_handle_slow|drop_abort_handle|try_read_output|shutdown)17h' \
            "$work/release.functions" "$work/bench.functions"
        # Then the variants a run-time check of the CPU picks from (the
        # checksum's, memchr's, the UTF-8 check's: AVX-512, AVX2, SSE):
        # valgrind runs no AVX-512, so its profile lacks what such a CPU runs.
        grep -hE 'crc32fast|memchr|simdutf8' "$work/release.functions" "$work/bench.functions" |
            grep -E 'avx|sse|pclmul'
    } | awk '!seen[$0]++'
} >"$work/code-order.txt"
listed=$(grep -vc '^#' "$work/code-order.txt" || true)
[ "$listed" -gt 100 ] || die "only $listed functions found in the profiles: are the binaries stripped of their symbols?"
mv "$work/code-order.txt" packaging/code-order.txt
echo "packaging/code-order.txt: $listed functions; build again to use it" >&2
