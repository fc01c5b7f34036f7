#!/bin/sh
# Installs a built wisp-agent into a VM image: the binary, the default
# configuration (kept if present), the systemd unit, the man page and the bash
# completion. Where a Debian package
# fits, prefer it (docs/install.md): this script is for other distributions.
#   cargo build --release && sudo packaging/install.sh
# From a release tarball (wisp-agent-VERSION-linux-ARCH.tar.gz), the binary
# beside packaging/ is used:
#   tar -xzf wisp-agent-*.tar.gz && sudo wisp-agent-*/packaging/install.sh
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${WISP_AGENT_BIN:-}" ]; then
    bin=$WISP_AGENT_BIN
elif [ -f "$here/wisp-agent" ]; then
    bin="$here/wisp-agent"
else
    bin="$here/target/release/wisp-agent"
fi
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
# The package's zero-configuration default (discovery, built-in defaults, the
# provisioning log); packaging/examples/full.toml shows every key.
[ -e /etc/wisp-agent/config.toml ] || install -m 0644 "$here/packaging/deb/config.toml" /etc/wisp-agent/config.toml
install -m 0644 "$here/systemd/wisp-agent.service" /etc/systemd/system/wisp-agent.service
# The man page and the bash completion, from the binary itself.
install -d -m 0755 /usr/local/share/man/man1 /usr/local/share/bash-completion/completions
page=$(/usr/local/bin/wisp-agent manpage)
printf '%s\n' "$page" | gzip -9n >/usr/local/share/man/man1/wisp-agent.1.gz
/usr/local/bin/wisp-agent completions bash >/usr/local/share/bash-completion/completions/wisp-agent
chmod 0644 /usr/local/share/man/man1/wisp-agent.1.gz /usr/local/share/bash-completion/completions/wisp-agent
if command -v systemctl >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    echo "installed; start it with: systemctl enable --now wisp-agent"
fi
