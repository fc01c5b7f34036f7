#!/bin/sh
# Copies packaging/provision.sh, the one install script, into the two files
# that carry it to a VM: packaging/lima/wisp-agent.yaml (the script of its
# provision: entry) and packaging/cloud-init/user-data.yaml (the content of
# its write_files: entry). Each file ends with that block scalar; everything
# above its marker line is kept as written.
#   packaging/embed-provision.sh           rewrite both copies
#   packaging/embed-provision.sh --check   exit 1 if a copy differs (CI)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
check=no
case "${1:-}" in
--check) check=yes ;;
"") ;;
*)
    echo "usage: packaging/embed-provision.sh [--check]" >&2
    exit 2
    ;;
esac

status=0
# embed FILE MARKER INDENT: FILE up to its MARKER line, then provision.sh
# indented by INDENT spaces (empty lines stay empty).
embed() {
    file=$1
    marker=$2
    indent=$3
    grep -qxF -- "$marker" "$file" || {
        echo "embed-provision: $file has no line '$marker' to embed provision.sh after" >&2
        exit 1
    }
    new=$(mktemp)
    awk -v m="$marker" '{ print } $0 == m { exit }' "$file" >"$new"
    awk -v n="$indent" '{ if ($0 == "") print ""; else printf "%" n "s%s\n", "", $0 }' "$here/provision.sh" >>"$new"
    if cmp -s "$new" "$file"; then
        rm -f "$new"
    elif [ "$check" = yes ]; then
        echo "embed-provision: $file does not hold the current packaging/provision.sh: run packaging/embed-provision.sh" >&2
        rm -f "$new"
        status=1
    else
        cat "$new" >"$file"
        rm -f "$new"
        echo "embed-provision: $file updated"
    fi
}

embed "$here/lima/wisp-agent.yaml" "    script: |" 6
embed "$here/cloud-init/user-data.yaml" "    content: |" 6
exit "$status"
