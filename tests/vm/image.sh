#!/usr/bin/env bash
# Builds the VM test's guest image: Debian 12 (bookworm) from Debian's
# mirror with mmdebstrap --variant=minbase, as a qcow2 disk plus the kernel
# and initrd QEMU boots directly (no boot loader). tests/vm/run.py calls it
# and caches the result keyed by a hash of this file:
#
#   tests/vm/image.sh OUTDIR [APT_CACHE]
#
# OUTDIR gets rootfs.qcow2 (ext4 on the whole disk, /dev/vda), vmlinuz and
# initrd.img. APT_CACHE, when given, is a folder of .debs kept between builds
# (a warm build downloads nothing). Root, mmdebstrap, mke2fs and qemu-img.
#
# The guest is what a cloud VM of Lima or libvirt is, pared down: systemd,
# udev, dbus, Debian's cloud kernel, cloud-init (NoCloud: the seed the test
# attaches), systemd-networkd for DHCP on the first interface, and what the
# test runs in it: curl, procps, iproute2, tmux, Node.js (the Ralph loop's
# app). No resolv.conf of the build host, no SSH, no password.
set -euo pipefail

out=${1:?usage: tests/vm/image.sh OUTDIR [APT_CACHE]}
apt_cache=${2:-}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

packages=systemd-sysv,udev,dbus,kmod,linux-image-cloud-amd64,cloud-init,iproute2,procps,curl,ca-certificates,tmux,nodejs

cache_hooks=()
if [ -n "$apt_cache" ]; then
    mkdir -p "$apt_cache"
    apt_cache=$(cd "$apt_cache" && pwd)
    # mmdebstrap's own recipe for a package cache kept outside the tree.
    cache_hooks=(
        --skip=download/empty --skip=essential/unlink
        --setup-hook="mkdir -p \"\$1\"/var/cache/apt/archives/"
        --setup-hook="sync-in $apt_cache /var/cache/apt/archives/"
        --customize-hook="sync-out /var/cache/apt/archives $apt_cache"
        # The packages stay in the cache, not in the image.
        --customize-hook="rm -f \"\$1\"/var/cache/apt/archives/*.deb"
    )
fi

# The guest's own configuration, written into the tree before it is packed.
customize() {
    local root=$1
    echo wisp-vm >"$root/etc/hostname"
    # Not the build host's resolver: the guest has none (its names are in
    # /etc/hosts, as Lima writes host.lima.internal there).
    rm -f "$root/etc/resolv.conf"
    : >"$root/etc/resolv.conf"
    printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$root/etc/fstab"
    # DHCP on the first Ethernet interface (cloud-init writes its own for
    # the interface it finds; either gives the same lease).
    cat >"$root/etc/systemd/network/20-wired.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
NET
    # NoCloud only (the seed disk).
    cat >"$root/etc/cloud/cloud.cfg.d/90-wisp-vm.cfg" <<'CFG'
datasource_list: [NoCloud, None]
CFG
    # No locale module: the image has no locales package, and cloud-init's
    # locale step fails without it (`locale: false` would do, but the
    # schema wants a string there and warns at every boot).
    grep -qE '^ *- locale$' "$root/etc/cloud/cloud.cfg"
    sed -i -E '/^ *- locale$/d' "$root/etc/cloud/cloud.cfg"
    # A machine id made at first boot, so every VM has its own.
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
}

# shellcheck disable=SC2016 # "$1" is the hooks' argument, the tree
mmdebstrap --variant=minbase --include="$packages" \
    --components=main \
    "${cache_hooks[@]}" \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd.service systemd-networkd-wait-online.service' \
    --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer 2>/dev/null || true' \
    bookworm "$work/root" http://deb.debian.org/debian
customize "$work/root"

cp "$(readlink -f "$work/root/vmlinuz")" "$work/vmlinuz"
cp "$(readlink -f "$work/root/initrd.img")" "$work/initrd.img"
# ext4 filled from the tree without mounting it (mke2fs -d), 4 GiB sparse.
mke2fs -q -t ext4 -L root -d "$work/root" "$work/rootfs.raw" 4G
qemu-img convert -O qcow2 "$work/rootfs.raw" "$work/rootfs.qcow2"
mv "$work/rootfs.qcow2" "$work/vmlinuz" "$work/initrd.img" "$out/"
du -sh "$out/rootfs.qcow2"
