#!/usr/bin/env bash
# Checks the systemd unit: `systemd-analyze verify` accepts it, and
# `systemd-analyze security --offline=yes` rates its exposure at most 3.0
# (docs/ARCHITECTURE.md, "Hardening"). Needs a built agent (target/debug), as
# verify checks that ExecStart's binary exists: a copy of the unit points there.
set -euo pipefail
cd "$(dirname "$0")/.."
unit=systemd/wisp-agent.service
bin="$PWD/target/debug/wisp-agent"
max=3.0
[ -x "$bin" ] || { echo "check-unit: $bin not built: run 'cargo build' first" >&2; exit 1; }
command -v systemd-analyze >/dev/null 2>&1 || { echo "check-unit: systemd-analyze missing (apt-get install systemd)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|^ExecStart=/usr/local/bin/wisp-agent |ExecStart=$bin |" "$unit" >"$tmp/wisp-agent.service"
grep -q "^ExecStart=$bin " "$tmp/wisp-agent.service" || { echo "check-unit: ExecStart in $unit is not /usr/local/bin/wisp-agent" >&2; exit 1; }
# verify prints its findings on stderr and may exit 0 with them: any output fails.
if ! systemd-analyze verify "$tmp/wisp-agent.service" >"$tmp/verify.out" 2>&1 || [ -s "$tmp/verify.out" ]; then
    echo "check-unit: systemd-analyze verify $unit:" >&2
    cat "$tmp/verify.out" >&2
    exit 1
fi

systemd-analyze security --offline=yes "$unit" >"$tmp/security.out" 2>&1 || true
level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p' "$tmp/security.out" | tail -n1)
if [ -z "$level" ]; then
    echo "check-unit: no exposure level in the output of systemd-analyze security:" >&2
    cat "$tmp/security.out" >&2
    exit 1
fi
if awk -v l="$level" -v m="$max" 'BEGIN { exit !(l > m) }'; then
    echo "check-unit: $unit exposure $level is above $max:" >&2
    grep '✗' "$tmp/security.out" >&2 || cat "$tmp/security.out" >&2
    exit 1
fi
echo "check-unit: $unit verifies; exposure $level (at most $max)"
