#!/bin/sh
# Installs a built wisp-agent into a VM image: the binary, the default
# configuration (kept if present) and the systemd unit.
#   cargo build --release && sudo packaging/install.sh
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin="${WISP_AGENT_BIN:-$here/target/release/wisp-agent}"
[ -x "$bin" ] || { echo "install.sh: $bin not found: run 'cargo build --release' first" >&2; exit 1; }
install -m 0755 "$bin" /usr/local/bin/wisp-agent
# The service runs as this system user (systemd/wisp-agent.service): it reads
# every file through CAP_DAC_READ_SEARCH and writes only its state directory,
# which systemd creates (and chowns, when an older install left it to root).
if ! id -u wisp-agent >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /var/lib/wisp-agent \
        --shell /usr/sbin/nologin --user-group wisp-agent
fi
install -d -m 0755 /etc/wisp-agent
[ -e /etc/wisp-agent/config.toml ] || install -m 0644 "$here/packaging/examples/full.toml" /etc/wisp-agent/config.toml
install -m 0644 "$here/systemd/wisp-agent.service" /etc/systemd/system/wisp-agent.service
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    echo "installed; start it with: systemctl enable --now wisp-agent"
fi
