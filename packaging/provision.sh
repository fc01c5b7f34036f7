#!/bin/sh
# Installs and starts wisp-agent in a VM, as root, with nothing to configure
# on the host: the agent finds the host's telemetry stack by itself.
#
# Where the package comes from, first found wins:
#   1. a folder the host shares with the VM: .wisp-agent/dist/ in any 9p,
#      virtiofs or sshfs mount (Lima and Colima share your home folder, so
#      that is ~/.wisp-agent/dist/ on the host), or $WISP_AGENT_DIST, holding
#      wisp-agent_VERSION_ARCH.deb (Debian, Ubuntu) or
#      wisp-agent-VERSION-linux-ARCH.tar.gz (other distributions with glibc
#      and systemd; the tarball's packaging/install.sh installs it);
#   2. the GitHub release of WISP_AGENT_REPO (below), checked against the
#      release's SHA256SUMS.
# The architecture is the guest's (dpkg --print-architecture: amd64, arm64).
#
# Safe to run at every boot (Lima and Colima do): once installed, it does
# nothing unless the shared folder holds another version or WISP_AGENT_VERSION
# names one; it never enables a unit you disabled. Without systemd running (an
# image build), the unit is enabled for the next boot.
#
# This file is the one copy to edit: packaging/lima/wisp-agent.yaml and
# packaging/cloud-init/user-data.yaml embed it, rewritten by
# packaging/embed-provision.sh (CI fails when a copy differs).
set -eu

# The repository whose releases publish wisp-agent, and the release to
# install ("latest", or a version such as 0.1.0). A release's own copy of
# this file has both filled in.
WISP_AGENT_REPO=${WISP_AGENT_REPO:-https://github.com/OWNER/wisp-agent}
WISP_AGENT_VERSION=${WISP_AGENT_VERSION:-latest}
WISP_AGENT_DIST=${WISP_AGENT_DIST:-}

say() { echo "wisp-agent provision: $*"; }
die() {
    say "$*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (Lima, Colima: mode: system; cloud-init: runcmd)"

case "$(uname -m)" in
x86_64 | amd64) tarch=x86_64 ;;
aarch64 | arm64) tarch=aarch64 ;;
*) die "no wisp-agent build for $(uname -m): there are x86_64 and aarch64 ones" ;;
esac
if command -v dpkg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    kind=deb
    arch=$(dpkg --print-architecture)
    case "$arch" in
    amd64 | arm64) ;;
    *) die "no wisp-agent package for $arch: there are amd64 and arm64 ones" ;;
    esac
    pattern="wisp-agent_*_$arch.deb"
else
    kind=tar
    pattern="wisp-agent-*-linux-$tarch.tar.gz"
fi

installed=$(wisp-agent --version 2>/dev/null | sed -n 's/^wisp-agent //p' || true)

# The version in a package's file name.
version_of() {
    case "$kind" in
    deb) basename "$1" | sed "s/^wisp-agent_\\(.*\\)_$arch\\.deb\$/\\1/" ;;
    tar) basename "$1" | sed "s/^wisp-agent-\\(.*\\)-linux-$tarch\\.tar\\.gz\$/\\1/" ;;
    esac
}

# The newest package in a folder, if any.
newest_in() {
    # shellcheck disable=SC2086 # the pattern is a glob on purpose
    set -- "$1"/$pattern
    [ -e "$1" ] || return 0
    if printf '1\n' | sort -V >/dev/null 2>&1; then
        printf '%s\n' "$@" | sort -V | tail -n1
    else
        printf '%s\n' "$@" | sort | tail -n1
    fi
}

# Folders the host shares with the VM, as /proc/mounts names them (a space in
# a mount point is written \040 there: such a folder is skipped).
shared_folders() {
    while read -r _ mountpoint fstype _; do
        case "$fstype" in
        9p | virtiofs | fuse.sshfs | sshfs | fuse.virtiofs) printf '%s\n' "$mountpoint" ;;
        esac
    done </proc/mounts
}

local_package=""
if [ -n "$WISP_AGENT_DIST" ]; then
    [ -d "$WISP_AGENT_DIST" ] || die "WISP_AGENT_DIST=$WISP_AGENT_DIST is not a folder"
    WISP_AGENT_DIST=$(cd "$WISP_AGENT_DIST" && pwd)
    local_package=$(newest_in "$WISP_AGENT_DIST")
    [ -n "$local_package" ] || die "no $pattern in WISP_AGENT_DIST=$WISP_AGENT_DIST"
else
    for folder in $(shared_folders); do
        [ -d "$folder/.wisp-agent/dist" ] || continue
        local_package=$(newest_in "$folder/.wisp-agent/dist")
        [ -n "$local_package" ] && break
    done
fi

report() {
    if [ -d /run/systemd/system ]; then
        say "wisp-agent $1 is installed; the service is $(systemctl is-enabled wisp-agent 2>/dev/null || true) and $(systemctl is-active wisp-agent 2>/dev/null || true) ('wisp-agent probe' shows which host it ships to)"
    else
        say "wisp-agent $1 is installed; systemd is not running here, the service starts at the next boot if enabled"
    fi
}

if [ -n "$local_package" ]; then
    want=$(version_of "$local_package")
    if [ "$want" = "$installed" ]; then
        report "$installed"
        exit 0
    fi
    say "installing $local_package (from a folder the host shares)"
    package=$local_package
else
    if [ -n "$installed" ] && { [ "$WISP_AGENT_VERSION" = latest ] || [ "$WISP_AGENT_VERSION" = "$installed" ]; }; then
        report "$installed"
        exit 0
    fi
    case "$WISP_AGENT_REPO" in
    */OWNER/*) die "no $pattern in a folder the host shares, and WISP_AGENT_REPO is not set: set it at the top of this script to the GitHub repository that publishes wisp-agent (a release's own copy of this file has it), or put the package in ~/.wisp-agent/dist/ on the host" ;;
    esac
    if command -v curl >/dev/null 2>&1; then
        fetch() { curl -fsSL --retry 3 -o "$2" "$1"; }
        effective_url() { curl -fsSLI -o /dev/null -w '%{url_effective}' "$1"; }
    elif command -v wget >/dev/null 2>&1; then
        fetch() { wget -q -O "$2" "$1"; }
        effective_url() { wget -q -S --spider "$1" 2>&1 | sed -n 's/^ *[Ll]ocation: *//p' | tail -n1; }
    else
        die "neither curl nor wget is installed: install one, or put the package in ~/.wisp-agent/dist/ on the host"
    fi
    version=$WISP_AGENT_VERSION
    if [ "$version" = latest ]; then
        # GitHub answers /releases/latest with a redirect to /releases/tag/vVERSION.
        tag_url=$(effective_url "$WISP_AGENT_REPO/releases/latest" || true)
        version=${tag_url##*/tag/v}
        { [ -n "$tag_url" ] && [ "$version" != "$tag_url" ]; } ||
            die "cannot find the latest release of $WISP_AGENT_REPO (got '$tag_url'): set WISP_AGENT_VERSION"
    fi
    case "$kind" in
    deb) asset="wisp-agent_${version}_$arch.deb" ;;
    tar) asset="wisp-agent-$version-linux-$tarch.tar.gz" ;;
    esac
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    base="$WISP_AGENT_REPO/releases/download/v$version"
    say "downloading $base/$asset"
    fetch "$base/$asset" "$tmp/$asset" || die "cannot download $base/$asset"
    fetch "$base/SHA256SUMS" "$tmp/SHA256SUMS" || die "cannot download $base/SHA256SUMS"
    awk -v a="$asset" '$2 == a || $2 == "*" a' "$tmp/SHA256SUMS" >"$tmp/sum"
    [ -s "$tmp/sum" ] || die "$asset is not in the release's SHA256SUMS"
    (cd "$tmp" && sha256sum -c sum >/dev/null) || die "$asset does not match its SHA256SUMS entry: not installing it"
    package="$tmp/$asset"
fi

case "$kind" in
deb)
    # apt waits for a first boot's unattended-upgrades to let go of the lock;
    # --force-confold keeps an edited /etc/wisp-agent/config.toml. postinst
    # enables and starts the service.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -o DPkg::Lock::Timeout=300 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "$package"
    ;;
tar)
    unpacked=$(mktemp -d)
    tar -xzf "$package" -C "$unpacked"
    set -- "$unpacked"/*/packaging/install.sh
    [ -f "$1" ] || die "$package holds no */packaging/install.sh"
    top=$(dirname "$(dirname "$1")")
    WISP_AGENT_BIN="$top/wisp-agent" sh "$1"
    rm -rf "$unpacked"
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        if [ -n "$installed" ]; then
            systemctl try-restart wisp-agent
        else
            systemctl enable --now wisp-agent
        fi
    elif command -v systemctl >/dev/null 2>&1 && [ -z "$installed" ]; then
        systemctl enable wisp-agent || say "could not enable wisp-agent.service: enable it once systemd runs"
    fi
    ;;
esac

now=$(wisp-agent --version 2>/dev/null | sed -n 's/^wisp-agent //p' || true)
[ -n "$now" ] || die "wisp-agent does not run after the install ('wisp-agent --version' fails)"
report "$now"
