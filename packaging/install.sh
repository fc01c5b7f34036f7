#!/bin/sh
# Installs a built wisp-agent into a VM image: the binary, the default
# configuration (kept if present) and the systemd unit.
#   cargo build --release && sudo packaging/install.sh
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin="${WISP_AGENT_BIN:-$here/target/release/wisp-agent}"
[ -x "$bin" ] || { echo "install.sh: $bin not found: run 'cargo build --release' first" >&2; exit 1; }
install -m 0755 "$bin" /usr/local/bin/wisp-agent
install -d -m 0755 /etc/wisp-agent /var/lib/wisp-agent
[ -e /etc/wisp-agent/config.toml ] || install -m 0644 "$here/packaging/examples/full.toml" /etc/wisp-agent/config.toml
install -m 0644 "$here/systemd/wisp-agent.service" /etc/systemd/system/wisp-agent.service
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    echo "installed; start it with: systemctl enable --now wisp-agent"
fi
