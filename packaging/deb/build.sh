#!/bin/sh
# Builds wisp-agent's Debian package with dpkg-deb from a staged tree (no
# cargo-deb, which CI would have to compile):
#
#   packaging/deb/build.sh BINARY ARCH OUTDIR
#   packaging/deb/build.sh target/release/wisp-agent amd64 target/debian
#
# BINARY is a built wisp-agent for ARCH (amd64 or arm64, Debian's names; the
# binary's ELF machine must match). The version is Cargo.toml's. Prints the
# path of the .deb it wrote (OUTDIR/wisp-agent_VERSION_ARCH.deb) on stdout.
#
# What the package holds (.ci/package.sh checks exactly this list):
#   /usr/bin/wisp-agent
#   /usr/lib/systemd/system/wisp-agent.service   systemd/wisp-agent.service, ExecStart in /usr/bin
#   /etc/wisp-agent/config.toml                  a conffile: packaging/deb/config.toml
#   /usr/share/doc/wisp-agent/copyright
#   /usr/share/man/man1/wisp-agent.1.gz          `wisp-agent manpage`, gzip -9n
#   /usr/share/bash-completion/completions/wisp-agent
#   /usr/share/zsh/vendor-completions/_wisp-agent
#   /usr/share/fish/vendor_completions.d/wisp-agent.fish
#                                                `wisp-agent completions SHELL`
# and the maintainer scripts beside this file (postinst, prerm, postrm).
# Depends is read from the binary: the libraries it links (readelf's NEEDED)
# and the newest GLIBC_ / GCC_ symbol version it asks for.
#
# Environment: WISP_DEB_MAINTAINER (the Maintainer field), WISP_DEB_COMPRESS
# (dpkg-deb's -Z: xz, the default, which every dpkg reads; gzip is faster),
# SOURCE_DATE_EPOCH (the files' mtime; default: the last commit's time).
set -eu

usage() {
    echo "usage: packaging/deb/build.sh BINARY amd64|arm64 OUTDIR" >&2
    exit 2
}
die() {
    echo "deb/build.sh: $*" >&2
    exit 1
}

[ "$#" -eq 3 ] || usage
bin=$1
arch=$2
outdir=$3
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

case "$arch" in
amd64) machine="Advanced Micro Devices X86-64" ;;
arm64) machine="AArch64" ;;
*) die "architecture '$arch' is not amd64 or arm64 (Debian's names: dpkg --print-architecture)" ;;
esac
for tool in dpkg-deb readelf; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: apt-get install dpkg binutils"
done
{ [ -f "$bin" ] && [ -x "$bin" ]; } || die "$bin is not an executable file: build it first (cargo build --release)"
got=$(readelf -hW "$bin" 2>/dev/null | sed -n 's/^ *Machine: *//p')
[ -n "$got" ] || die "$bin is not an ELF binary"
[ "$got" = "$machine" ] || die "$bin is built for '$got', not $arch ('$machine'): build it with --target for $arch"

# The [package] table's version.
version=$(awk '
    /^\[/ { in_package = ($0 == "[package]") }
    in_package && /^version *=/ { gsub(/^version *= *"|".*$/, ""); print; exit }
' "$root/Cargo.toml")
[ -n "$version" ] || die "no version in the [package] table of $root/Cargo.toml"
# Debian sorts a pre-release after its release unless written with ~.
deb_version=$(printf '%s' "$version" | tr '-' '~')

# Depends, from what the binary links and the symbol versions it needs.
libs=$(readelf -dW "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
glibc=$(readelf -VW "$bin" | sed -n 's/.*Name: GLIBC_\([0-9][0-9.]*\).*/\1/p' | sort -t. -k1,1n -k2,2n -k3,3n | tail -n1)
gcc=$(readelf -VW "$bin" | sed -n 's/.*Name: GCC_\([0-9][0-9.]*\).*/\1/p' | sort -t. -k1,1n -k2,2n -k3,3n | tail -n1)
need_libc=no
need_libgcc=no
for lib in $libs; do
    case "$lib" in
    libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux-*.so.* | ld-linux.so.*) need_libc=yes ;;
    libgcc_s.so.1) need_libgcc=yes ;;
    *) die "$bin links $lib, whose Debian package build.sh does not know: add it to the Depends computed here" ;;
    esac
done
depends=""
if [ "$need_libc" = yes ]; then
    [ -n "$glibc" ] || die "$bin links glibc but needs no GLIBC_ symbol version (readelf -V): a broken build?"
    depends="libc6 (>= $glibc)"
fi
if [ "$need_libgcc" = yes ]; then
    depends="${depends:+$depends, }libgcc-s1${gcc:+ (>= $gcc)}"
fi
# postinst creates the system user with useradd.
depends="${depends:+$depends, }passwd"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM
umask 022
# mktemp made it 0700: it becomes the package's / and would be installed so.
chmod 0755 "$stage"
install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/lib/systemd/system" \
    "$stage/etc/wisp-agent" "$stage/usr/share/doc/wisp-agent" "$stage/usr/share/man/man1" \
    "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
    "$stage/usr/share/fish/vendor_completions.d"
install -m 0755 "$bin" "$stage/usr/bin/wisp-agent"
# The man page and completions come from the binary's own command line (run
# here: the package is built where the binary runs, arm64 on arm64).
"$bin" manpage >"$stage/man.1" ||
    die "$bin manpage failed: build.sh runs the binary to make the man page, build the package on $arch"
grep -q '^\.TH wisp-agent 1 ' "$stage/man.1" || die "$bin manpage printed no .TH wisp-agent 1 header"
gzip -9n <"$stage/man.1" >"$stage/usr/share/man/man1/wisp-agent.1.gz"
rm "$stage/man.1"
"$bin" completions bash >"$stage/usr/share/bash-completion/completions/wisp-agent"
"$bin" completions zsh >"$stage/usr/share/zsh/vendor-completions/_wisp-agent"
"$bin" completions fish >"$stage/usr/share/fish/vendor_completions.d/wisp-agent.fish"
chmod 0644 "$stage/usr/share/man/man1/wisp-agent.1.gz" \
    "$stage/usr/share/bash-completion/completions/wisp-agent" \
    "$stage/usr/share/zsh/vendor-completions/_wisp-agent" \
    "$stage/usr/share/fish/vendor_completions.d/wisp-agent.fish"
# The repo's unit is the one source; only the binary's path differs.
sed 's|^ExecStart=/usr/local/bin/wisp-agent |ExecStart=/usr/bin/wisp-agent |' \
    "$root/systemd/wisp-agent.service" >"$stage/usr/lib/systemd/system/wisp-agent.service"
grep -q '^ExecStart=/usr/bin/wisp-agent ' "$stage/usr/lib/systemd/system/wisp-agent.service" ||
    die "ExecStart in systemd/wisp-agent.service is not /usr/local/bin/wisp-agent: update the sed in build.sh"
chmod 0644 "$stage/usr/lib/systemd/system/wisp-agent.service"
install -m 0644 "$here/config.toml" "$stage/etc/wisp-agent/config.toml"
install -m 0644 "$here/copyright" "$stage/usr/share/doc/wisp-agent/copyright"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$stage/DEBIAN/$script"
done
echo /etc/wisp-agent/config.toml >"$stage/DEBIAN/conffiles"

installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<EOF
Package: wisp-agent
Version: $deb_version
Architecture: $arch
Maintainer: ${WISP_DEB_MAINTAINER:-wisp-agent developers <wisp-agent@invalid>}
Installed-Size: $installed_size
Depends: $depends
Section: admin
Priority: optional
Description: telemetry agent for developer VMs (Lima, Colima, libvirt)
 wisp-agent finds the host's telemetry stack by itself, tails log files,
 relays the VM's OpenTelemetry (traces, metrics, logs) and its host metrics,
 and ships them to Loki and an OpenTelemetry collector on the host, with a
 durable buffer that loses nothing while the host is away.
 .
 The package installs a hardened systemd unit, enabled and started, and a
 zero-configuration /etc/wisp-agent/config.toml.
EOF
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$outdir"
deb="$outdir/wisp-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${WISP_DEB_COMPRESS:-xz}" --build "$stage" "$deb" >/dev/null
echo "$deb"
