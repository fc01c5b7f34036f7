#!/bin/sh
# The VM test's hands in the guest (tests/vm/run.py): no SSH, the shared
# folder instead. The host drops numbered commands into cmd/ beside this
# file (NNNN.sh, with its time limit in seconds in NNNN.limit); this runs
# each once, as root, in order, and leaves its output in out/NNNN.out and
# then its exit status in out/NNNN.rc (124: the time limit passed). A boot
# says it is up in out/boot-BOOT_ID. Started by the seed's bootcmd at every
# boot, as a transient systemd unit.
set -u
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/out"
boot=$(cat /proc/sys/kernel/random/boot_id)
uptime=$(cut -d' ' -f1 /proc/uptime)
echo "$uptime" >"$here/out/boot-$boot.tmp" && mv "$here/out/boot-$boot.tmp" "$here/out/boot-$boot"
echo "wisp-vm-runner: up, boot $boot after ${uptime}s" >/dev/console 2>/dev/null || true
while :; do
    for cmd in "$here"/cmd/*.sh; do
        [ -e "$cmd" ] || continue
        n=$(basename "$cmd" .sh)
        # Done, or begun before a reboot (the reboot command itself).
        [ -e "$here/out/$n.rc" ] || [ -e "$here/out/$n.begun" ] && continue
        : >"$here/out/$n.begun"
        limit=$(cat "$here/cmd/$n.limit" 2>/dev/null || echo 60)
        timeout -k 5 "$limit" sh "$cmd" >"$here/out/$n.out" 2>&1 </dev/null
        echo $? >"$here/out/$n.rc.tmp"
        mv "$here/out/$n.rc.tmp" "$here/out/$n.rc"
    done
    sleep 0.3
done
