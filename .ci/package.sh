#!/usr/bin/env bash
# Checks what puts wisp-agent into a VM (docs/install.md):
#   1. the scripts: shellcheck and sh -n on the package's, the provisioning
#      and the CI scripts; the Lima, cloud-init and release YAML parses and
#      holds its keys; the embedded copies of packaging/provision.sh are
#      current and pass sh -n and shellcheck, as do the workflow's run:
#      steps; `cloud-init schema` accepts the user-data;
#   2. the Debian package built from BINARY (default target/debug/wisp-agent)
#      with packaging/deb/build.sh: exactly the expected paths and modes, the
#      man page (its sections; `man -l` renders it) and the completions
#      (bash -n; zsh -n and fish -n where installed), its control fields, its
#      conffile, its maintainer scripts (skipped, saying so, without dpkg);
#   3. as root: the package installed for real (no systemd running in CI):
#      the user, the files, the unit enabled for the next boot, `--version`,
#      `config check`; a locally changed conffile survives a reinstall, an
#      admin's disable too, `dpkg -r` keeps the conffile and the state,
#      `dpkg --purge` removes everything. A trap purges on failure. Skipped,
#      saying so, when not root or when this machine has a wisp-agent install
#      of its own.
#   .ci/package.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/debug/wisp-agent}"
fail() {
    echo "package: $*" >&2
    exit 1
}
need() {
    command -v "$1" >/dev/null 2>&1 || fail "$1 missing: apt-get install $2"
}
# Debian's python3 (python3-yaml), not a pyenv one without the module.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
"$py" -c 'import yaml' 2>/dev/null || fail "python3 has no yaml module: apt-get install python3-yaml"
need shellcheck shellcheck
need readelf binutils

echo "package: scripts"
scripts=(packaging/deb/build.sh packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm
    packaging/provision.sh packaging/embed-provision.sh packaging/install.sh packaging/code-order.sh)
for s in "${scripts[@]}"; do
    sh -n "$s" || fail "$s: sh -n fails"
    [ -x "$s" ] || fail "$s is not executable"
done
shellcheck "${scripts[@]}" .ci/package.sh
packaging/embed-provision.sh --check

tmp=$(mktemp -d)
cleanup_tmp() { rm -rf "$tmp"; }
trap cleanup_tmp EXIT

# The YAML files parse, hold what Lima, Colima, cloud-init and GitHub read,
# and the scripts they carry pass sh -n and shellcheck.
"$py" - "$tmp" <<'EOF'
import sys, yaml
out = sys.argv[1]
provision = open("packaging/provision.sh").read()
def fail(msg):
    sys.exit("package: " + msg)

lima = yaml.safe_load(open("packaging/lima/wisp-agent.yaml"))
if set(lima) != {"provision"}:
    fail(f"packaging/lima/wisp-agent.yaml: top-level keys {sorted(lima)}, want only provision")
[entry] = lima["provision"]
if entry.get("mode") != "system" or set(entry) != {"mode", "script"}:
    fail(f"packaging/lima/wisp-agent.yaml: the provision entry is {sorted(entry)} with mode {entry.get('mode')!r}, want mode: system and script")
if entry["script"] != provision:
    fail("packaging/lima/wisp-agent.yaml: its script is not packaging/provision.sh")
open(f"{out}/lima-script.sh", "w").write(entry["script"])

text = open("packaging/cloud-init/user-data.yaml").read()
if not text.startswith("#cloud-config\n"):
    fail("packaging/cloud-init/user-data.yaml does not start with #cloud-config")
ci = yaml.safe_load(text)
[wf] = ci["write_files"]
if wf.get("path") != "/usr/local/lib/wisp-agent/provision.sh" or wf.get("permissions") != "0755":
    fail(f"packaging/cloud-init/user-data.yaml: write_files entry {wf.get('path')!r} {wf.get('permissions')!r}")
if wf["content"] != provision:
    fail("packaging/cloud-init/user-data.yaml: its write_files content is not packaging/provision.sh")
if ci.get("runcmd") != [["sh", wf["path"]]]:
    fail(f"packaging/cloud-init/user-data.yaml: runcmd {ci.get('runcmd')!r} does not run {wf['path']}")
open(f"{out}/cloud-init-script.sh", "w").write(wf["content"])

wfl = yaml.safe_load(open(".github/workflows/release.yml"))
on = wfl.get("on", wfl.get(True))  # YAML 1.1 reads a bare `on` as true
if on is None or "v*" not in on["push"]["tags"]:
    fail(".github/workflows/release.yml does not run on a v* tag")
jobs = wfl["jobs"]
runners = {j["runs-on"] for j in jobs.values() if "runs-on" in j} | {
    i["runs-on"] for j in jobs.values() for i in j.get("strategy", {}).get("matrix", {}).get("include", []) if "runs-on" in i}
for want in ("ubuntu-22.04", "ubuntu-22.04-arm"):
    if want not in runners:
        fail(f".github/workflows/release.yml: no job on {want} (runners: {sorted(runners)})")
runs = "\n".join(s.get("run", "") for j in jobs.values() for s in j["steps"])
for want in ("cargo build --locked", "cargo test --locked", "packaging/deb/build.sh", "sha256sum", "gh release"):
    if want not in runs:
        fail(f".github/workflows/release.yml: no step runs {want!r}")
# Each run: block as the bash script GitHub runs, ${{ }} expressions as words.
import re
n = 0
for name, job in jobs.items():
    for step in job["steps"]:
        if "run" in step:
            n += 1
            body = re.sub(r"\$\{\{[^}]*\}\}", "EXPR", step["run"])
            open(f"{out}/workflow-{n}.sh", "w").write("#!/bin/bash\nset -e\n" + body)
EOF
for s in "$tmp/lima-script.sh" "$tmp/cloud-init-script.sh"; do
    sh -n "$s" || fail "$s: sh -n fails"
done
shellcheck -s sh "$tmp/lima-script.sh" "$tmp/cloud-init-script.sh"
for s in "$tmp"/workflow-*.sh; do
    bash -n "$s" || fail "a run: step of .github/workflows/release.yml does not parse: $(cat "$s")"
done
shellcheck -s bash "$tmp"/workflow-*.sh
if command -v cloud-init >/dev/null 2>&1; then
    cloud-init schema --config-file packaging/cloud-init/user-data.yaml
else
    echo "package: cloud-init not installed: its schema check skipped"
fi

echo "package: the .deb from $bin"
if ! command -v dpkg-deb >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
    echo "package: skipped the .deb: no dpkg here (a Debian or Ubuntu machine has it)"
    exit 0
fi
[ -x "$bin" ] || fail "$bin not built: run 'cargo build' first"
arch=$(dpkg --print-architecture)
version=$(awk '/^\[/ { p = ($0 == "[package]") } p && /^version *=/ { gsub(/^version *= *"|".*$/, ""); print; exit }' Cargo.toml)
# The debug binary is 60 MiB: xz would take a minute here, for nothing CI checks.
deb=$(WISP_DEB_COMPRESS=none packaging/deb/build.sh "$bin" "$arch" "$tmp/out")
[ "$deb" = "$tmp/out/wisp-agent_${version}_${arch}.deb" ] || fail "build.sh wrote $deb"

expected="drwxr-xr-x root/root ./
drwxr-xr-x root/root ./etc/
drwxr-xr-x root/root ./etc/wisp-agent/
-rw-r--r-- root/root ./etc/wisp-agent/config.toml
drwxr-xr-x root/root ./usr/
drwxr-xr-x root/root ./usr/bin/
-rwxr-xr-x root/root ./usr/bin/wisp-agent
drwxr-xr-x root/root ./usr/lib/
drwxr-xr-x root/root ./usr/lib/systemd/
drwxr-xr-x root/root ./usr/lib/systemd/system/
-rw-r--r-- root/root ./usr/lib/systemd/system/wisp-agent.service
drwxr-xr-x root/root ./usr/share/
drwxr-xr-x root/root ./usr/share/bash-completion/
drwxr-xr-x root/root ./usr/share/bash-completion/completions/
-rw-r--r-- root/root ./usr/share/bash-completion/completions/wisp-agent
drwxr-xr-x root/root ./usr/share/doc/
drwxr-xr-x root/root ./usr/share/doc/wisp-agent/
-rw-r--r-- root/root ./usr/share/doc/wisp-agent/copyright
drwxr-xr-x root/root ./usr/share/fish/
drwxr-xr-x root/root ./usr/share/fish/vendor_completions.d/
-rw-r--r-- root/root ./usr/share/fish/vendor_completions.d/wisp-agent.fish
drwxr-xr-x root/root ./usr/share/man/
drwxr-xr-x root/root ./usr/share/man/man1/
-rw-r--r-- root/root ./usr/share/man/man1/wisp-agent.1.gz
drwxr-xr-x root/root ./usr/share/zsh/
drwxr-xr-x root/root ./usr/share/zsh/vendor-completions/
-rw-r--r-- root/root ./usr/share/zsh/vendor-completions/_wisp-agent"
got=$(dpkg-deb -c "$deb" | awk '{ print $1, $2, $6 }')
[ "$got" = "$expected" ] || fail "dpkg-deb -c lists:
$got
expected:
$expected"

# The man page renders and the completions parse in their shells (zsh and fish
# when installed).
mkdir "$tmp/data"
dpkg-deb -x "$deb" "$tmp/data"
share="$tmp/data/usr/share"
page=$(gzip -dc "$share/man/man1/wisp-agent.1.gz")
for section in NAME SYNOPSIS DESCRIPTION OPTIONS COMMANDS EXAMPLES FILES VERSION; do
    grep -q "^\.SH $section\$" <<<"$page" || fail "the man page has no $section section"
done
grep -q '^\.TH wisp-agent 1 ' <<<"$page" || fail "the man page has no .TH wisp-agent 1 header"
if command -v man >/dev/null 2>&1; then
    rendered=$(MANWIDTH=80 man -l "$share/man/man1/wisp-agent.1.gz" 2>&1) || fail "man -l wisp-agent.1.gz failed: $rendered"
    grep -q 'wisp-agent completions' <<<"$rendered" || fail "the rendered man page holds no examples:
$rendered"
fi
bash -n "$share/bash-completion/completions/wisp-agent" || fail "the bash completion does not parse"
grep -q 'complete .*wisp-agent' "$share/bash-completion/completions/wisp-agent" || fail "the bash completion registers nothing"
grep -qx '#compdef wisp-agent' <(head -n1 "$share/zsh/vendor-completions/_wisp-agent") || fail "_wisp-agent does not start with #compdef wisp-agent"
if command -v zsh >/dev/null 2>&1; then
    zsh -n "$share/zsh/vendor-completions/_wisp-agent" || fail "the zsh completion does not parse"
fi
if command -v fish >/dev/null 2>&1; then
    fish -n "$share/fish/vendor_completions.d/wisp-agent.fish" || fail "the fish completion does not parse"
fi
echo "package: the man page and the bash, zsh and fish completions are in place"

field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = wisp-agent ] || fail "Package: $(field Package)"
[ "$(field Version)" = "$version" ] || fail "Version: $(field Version), Cargo.toml says $version"
[ "$(field Architecture)" = "$arch" ] || fail "Architecture: $(field Architecture), want $arch"
[[ "$(field Installed-Size)" =~ ^[0-9]+$ ]] || fail "Installed-Size: $(field Installed-Size)"
{ [ -n "$(field Maintainer)" ] && [ -n "$(field Description)" ]; } || fail "no Maintainer or Description"
depends=$(field Depends)
[[ "$depends" =~ ^libc6\ \(\>=\ ([0-9.]+)\),\ libgcc-s1\ \(\>=\ [0-9.]+\),\ passwd$ ]] || fail "Depends: $depends"
libc_floor=${BASH_REMATCH[1]}
# The floor is the newest GLIBC_ version any symbol of the binary asks for.
while read -r v; do
    dpkg --compare-versions "$v" le "$libc_floor" || fail "Depends says libc6 >= $libc_floor, the binary needs GLIBC_$v"
done < <(readelf -VW "$bin" | sed -n 's/.*Name: GLIBC_\([0-9][0-9.]*\).*/\1/p' | sort -u)
dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$tmp" ./conffiles
[ "$(cat "$tmp/conffiles")" = /etc/wisp-agent/config.toml ] || fail "conffiles: $(cat "$tmp/conffiles")"
ctrl=$(dpkg-deb --ctrl-tarfile "$deb" | tar -tv | awk '{ print $1, $6 }' | sort)
ctrl_expected="-rw-r--r-- ./conffiles
-rw-r--r-- ./control
-rwxr-xr-x ./postinst
-rwxr-xr-x ./postrm
-rwxr-xr-x ./prerm
drwxr-xr-x ./"
[ "$ctrl" = "$(sort <<<"$ctrl_expected")" ] || fail "control archive:
$ctrl"
echo "package: $deb: contents, Depends: $depends, conffiles ok"

if [ "$(id -u)" != 0 ]; then
    echo "package: skipped installing the .deb: needs root (dpkg -i)"
    exit 0
fi
if dpkg-query -W -f='${Status}' wisp-agent 2>/dev/null | grep -q 'installed\|config-files' ||
    [ -e /usr/bin/wisp-agent ] || [ -e /etc/wisp-agent ] ||
    { [ -d /var/lib/wisp-agent ] && [ -n "$(ls -A /var/lib/wisp-agent)" ]; }; then
    echo "package: skipped installing the .deb: this machine has a wisp-agent of its own (package, /usr/bin/wisp-agent, /etc/wisp-agent or state in /var/lib/wisp-agent) that the purge would remove"
    exit 0
fi

echo "package: installing it for real"
user_existed=no
getent passwd wisp-agent >/dev/null && user_existed=yes
state_existed=no
[ -d /var/lib/wisp-agent ] && state_existed=yes
cleanup() {
    status=$?
    if [ "$status" != 0 ]; then
        echo "package: failed: purging wisp-agent" >&2
        dpkg --purge wisp-agent >/dev/null 2>&1 || true
    fi
    # Leave the machine's users and folders as they were.
    if [ "$user_existed" = no ] && getent passwd wisp-agent >/dev/null; then
        userdel wisp-agent >/dev/null 2>&1 || true
        groupdel wisp-agent >/dev/null 2>&1 || true
    fi
    if [ "$state_existed" = yes ]; then mkdir -p /var/lib/wisp-agent; fi
    cleanup_tmp
}
trap cleanup EXIT
systemd_runs=no
[ -d /run/systemd/system ] && systemd_runs=yes

out=$(dpkg -i "$deb" 2>&1) || fail "dpkg -i failed:
$out"
if [ "$systemd_runs" = no ]; then
    grep -q "systemd is not running here; the unit is enabled and starts at the next boot" <<<"$out" ||
        fail "postinst did not say the unit starts at the next boot:
$out"
fi
if [ "$systemd_runs" = yes ]; then
    # postinst enabled and started it; Type=notify: active means READY=1 came.
    systemctl --quiet is-enabled wisp-agent || fail "systemd runs, and postinst did not enable wisp-agent"
    systemctl --quiet is-active wisp-agent || fail "systemd runs, and wisp-agent is not active: $(systemctl status wisp-agent 2>&1 | tail -n 20)"
fi
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd wisp-agent) || fail "no user wisp-agent after the install"
{ [ "$home" = /var/lib/wisp-agent ] && [ "$shell" = /usr/sbin/nologin ] && [ "$uid" -lt 1000 ]; } ||
    fail "user wisp-agent: uid $uid, home $home, shell $shell; want a system user with /var/lib/wisp-agent and nologin"
getent group wisp-agent >/dev/null || fail "no group wisp-agent"
mode() { stat -c '%a %U:%G' "$1"; }
[ "$(mode /usr/bin/wisp-agent)" = "755 root:root" ] || fail "/usr/bin/wisp-agent: $(mode /usr/bin/wisp-agent)"
[ "$(mode /etc/wisp-agent/config.toml)" = "644 root:root" ] || fail "config.toml: $(mode /etc/wisp-agent/config.toml)"
unit=/usr/lib/systemd/system/wisp-agent.service
[ "$(mode $unit)" = "644 root:root" ] || fail "$unit: $(mode $unit)"
grep -qx 'ExecStart=/usr/bin/wisp-agent run --config /etc/wisp-agent/config.toml' $unit || fail "$unit: $(grep ^ExecStart $unit)"
link=/etc/systemd/system/multi-user.target.wants/wisp-agent.service
{ [ -L "$link" ] && [ -f "$(readlink -f "$link")" ]; } || fail "$link is not a link to the unit: the unit is not enabled"
if command -v systemd-analyze >/dev/null 2>&1; then
    { v=$(systemd-analyze verify "$unit" 2>&1) && [ -z "$v" ]; } || fail "systemd-analyze verify $unit: $v"
fi
[ "$(wisp-agent --version)" = "wisp-agent $version" ] || fail "wisp-agent --version: $(wisp-agent --version)"
check=$(env -u WISP_AGENT_CONFIG wisp-agent config check 2>&1) || fail "wisp-agent config check failed:
$check"
grep -qx '# read from: /etc/wisp-agent/config.toml' <<<"$check" || fail "config check did not read /etc/wisp-agent/config.toml:
$check"
wisp-agent config check --config /etc/wisp-agent/config.toml >/dev/null

# A local change to the conffile survives a reinstall (and the postinst of an
# upgrade path runs: the user exists already).
printf '\n[admin]\nlisten = "127.0.0.1:9466"  # changed by .ci/package.sh\n' >>/etc/wisp-agent/config.toml
out=$(dpkg -i "$deb" 2>&1) || fail "reinstalling failed:
$out"
grep -q 'changed by .ci/package.sh' /etc/wisp-agent/config.toml || fail "the reinstall replaced the changed config.toml"
if [ "$systemd_runs" = no ]; then
    grep -q "the unit is enabled and starts at the next boot" <<<"$out" || fail "the reinstall did not enable the unit:
$out"
    # An admin's disable is kept by the next upgrade.
    systemctl disable wisp-agent >/dev/null 2>&1 || fail "systemctl disable wisp-agent failed"
    out=$(dpkg -i "$deb" 2>&1) || fail "reinstalling failed:
$out"
    grep -q "the unit stays disabled, as it was" <<<"$out" || fail "a reinstall over a disabled unit said:
$out"
    [ ! -e "$link" ] || fail "a reinstall enabled the unit the admin had disabled"
fi
wisp-agent config check --config /etc/wisp-agent/config.toml | grep -qx 'listen = "127.0.0.1:9466"' ||
    fail "config check does not show the changed listen address"

# What the daemon would have left (systemd creates the state directory).
mkdir -p /var/lib/wisp-agent/spool
echo '{}' >/var/lib/wisp-agent/positions.json
dpkg -r wisp-agent >/dev/null 2>&1 || fail "dpkg -r failed"
for gone in /usr/bin/wisp-agent $unit /usr/share/man/man1/wisp-agent.1.gz \
    /usr/share/bash-completion/completions/wisp-agent; do
    [ ! -e "$gone" ] || fail "dpkg -r left $gone"
done
if [ "$systemd_runs" = yes ] && systemctl --quiet is-active wisp-agent; then
    fail "dpkg -r left the service running"
fi
grep -q 'changed by .ci/package.sh' /etc/wisp-agent/config.toml || fail "dpkg -r did not keep the conffile"
[ -f /var/lib/wisp-agent/positions.json ] || fail "dpkg -r removed the state"
[ "$(dpkg-query -W -f='${Status}' wisp-agent)" = "deinstall ok config-files" ] ||
    fail "after dpkg -r: $(dpkg-query -W -f='${Status}' wisp-agent)"

dpkg --purge wisp-agent >/dev/null 2>&1 || fail "dpkg --purge failed"
for gone in /etc/wisp-agent /var/lib/wisp-agent "$link" /usr/bin/wisp-agent $unit \
    /var/lib/systemd/deb-systemd-helper-enabled/wisp-agent.service.dsh-also; do
    { [ ! -e "$gone" ] && [ ! -L "$gone" ]; } || fail "dpkg --purge left $gone"
done
if dpkg-query -W -f='${Status}' wisp-agent 2>/dev/null | grep -q 'installed\|config-files'; then
    fail "after dpkg --purge: $(dpkg-query -W -f='${Status}' wisp-agent)"
fi
echo "package: installed, reinstalled with a changed conffile, removed and purged"
