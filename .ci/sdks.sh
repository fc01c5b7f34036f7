#!/usr/bin/env bash
# Installs the real OpenTelemetry SDKs that tests/ralph_loop.rs runs in its
# Ralph loop, outside the clone, in ${WISP_SDK_DIR:-$HOME/.cache/wisp-agent-sdks}:
#
#   node/     tests/ralph/node's app.js, instrumentation.js, package.json and
#             package-lock.json, and `npm ci`'s node_modules (pino 9,
#             @opentelemetry/sdk-node 0.223 with its OTLP exporters,
#             instrumentation-pino): the last versions that run on Node 18.19+
#             (Debian 12's nodejs) as well as on Node 20 and 22.
#   python/   tests/ralph/python's app.py and requirements.txt (every package
#             pinned: opentelemetry-sdk, -exporter-otlp for gRPC and HTTP,
#             -distro for `opentelemetry-instrument`), in a venv (venv/).
#
# Each part is keyed by a hash of its manifests and of the runtime it was built
# with: a re-run with nothing changed installs nothing (and copies the app
# sources only when they differ). Installs Node.js and npm from apt when `node`
# is missing, and Debian's venv module when `python3 -m venv` cannot work.
# Network: the npm registry and PyPI only.
#
# A cold install took 15 s here (npm ci 6 s, the venv and pip 8 s), Node.js 20
# and Python 3.11 already on the machine; apt's nodejs adds about 20 s.
#
# Usage: .ci/sdks.sh   (WISP_SDK_DIR to choose the folder, PYTHON the python3)
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${WISP_SDK_DIR:-$HOME/.cache/wisp-agent-sdks}"
python="${PYTHON:-python3}"
src=tests/ralph

apt_install() {
    echo "sdks: installing $* with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi

mkdir -p "$dir/node" "$dir/python"
# One installer at a time per folder (two CI jobs, a developer beside CI).
exec 9>"$dir/.lock"
flock 9

# Copies FILE from $src/PART to $dir/PART unless the copy is already the same.
copy() {
    local part=$1 file=$2
    if ! cmp -s "$src/$part/$file" "$dir/$part/$file"; then
        cp "$src/$part/$file" "$dir/$part/$file"
    fi
}

# The key of a part: its manifests and what they were installed with.
key() {
    sha256sum "$@" | sha256sum | cut -c1-16
}

# --- Node ---
for f in package.json package-lock.json app.js instrumentation.js; do
    copy node "$f"
done
node_key="$(key "$src/node/package.json" "$src/node/package-lock.json")-node$(node -p 'process.versions.node.split(".")[0]')"
if [ "$(cat "$dir/node/.installed" 2>/dev/null || true)" != "$node_key" ]; then
    echo "sdks: npm ci in $dir/node ($(node --version), npm $(npm --version))"
    rm -f "$dir/node/.installed"
    # No install scripts: nothing here needs one (protobufjs's only checks
    # versions), and npm 11 would skip it anyway.
    (cd "$dir/node" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    echo "$node_key" >"$dir/node/.installed"
else
    echo "sdks: node packages already installed in $dir/node"
fi

# --- Python ---
copy python app.py
copy python requirements.txt
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "sdks: $python is $("$python" --version 2>&1); the OpenTelemetry SDK pinned needs 3.10 or later" >&2
    exit 1
fi
py_id="$("$python" -c 'import sys; print(sys.executable, sys.version)')"
py_key="$(key "$src/python/requirements.txt")-$(echo "$py_id" | sha256sum | cut -c1-8)"
if [ "$(cat "$dir/python/.installed" 2>/dev/null || true)" != "$py_key" ]; then
    echo "sdks: venv and pip install in $dir/python ($py_id)"
    rm -f "$dir/python/.installed"
    rm -rf "$dir/python/venv"
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian's python3 keeps ensurepip in python3-venv.
        apt_install python3-venv
    fi
    "$python" -m venv "$dir/python/venv"
    "$dir/python/venv/bin/pip" install -q --disable-pip-version-check -r "$dir/python/requirements.txt"
    echo "$py_key" >"$dir/python/.installed"
else
    echo "sdks: python packages already installed in $dir/python"
fi

echo "sdks: ready in $dir"
