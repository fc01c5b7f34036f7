#!/usr/bin/env python3
"""The VM test: wisp-agent installed in a real Debian 12 guest the way users
install it, checked under real systemd against this crate's fake Loki and
fake OTLP collector on the host side.

    sudo tests/vm/run.py                 both scenarios, one after the other
    sudo tests/vm/run.py --jobs 2        both at once, each in its own namespace (CI)
    sudo tests/vm/run.py cloud-init      one of them: cloud-init | lima
    sudo tests/vm/run.py --keep          keep the run's folder (consoles, guest outputs)

Root (network namespaces, virtiofsd), Python 3 (stdlib), apt. It installs
what it needs (mmdebstrap, cloud-image-utils, QEMU 7.2 and its virtiofsd
unpacked into the cache, their libraries), builds or reuses the guest image
(tests/vm/image.sh, cached under $WISP_VM_CACHE or ~/.cache/wisp-agent-vm,
keyed by a hash of image.sh), builds the .deb from target/debug/wisp-agent
(or $WISP_VM_BINARY) with packaging/deb/build.sh, and runs each scenario in
a network namespace of its own: QEMU with user-mode networking, the fake
Loki and collector (tests/vm_receivers.rs) on the namespace's 127.0.0.1,
which the guest reaches through QEMU's host address. Nothing leaves the
namespace: it has no interface but loopback. The guest's side comes back
through the shared folder (virtiofs; tests/vm/guest/runner.sh runs the
commands the host drops there) and the serial console; no SSH.

The scenarios (the functions `scenario_*` below read as the user story):

- cloud-init: libvirt's default network (host 192.168.122.1, no hosts
  entry), the NoCloud seed's user-data packaging/cloud-init/user-data.yaml
  byte for byte, the package from the shared folder; the unit under real
  systemd (Type=notify, seccomp, exposure, capabilities, spool modes),
  probe and status, then a `systemctl kill -s KILL` and a reboot while the
  host receivers are down: every line and span arrives once when they are
  back.
- lima: Lima's user-mode network (host 192.168.5.2, host.lima.internal in
  /etc/hosts), provisioned as Lima does (a per-boot script running the
  cidata's provision.system/ scripts; ours is the `script:` of
  packaging/lima/wisp-agent.yaml byte for byte); the Ralph loop of
  tests/ralph_loop.rs (a tmux pane piped into a tailed file, `wisp-agent
  exec` around the Node app with pino and the OpenTelemetry SDK) in the
  guest; then a stale host.lima.internal entry, which discovery passes by.

Every wait is bounded; a failure stops the scenario, and everything started
is stopped and removed (the namespace, QEMU, virtiofsd, the receivers).
Figures (image build, boot to first push, the agent's RSS and CPU in the
guest, each scenario's time) are printed at the end.
"""

import argparse
import atexit
import hashlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "vm"
CACHE = Path(os.environ.get("WISP_VM_CACHE") or Path.home() / ".cache" / "wisp-agent-vm")
SDK_DIR = Path(os.environ.get("WISP_SDK_DIR") or Path.home() / ".cache" / "wisp-agent-sdks")

# Bounds on every wait (seconds), for TCG on two loaded cores.
BOOT_LIMIT = 420  # QEMU start (or a reboot) to the runner's first word
CLOUD_INIT_LIMIT = 480  # cloud-init's first boot, the install included
ARRIVAL_LIMIT = 90  # a line or span written in the guest reaching the host
SCENARIO_LIMIT = 15 * 60  # QEMU is killed after this, whatever happens

T0 = time.monotonic()
FIGURES = {}


def say(msg):
    # Scenarios run side by side (--jobs) say which they are.
    who = threading.current_thread().name
    who = "" if who == "MainThread" else f"{who}: "
    print(f"vm [{time.monotonic() - T0:6.1f}s] {who}{msg}", flush=True)


class Failed(Exception):
    """A check did not hold: the message says what the user would see."""


def check(cond, msg):
    if not cond:
        raise Failed(msg)


def sh(*argv, check=True, capture=True, env=None, timeout=600, cwd=None):
    """Runs a command on the host; its stdout (text) when captured."""
    p = subprocess.run(
        [str(a) for a in argv],
        check=False,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        env=env,
        timeout=timeout,
        cwd=cwd,
    )
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {p.returncode}:\n{p.stdout or ''}")
    return p.stdout or ""


# --- What the harness needs on the host --------------------------------------

APT_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "cloud-localds": "cloud-image-utils",
    "genisoimage": "genisoimage",
    "mke2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "ip": "iproute2",
    "dpkg-deb": "dpkg",
    "readelf": "binutils",
}
QEMU_PACKAGES = ["qemu-system-x86", "qemu-system-common", "qemu-system-data"]
_apt_updated = False


def apt_install(packages):
    global _apt_updated
    if not packages:
        return
    if not _apt_updated:
        sh("apt-get", "update", "-qq")
        _apt_updated = True
    say(f"installing {' '.join(sorted(packages))} with apt")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *sorted(packages), env=env)


def ensure_tools():
    """Debian's tools, and QEMU 7.2 (with virtiofsd, which later QEMUs dropped)
    unpacked into the cache: `apt-get install qemu-system-x86` would fight a
    newer qemu-utils installed from backports, as on this project's machines."""
    apt_install({pkg for tool, pkg in APT_TOOLS.items() if shutil.which(tool) is None})
    qemu = qemu_dir()
    if (qemu / ".unpacked").exists():
        return qemu
    global _apt_updated
    if not _apt_updated:
        sh("apt-get", "update", "-qq")
        _apt_updated = True
    # Their libraries (and firmware) from apt; the three packages unpacked.
    deps = set()
    for line in sh("apt-cache", "depends", "--no-recommends", "--no-suggests", *QEMU_PACKAGES).splitlines():
        m = re.match(r"\s+(?:Pre)?Depends: (\S+)", line)
        if m and not m.group(1).startswith(("<", "qemu-")):
            deps.add(m.group(1))
    apt_install(deps)
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".qemu."))
    try:
        os.chmod(tmp, 0o755)
        sh("apt-get", "download", *QEMU_PACKAGES, cwd=tmp)
        for deb in sorted(tmp.glob("*.deb")):
            sh("dpkg-deb", "-x", deb, tmp / "root")
        (tmp / "root" / ".unpacked").touch()
        if qemu.exists():
            shutil.rmtree(qemu)
        (tmp / "root").rename(qemu)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"QEMU unpacked in {qemu}: {sh(qemu / 'usr/bin/qemu-system-x86_64', '--version', env=qemu_env()).splitlines()[0]}")
    return qemu


def qemu_dir():
    version = "unknown"
    out = sh("apt-cache", "policy", "qemu-system-x86", check=False)
    m = re.search(r"Candidate: (\S+)", out)
    if m and m.group(1) != "(none)":
        version = re.sub(r"[^A-Za-z0-9.+~-]", "_", m.group(1))
    return CACHE / f"qemu-{version}"


def qemu_env():
    return dict(os.environ, QEMU_MODULE_DIR=str(qemu_dir() / "usr/lib/x86_64-linux-gnu/qemu"))


def accel():
    """KVM only where a usable one answers: /dev/kvm of kvm_pvm (these
    machines) cannot boot a stock kernel, so TCG there."""
    want = os.environ.get("WISP_VM_ACCEL")
    if want:
        return want
    modules = set(os.listdir("/sys/module")) if os.path.isdir("/sys/module") else set()
    usable = os.path.exists("/dev/kvm") and ({"kvm_intel", "kvm_amd"} & modules) and "kvm_pvm" not in modules
    return "kvm" if usable else "tcg"


# --- The guest image -----------------------------------------------------------


def image():
    """The cached image for the current tests/vm/image.sh, built when missing."""
    key = hashlib.sha256((HERE / "image.sh").read_bytes()).hexdigest()[:16]
    images = CACHE / "images"
    out = images / key
    if (out / "built").exists():
        FIGURES["image"] = f"cached ({key}; built in {(out / 'built').read_text().strip()} s)"
        say(f"guest image {out} (cached)")
        return out
    images.mkdir(parents=True, exist_ok=True)
    # One image at a time: others are older versions of image.sh.
    for old in images.iterdir():
        shutil.rmtree(old, ignore_errors=True)
    say(f"building the guest image {key} (tests/vm/image.sh; a cold build takes about 2-5 min)")
    started = time.monotonic()
    tmp = images / f".{key}.{os.getpid()}"
    try:
        sh(HERE / "image.sh", tmp, CACHE / "apt-archives", timeout=1200, capture=False)
        seconds = round(time.monotonic() - started)
        (tmp / "built").write_text(f"{seconds}\n")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    FIGURES["image"] = f"built in {seconds} s ({key})"
    say(f"guest image built in {seconds} s")
    return out


# --- The run's pieces --------------------------------------------------------------


def cargo_artifacts():
    """The agent binary and the receivers' test binary, built if needed."""
    binary = os.environ.get("WISP_VM_BINARY")
    if not binary:
        sh("cargo", "build", "--bin", "wisp-agent", cwd=ROOT, timeout=1800, capture=False)
        binary = ROOT / "target/debug/wisp-agent"
    out = sh("cargo", "test", "--no-run", "--test", "vm_receivers", "--message-format=json", cwd=ROOT, timeout=1800)
    receivers = None
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "vm_receivers" and msg.get("executable"):
            receivers = msg["executable"]
    check(receivers, "cargo did not build tests/vm_receivers.rs")
    return Path(binary), Path(receivers)


def build_deb(binary, dist):
    dist.mkdir(parents=True, exist_ok=True)
    # Uncompressed: the guest unpacks it under emulation.
    env = dict(os.environ, WISP_DEB_COMPRESS="none")
    deb = sh(ROOT / "packaging/deb/build.sh", binary, "amd64", dist, env=env).strip().splitlines()[-1]
    return Path(deb)


def embedded_script(path, marker):
    """The script a provisioning YAML carries after `marker` (a block scalar
    indented six spaces), as packaging/embed-provision.sh puts it there."""
    lines = Path(path).read_text().splitlines(keepends=True)
    start = [i for i, l in enumerate(lines) if l.rstrip("\n") == marker]
    check(len(start) == 1, f"{path}: no single line {marker!r}")
    return "".join(l[6:] if l.strip() else "\n" for l in lines[start[0] + 1 :])


class Netns:
    """A network namespace with nothing but loopback: what runs in it can reach
    only itself."""

    def __init__(self, name):
        self.name = name
        sh("ip", "netns", "add", name)
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")

    def argv(self, *argv):
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    def delete(self):
        for pid in sh("ip", "netns", "pids", self.name, check=False).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "delete", self.name, check=False)


def stop_process(p, grace=5):
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def sweep_namespaces():
    """Namespaces (and what runs in them) of earlier runs that were killed
    before they could clean up."""
    for line in sh("ip", "netns", "list", check=False).splitlines():
        m = re.match(r"(wisp-vm-(\d+)-\S+)", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            say(f"removing {m.group(1)}, left by a run that was killed")
            ns = Netns.__new__(Netns)
            ns.name = m.group(1)
            ns.delete()


class Receivers:
    """tests/vm_receivers.rs in the namespace: fake Loki on :3100, fake
    collector on :4317/:4318, driven over its stdin."""

    def __init__(self, netns, binary, log):
        env = dict(os.environ, WISP_VM_RECEIVERS="1")
        self.p = subprocess.Popen(
            netns.argv(binary, "--ignored", "--exact", "serve_the_vm_test", "--nocapture", "--test-threads=1"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log, "w"),
            text=True,
            env=env,
        )
        self.answers = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._answer(30)  # "listening on ..."

    def _read(self):
        # libtest prints "test NAME ... " before the first answer, on its line.
        for line in self.p.stdout:
            at = line.find("vm-receivers: ")
            if at >= 0:
                self.answers.put(line[at + len("vm-receivers: ") :].rstrip("\n"))
        self.answers.put(None)

    def _answer(self, timeout):
        try:
            answer = self.answers.get(timeout=timeout)
        except queue.Empty:
            raise Failed(f"the receivers did not answer in {timeout} s")
        check(answer is not None and not answer.startswith("error"), f"the receivers answered {answer!r}")
        return answer

    def command(self, cmd, timeout=30):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self._answer(timeout)

    def stop(self):
        self.command("stop")

    def start(self):
        self.command("start")

    def dump(self):
        return json.loads(self.command("dump", timeout=60))

    def close(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
            except OSError:
                pass
        stop_process(self.p)


class Guest:
    """One QEMU VM in the namespace: direct kernel boot of the cached image
    through a qcow2 overlay, the seed as a second disk, the shared folder
    over virtiofs (tag `hosthome`), the console in a file."""

    def __init__(self, name, netns, img, workdir, share, seed, net):
        self.name, self.netns, self.workdir, self.share = name, netns, workdir, share
        self.ctl = share / "wisp-vm"
        (self.ctl / "cmd").mkdir(parents=True, exist_ok=True)
        (self.ctl / "out").mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / "guest/runner.sh", self.ctl / "runner.sh")
        self.console = workdir / "console.log"
        self.n = 0
        self.boots = set()
        overlay = workdir / "disk.qcow2"
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", img / "rootfs.qcow2", overlay)
        qemu = qemu_dir()
        sock = workdir / "virtiofs.sock"
        self.virtiofsd = subprocess.Popen(
            netns.argv(qemu / "usr/lib/qemu/virtiofsd", f"--socket-path={sock}", "-o", f"source={share},cache=none"),
            stdout=open(workdir / "virtiofsd.log", "w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not sock.exists():
            check(time.monotonic() < deadline and self.virtiofsd.poll() is None, f"virtiofsd did not start: {(workdir / 'virtiofsd.log').read_text()}")
            time.sleep(0.05)
        mem = "1536"
        a = accel()
        argv = [
            qemu / "usr/bin/qemu-system-x86_64",
            "-name", name,
            "-machine", f"q35,accel={a}",
            "-cpu", "max" if a == "tcg" else "host",
            # One vCPU: under TCG a second one is a thread the host may not run
            # for seconds (two guests side by side on two cores), and a guest
            # kernel waiting on it in a cross-CPU call (module loading patches
            # text on every CPU) stalled a boot past BOOT_LIMIT.
            "-smp", "1",
            "-m", mem,
            "-object", f"memory-backend-memfd,id=mem,size={mem}M,share=on",
            "-numa", "node,memdev=mem",
            # Firmware: SeaBIOS from apt, the rest from qemu-system-data.
            "-L", "/usr/share/seabios",
            "-L", qemu / "usr/share/qemu",
            "-nodefaults", "-display", "none", "-no-user-config",
            "-serial", f"file:{self.console}",
            "-kernel", img / "vmlinuz",
            "-initrd", img / "initrd.img",
            "-append", "root=/dev/vda rw console=ttyS0 audit=1 systemd.show_status=1",
            "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
            "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
            "-netdev", f"user,id=net0,{net}",
            "-device", "virtio-net-pci,netdev=net0,romfile=",
            "-chardev", f"socket,id=fs0,path={sock}",
            "-device", "vhost-user-fs-pci,chardev=fs0,tag=hosthome",
            "-device", "virtio-rng-pci",
        ]
        self.started = time.time()
        self.qemu = subprocess.Popen(
            netns.argv("timeout", "-s", "KILL", str(SCENARIO_LIMIT), *argv),
            stdout=open(workdir / "qemu.log", "w"),
            stderr=subprocess.STDOUT,
            env=qemu_env(),
        )
        say(f"QEMU started ({a}, {mem} MiB, {net.split(',')[0]})")

    def alive(self):
        return self.qemu.poll() is None

    def console_tail(self, n=30):
        try:
            return "".join(self.console.read_text(errors="replace").splitlines(keepends=True)[-n:])
        except OSError:
            return ""

    def wait_boot(self, limit=BOOT_LIMIT):
        """Waits for a boot not seen before to start the runner; its uptime."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            check(self.alive(), f"QEMU exited ({self.qemu.returncode}); the console's end:\n{self.console_tail()}")
            for f in (self.ctl / "out").glob("boot-*"):
                boot = f.name[len("boot-") :]
                if boot not in self.boots and not boot.endswith(".tmp"):
                    self.boots.add(boot)
                    return float(f.read_text().strip() or 0)
            time.sleep(0.5)
        raise Failed(f"the guest did not come up in {limit} s; the console's end:\n{self.console_tail()}")

    def run(self, script, limit=120, ok=True):
        """Runs `script` (sh) as root in the guest; (exit status, output).
        With ok=True a non-zero status fails the check."""
        self.n += 1
        n = f"{self.n:04d}"
        cmd = self.ctl / "cmd"
        (cmd / f"{n}.limit").write_text(f"{limit}\n")
        (cmd / f"{n}.tmp").write_text(script + "\n")
        (cmd / f"{n}.tmp").rename(cmd / f"{n}.sh")
        rc_file = self.ctl / "out" / f"{n}.rc"
        deadline = time.monotonic() + limit + 30
        while not rc_file.exists():
            check(self.alive(), f"QEMU exited while running {script!r}; the console's end:\n{self.console_tail()}")
            check(time.monotonic() < deadline, f"no answer in {limit + 30} s from the guest to {script!r}")
            time.sleep(0.2)
        rc = int(rc_file.read_text().strip() or 255)
        out = (self.ctl / "out" / f"{n}.out").read_text(errors="replace")
        if ok:
            check(rc == 0, f"in the guest, {script!r} exited {rc}:\n{out}")
        return rc, out

    def reboot(self):
        """Reboots the guest and waits for it to be back; seconds it took."""
        started = time.monotonic()
        self.run("(sleep 1; systemctl reboot) >/dev/null 2>&1 &", limit=10)
        self.wait_boot()
        return time.monotonic() - started

    def close(self):
        if self.qemu is not None:
            stop_process(self.qemu, grace=3)
        stop_process(self.virtiofsd, grace=3)


# --- Checks shared by the scenarios ---------------------------------------------------


def wait_for(what, cond, limit=ARRIVAL_LIMIT, every=2.0):
    """Polls `cond` (returning a truthy value when done) until `limit`."""
    deadline = time.monotonic() + limit
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise Failed(f"{what}: not within {limit} s")
        time.sleep(every)


def cloud_init_done(guest):
    rc, out = guest.run("cloud-init status --wait --long", limit=CLOUD_INIT_LIMIT, ok=False)
    check(rc == 0 and "status: done" in out, f"cloud-init did not finish cleanly (exit {rc}):\n{out}\n"
          + guest.run("tail -n 40 /var/log/cloud-init-output.log", ok=False)[1])
    return out


def service_state(guest):
    _, out = guest.run("systemctl show wisp-agent -p Type -p ActiveState -p SubState -p NRestarts -p MainPID -p Result")
    return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)


def unit_is_up(guest):
    state = service_state(guest)
    check(state.get("Type") == "notify", f"the unit's Type is {state.get('Type')}, not notify")
    check(state.get("ActiveState") == "active" and state.get("SubState") == "running",
          f"wisp-agent is {state}; its journal:\n{guest.run('journalctl -u wisp-agent -n 40 --no-pager', ok=False)[1]}")
    return state


def denials_are_visible(guest):
    """The control for the check below: a program the same two settings run,
    making one call outside @system-service (swapoff), is logged."""
    guest.run("systemd-run --wait --quiet --unit=wisp-vm-denial-control -p SystemCallFilter= "
              "-p 'SystemCallLog=~@system-service' swapoff /nonexistent || true", limit=120)
    out = wait_for("the control's SECCOMP record in the journal", lambda: (lambda o: o if "swapoff" in o else None)(
        guest.run("journalctl -b --no-pager -o cat _TRANSPORT=audit | grep SECCOMP || true")[1]), limit=30, every=1)
    return [l for l in out.splitlines() if "swapoff" in l][0]


def journal_has_no_denials(guest):
    """Nothing the agent did hit its seccomp filter or MemoryDenyWriteExecute:
    the test drop-in logs every system call outside @system-service (audit
    type 1326, SECCOMP), and a denied W+X mapping fails the agent."""
    _, out = guest.run("journalctl -b --no-pager -o cat _TRANSPORT=audit _TRANSPORT=kernel | grep -i -E 'seccomp|type=1326' || true")
    _, comm = guest.run("systemctl show wisp-agent -p MainPID --value")
    pid = comm.strip()
    lines = [l for l in out.splitlines() if "wisp-agent" in l or f"pid={pid} " in l]
    check(not lines, f"system calls outside the unit's filter:\n" + "\n".join(lines[:10]))
    _, jr = guest.run("journalctl -u wisp-agent -b --no-pager -o cat | grep -i -E 'operation not permitted|EPERM|mprotect|SIGSYS|status=31' || true")
    check(not jr.strip(), f"the agent's journal shows a denial:\n{jr}")


def append_lines(guest, path, tag, count):
    """Appends `count` numbered lines to `path` in the guest, synced; returns them."""
    guest.run(f"for i in $(seq -w 1 {count}); do echo \"wisp-vm-test {tag} line $i\"; done >>{path}; sync {path}")
    return [f"wisp-vm-test {tag} line {i:0{len(str(count))}d}" for i in range(1, count + 1)]


def loki_lines(dump):
    return [e["line"] for e in dump["loki"]["entries"]]


def exactly_once(dump, expected, what):
    """Each expected line is in Loki once (one entry of the fake's, which keeps
    one per identical stream, timestamp and line, as Loki does), and no entry
    was received again after it was stored."""
    counts = {}
    for line in loki_lines(dump):
        counts[line] = counts.get(line, 0) + 1
    missing = [l for l in expected if counts.get(l, 0) == 0]
    doubled = [f"{l} x{counts[l]}" for l in expected if counts.get(l, 0) > 1]
    # Received again after being stored; of the expected lines only: a file's
    # identical lines read in one batch share a timestamp, and Loki, as the
    # fake, keeps one of them (another issue's), which is not a resend.
    want = set(expected)
    resent = [f"{e['line']} x{e['times']}" for e in dump["loki"]["resent"] if e["line"] in want]
    check(not missing and not doubled and not resent,
          f"{what}: {len(expected)} lines expected; missing {len(missing)} {missing[:3]}, "
          f"stored twice {len(doubled)} {doubled[:3]}, sent again {len(resent)} {resent[:3]}")


def arrived(receivers, expected):
    dump = receivers.dump()
    have = set(loki_lines(dump))
    return dump if all(l in have for l in expected) else None


def spans_once(dump, span_ids, what):
    counts = {}
    for s in dump["collector"]["spans"]:
        counts[s["span_id"]] = counts.get(s["span_id"], 0) + 1
    missing = [s for s in span_ids if counts.get(s, 0) == 0]
    doubled = [s for s in span_ids if counts.get(s, 0) > 1]
    check(not missing and not doubled, f"{what}: spans missing {missing}, received twice {doubled}")


def exec_run(guest, job, tag, count):
    """A `wisp-agent exec` run printing `count` numbered lines: its lines."""
    cmd = f"wisp-agent exec --name {job} -- sh -c 'for i in $(seq -w 1 {count}); do echo \"wisp-vm-test {tag} exec line $i\"; done'"
    guest.run(cmd)
    return [f"wisp-vm-test {tag} exec line {i:0{len(str(count))}d}" for i in range(1, count + 1)]


def run_spans(dump, job):
    return {s["span_id"] for s in dump["collector"]["spans"] if s["scope"] == "wisp-agent exec" and s["name"] == job}


def probe(guest, want_ok=True, tries=3):
    """`wisp-agent probe --json`, its exit status as expected. Its checks
    give up after 1 s (`host.probe_timeout`), which an emulated guest on a
    loaded machine sometimes needs: a probe that saw only timeouts is asked
    again, as a user would, up to `tries` times."""
    for attempt in range(1, tries + 1):
        rc, out = guest.run("wisp-agent probe --json", limit=60, ok=False)
        try:
            doc = json.loads(out[out.index("{"):])
        except ValueError:
            raise Failed(f"probe --json printed no JSON (exit {rc}):\n{out}")
        if (rc == 0) == want_ok:
            return doc
        timeouts = [f"{c['name']} {k}" for c in doc["candidates"] for k, v in c["services"].items()
                    if v.get("required") and v.get("status") == "timeout"]
        if not (want_ok and timeouts and attempt < tries):
            break
        say(f"probe: checks timed out under emulation ({', '.join(timeouts)}); asking again")
        time.sleep(5)
    raise Failed(f"probe exited {rc}, expected {'0' if want_ok else 'non-zero'}: {doc.get('verdict')}")


def status(guest):
    rc, out = guest.run("wisp-agent status --json", limit=30, ok=False)
    try:
        doc = json.loads(out[out.index("{"):])
    except ValueError:
        raise Failed(f"status --json printed no JSON (exit {rc}):\n{out}")
    return rc, doc


def quiet(guest, receivers, limit=90):
    """Waits until nothing moves: the agent's log buffer empty and what it
    shipped and what Loki received unchanged over 5 s; Loki's count then."""
    def reading():
        st = status(guest)[1]["loki"]
        return st["buffer"]["bytes"], st["records_shipped"], receivers.dump()["loki"]["received"]
    last = [None]

    def still():
        now = reading()
        same = now == last[0] and now[0] == 0
        last[0] = now
        return now if same else None

    try:
        return wait_for("the agent and Loki quiet", still, limit=limit, every=5)[2]
    except Failed as e:
        raise Failed(f"{e}; last (buffered bytes, status's shipped, Loki's received): {last[0]}")


def agent_usage(guest, name, window=30):
    """The agent's resident memory, and its CPU over `window` seconds of a
    quiet guest (host metrics and its own metrics still pushed), from /proc."""
    _, out = guest.run(
        "pid=$(systemctl show wisp-agent -p MainPID --value); hz=$(getconf CLK_TCK); "
        "t() { awk '{print $14+$15}' /proc/$pid/stat; }; a=$(t); "
        f"sleep {window}; b=$(t); "
        "echo ticks $a $b $hz; awk '/^(VmRSS|VmHWM):/ {print $1, $2}' /proc/$pid/status", limit=window + 30)
    f = {l.split()[0]: l.split()[1:] for l in out.splitlines() if l.strip()}
    a, b, hz = (int(x) for x in f["ticks"])
    rss, hwm = int(f["VmRSS:"][0]) / 1024, int(f["VmHWM:"][0]) / 1024
    FIGURES[f"agent in the guest ({name})"] = (
        f"RSS {rss:.1f} MiB (peak {hwm:.1f} MiB); CPU {100 * (b - a) / hz / window:.1f}% over {window} s quiet, "
        f"{a / hz:.1f} s since it started (under emulation)")


# --- Scenario: cloud-init on libvirt's default network ---------------------------------

LIBVIRT_NET = "net=192.168.122.0/24,host=192.168.122.1,dhcpstart=192.168.122.15"
LIMA_NET = "net=192.168.5.0/24,host=192.168.5.2,dhcpstart=192.168.5.15"

RUNNER_BOOTCMD = (
    "mountpoint -q {mnt} || {{ mkdir -p {mnt} && mount -t virtiofs hosthome {mnt}; }}; "
    # No default dependencies and no waiting: cloud-init runs this before
    # basic.target, which would wait for cloud-init.
    "systemd-run --unit=wisp-vm-runner --collect --quiet --no-block -p DefaultDependencies=no "
    "sh {mnt}/wisp-vm/runner.sh"
)

# The test's own audit drop-in: every system call outside the unit's
# @system-service set is logged (SECCOMP, audit type 1326) instead of
# failing with EPERM, so a call the filter would deny shows in the journal.
AUDIT_DROPIN = """[Service]
SystemCallFilter=
SystemCallLog=~@system-service
"""


def scenario_cloud_init(run):
    """A libvirt VM made with `--cloud-init user-data=packaging/cloud-init/user-data.yaml`
    and the host's folder shared over virtiofs, on libvirt's default NAT."""
    share = run.workdir / "share"
    deb = build_deb(run.binary, share / ".wisp-agent" / "dist")
    # The user's file as it is; the platform's part (the mount the file
    # shows commented, and the test's runner) in vendor-data.
    user_data = ROOT / "packaging/cloud-init/user-data.yaml"
    vendor = run.workdir / "vendor-data"
    vendor.write_text(
        "#cloud-config\n"
        "mounts:\n"
        '  - [hosthome, /mnt/hosthome, virtiofs, "defaults,nofail", "0", "0"]\n'
        "bootcmd:\n"
        f"  - [sh, -c, {json.dumps(RUNNER_BOOTCMD.format(mnt='/mnt/hosthome'))}]\n"
    )
    meta = run.workdir / "meta-data"
    meta.write_text("instance-id: wisp-vm-cloud-init\nlocal-hostname: libvirt-dev\n")
    seed = run.workdir / "seed.iso"
    sh("cloud-localds", "-V", vendor, seed, user_data, meta)

    guest = run.guest(share, seed, LIBVIRT_NET)
    up = guest.wait_boot()
    say(f"booted: the runner is up {up:.0f} s after the kernel started")
    cloud_init_done(guest)
    say("cloud-init finished: user-data.yaml ran provision.sh")
    _, schema = guest.run("cloud-init schema --system 2>&1; grep -h WARNING /var/log/cloud-init.log | head -n 5", ok=False)
    say(f"the guest's cloud-init on its configuration: {schema.strip()}")

    _, log = guest.run("cat /var/log/cloud-init-output.log")
    installing = f"wisp-agent provision: installing /mnt/hosthome/.wisp-agent/dist/{deb.name} (from a folder the host shares)"
    check(installing in log, f"provision.sh did not install the shared package; cloud-init-output.log:\n{log[-3000:]}")
    check("wisp-agent provision: wisp-agent 0.1.0 is installed; the service is enabled and active" in log,
          f"provision.sh did not report an active service:\n{log[-2000:]}")
    state = unit_is_up(guest)
    check(state["NRestarts"] == "0", f"the unit restarted {state['NRestarts']} times before any test")
    say(f"the unit is active through Type=notify (pid {state['MainPID']}, no restart)")

    # The first push came without configuration: the provisioning log.
    dump = wait_for("the provisioning log in Loki", lambda: (lambda d: d if d["loki"]["pushes"] else None)(run.receivers.dump()))
    first = dump["loki"]["first_push_unix"] or time.time()
    FIGURES["boot to first push (cloud-init)"] = f"{first - guest.started:.0f} s (QEMU start to the fake Loki's first push)"
    first_lines = [l for l in log.splitlines() if l.startswith("Cloud-init v.")][:1] + [installing]
    dump = wait_for("the provisioning log's lines in Loki", lambda: arrived(run.receivers, first_lines))
    check(all(e["labels"].get("job") == "cloud-init" for e in dump["loki"]["entries"] if e["line"] in first_lines),
          "the provisioning log's lines are not in job=cloud-init")
    exactly_once(dump, first_lines, "lines cloud-init wrote before and during the install")
    say("the provisioning log reached Loki, lines written before the install included, once each")

    # Discovery on libvirt's NAT: no hosts entry, the default route's gateway.
    doc = probe(guest)
    check(doc["chosen"] and doc["chosen"]["address"] == "192.168.122.1",
          f"probe chose {doc['chosen']}, not libvirt's gateway 192.168.122.1: {doc['verdict']}")
    lima = [c for c in doc["candidates"] if c["name"] == "host.lima.internal"][0]
    check(lima["resolution"]["via"] == "failed", f"host.lima.internal resolved on libvirt: {lima['resolution']}")
    rc, st = status(guest)
    check(rc == 0 and st["health"]["ok"], f"status exited {rc}: {st['health']}")
    check(st["host"]["address"] == "192.168.122.1", f"status shows host {st['host']}")
    say(f"probe and status: host {doc['chosen']['name']} ({doc['chosen']['address']}), healthy")

    # The unit as systemd runs it.
    _, sec = guest.run("systemd-analyze security wisp-agent.service --no-pager | tail -n 1")
    m = re.search(r"exposure level for wisp-agent\.service: ([0-9.]+)", sec)
    check(m and float(m.group(1)) <= 3.0, f"systemd-analyze security: {sec.strip()}")
    FIGURES["exposure (systemd-analyze security, in the guest)"] = m.group(1)
    pid = state["MainPID"]
    _, proc = guest.run(f"grep -E '^(CapEff|CapPrm|NoNewPrivs|Seccomp):' /proc/{pid}/status; stat -c '%U' /proc/{pid}")
    caps = dict(re.findall(r"^(\w+):\s+(\S+)", proc, re.M))
    check(caps.get("CapEff") == "0000000000000004", f"effective capabilities {caps.get('CapEff')}, want CAP_DAC_READ_SEARCH only")
    check(caps.get("Seccomp") == "2" and caps.get("NoNewPrivs") == "1", f"seccomp {caps.get('Seccomp')}, NoNewPrivs {caps.get('NoNewPrivs')}")
    check(proc.strip().endswith("wisp-agent"), f"the agent runs as {proc.strip().split()[-1]}")
    _, loose = guest.run("find /var/lib/wisp-agent -path /var/lib/wisp-agent/exec -prune -o -type f -perm /o=r -print")
    check(not loose.strip(), f"state files readable by every user:\n{loose}")
    _, spool = guest.run("find /var/lib/wisp-agent/spool -type f | head -n 3 | xargs -r stat -c '%a %U %n'")
    check(spool.strip(), "no spool file under /var/lib/wisp-agent/spool")
    say(f"exposure {m.group(1)}, CapEff CAP_DAC_READ_SEARCH, seccomp on, spool files {spool.split()[0]}")

    # Denials made visible: the audit drop-in, then exec runs and lines.
    guest.run(
        "mkdir -p /etc/systemd/system/wisp-agent.service.d && "
        f"printf '%s' '{AUDIT_DROPIN}' >/etc/systemd/system/wisp-agent.service.d/90-vm-test-audit.conf && "
        "systemctl daemon-reload && systemctl restart wisp-agent", limit=120)
    unit_is_up(guest)
    expected = append_lines(guest, "/var/log/cloud-init-output.log", "before", 20)
    expected += exec_run(guest, "vmtest", "before", 5)
    dump = wait_for("lines written with the host up", lambda: arrived(run.receivers, expected))
    exactly_once(dump, expected, "lines written with the host up")
    spans = run_spans(dump, "vmtest")
    check(len(spans) == 1, f"{len(spans)} run spans of the exec run, want 1")
    say("lines of a file and of `wisp-agent exec` arrive once each; the run's span too")

    # The host goes away: a SIGKILL, then a reboot, while it is down.
    run.receivers.stop()
    expected += append_lines(guest, "/var/log/cloud-init-output.log", "outage-a", 30)
    expected += exec_run(guest, "vmtest", "outage-a", 5)
    wait_for("the agent buffering the outage's lines", lambda: status(guest)[1]["loki"]["buffer"]["bytes"] > 0, limit=120)
    rc, st = status(guest)
    check(rc == 0 and st["loki"]["last_error"], f"status with the host down: exit {rc}, last error {st['loki']['last_error']!r}")
    doc = probe(guest, want_ok=False)
    check(doc["chosen"] is None or not doc["verdict"]["ok"], f"probe with the host down: {doc['verdict']}")
    say(f"host down: status shows {st['loki']['buffer']['bytes']} bytes buffered and the error; probe exits 1: {doc['verdict']['summary']}")
    guest.run("systemctl kill -s KILL wisp-agent", limit=20)
    expected += append_lines(guest, "/var/log/cloud-init-output.log", "after-kill", 30)
    wait_for("systemd restarting the agent after SIGKILL",
             lambda: (lambda s: s["ActiveState"] == "active" and s["NRestarts"] != "0")(service_state(guest)), limit=120)
    expected += exec_run(guest, "vmtest", "after-kill", 5)
    expected += append_lines(guest, "/var/log/cloud-init-output.log", "before-reboot", 30)
    took = guest.reboot()
    say(f"the guest rebooted in {took:.0f} s, the host still down")
    unit_is_up(guest)
    expected += append_lines(guest, "/var/log/cloud-init-output.log", "after-reboot", 30)
    expected += exec_run(guest, "vmtest", "after-reboot", 5)
    run.receivers.start()
    dump = wait_for("every line written during the outage", lambda: arrived(run.receivers, expected), limit=180)
    exactly_once(dump, expected, "lines written across a SIGKILL and a reboot with the host down")
    spans = run_spans(dump, "vmtest")
    check(len(spans) == 4, f"{len(spans)} run spans of the 4 exec runs")
    spans_once(dump, spans, "the exec runs' spans")
    say(f"host back: {len(expected)} lines and 4 run spans, each once")

    journal_has_no_denials(guest)
    control = denials_are_visible(guest)
    say(f"the control call outside the filter is logged: {control[:120]}")
    wait_for("status agreeing with Loki", lambda: (lambda s: s[1]["loki"]["buffer"]["bytes"] == 0 and s[1]["loki"]["last_push_seconds_ago"] is not None)(status(guest)), limit=120)
    rc, st = status(guest)
    check(rc == 0 and st["health"]["ok"] and st["host"]["address"] == "192.168.122.1", f"status after the outage: {st}")
    probe(guest)
    agent_usage(guest, "cloud-init, quiet after the outage")
    say("no denial in the journal; probe and status healthy again")


# --- Scenario: Lima ---------------------------------------------------------------------


def lima_seed(run, share_mount):
    """A NoCloud seed as Lima makes one (cidata): its user-data's mounts, user
    and per-boot script, which runs boot.sh from the seed, which runs every
    provision.system/ script; ours holds wisp-agent.yaml's `script:`."""
    cidata = run.workdir / "cidata"
    (cidata / "provision.system").mkdir(parents=True)
    script = embedded_script(ROOT / "packaging/lima/wisp-agent.yaml", "    script: |")
    check(script == (ROOT / "packaging/provision.sh").read_text(), "wisp-agent.yaml's script is not provision.sh")
    (cidata / "provision.system" / "00000000").write_text(script)
    os.chmod(cidata / "provision.system" / "00000000", 0o755)
    (cidata / "boot.sh").write_text(
        "#!/bin/sh\n"
        "# As Lima's boot.sh: every provision.system script, in order.\n"
        "set -eu\n"
        "echo \"LIMA $(date -Iseconds)| host.lima.internal is 192.168.5.2\"\n"
        "CODE=0\n"
        'for f in "${LIMA_CIDATA_MNT}"/provision.system/*; do\n'
        '    echo "LIMA $(date -Iseconds)| Executing $f"\n'
        '    if ! "$f"; then echo "LIMA $(date -Iseconds)| WARNING: Failed to execute $f"; CODE=1; fi\n'
        "done\n"
        "exit $CODE\n"
    )
    os.chmod(cidata / "boot.sh", 0o755)
    (cidata / "meta-data").write_text("instance-id: wisp-vm-lima\nlocal-hostname: lima-dev\n")
    (cidata / "user-data").write_text(
        "#cloud-config\n"
        "mounts:\n"
        f'- [hosthome, {share_mount}, virtiofs, "rw,nofail", "0", "0"]\n'
        "users:\n"
        '  - name: "dev"\n'
        '    uid: "501"\n'
        '    homedir: "/home/dev.linux"\n'
        "    shell: /bin/sh\n"
        "    lock_passwd: true\n"
        "write_files:\n"
        " - content: |\n"
        "      #!/bin/sh\n"
        "      set -eux\n"
        '      LIMA_CIDATA_MNT="/mnt/lima-cidata"\n'
        '      LIMA_CIDATA_DEV="/dev/disk/by-label/cidata"\n'
        '      mkdir -p -m 700 "${LIMA_CIDATA_MNT}"\n'
        '      mountpoint -q "${LIMA_CIDATA_MNT}" || mount -o ro,mode=0700,dmode=0700,overriderockperm,exec,uid=0 "${LIMA_CIDATA_DEV}" "${LIMA_CIDATA_MNT}"\n'
        "      export LIMA_CIDATA_MNT\n"
        '      exec "${LIMA_CIDATA_MNT}"/boot.sh\n'
        "   owner: root:root\n"
        "   path: /var/lib/cloud/scripts/per-boot/00-lima.boot.sh\n"
        "   permissions: '0755'\n"
        "bootcmd:\n"
        "- |\n"
        "  grep -q host.lima.internal /etc/hosts || echo '192.168.5.2 host.lima.internal' >>/etc/hosts\n"
        f"- [sh, -c, {json.dumps(RUNNER_BOOTCMD.format(mnt=share_mount))}]\n"
    )
    seed = run.workdir / "seed.iso"
    sh("genisoimage", "-quiet", "-output", seed, "-volid", "cidata", "-joliet", "-rock", cidata)
    return seed


def scenario_lima(run):
    """A Lima (or Colima) VM with wisp-agent.yaml's provision: entry pasted in,
    the home folder shared, on Lima's user-mode network; then the Ralph loop."""
    share = run.workdir / "share"  # the host user's home, as Lima mounts it
    mount = "/home/dev"
    deb = build_deb(run.binary, share / ".wisp-agent" / "dist")
    # The Ralph loop's Node app and its installed SDKs (.ci/sdks.sh).
    app = share / "ralph-node"
    app.mkdir(parents=True)
    for f in ("app.js", "instrumentation.js"):
        shutil.copy(ROOT / "tests/ralph/node" / f, app / f)
    modules = SDK_DIR / "node" / "node_modules"
    check((modules / "pino").is_dir() and (modules / "@opentelemetry/sdk-node").is_dir(),
          f"the Ralph loop's SDKs are not in {modules}: run .ci/sdks.sh")
    # One file: reading 13,000 small files over virtiofs under emulation
    # takes minutes, unpacking them on the guest's disk seconds.
    sh("tar", "-C", modules.parent, "-cf", app / "node_modules.tar", "node_modules")
    records = share / "ralph-records"
    records.mkdir()
    # The host user's files, as the guest's user (uid 501, as on a Mac) sees them.
    for p in (share, records):
        os.chown(p, 501, 501)
    seed = lima_seed(run, mount)

    guest = run.guest(share, seed, LIMA_NET)
    up = guest.wait_boot()
    say(f"booted: the runner is up {up:.0f} s after the kernel started")
    cloud_init_done(guest)
    _, log = guest.run("cat /var/log/cloud-init-output.log")
    check(f"wisp-agent provision: installing {mount}/.wisp-agent/dist/{deb.name} (from a folder the host shares)" in log,
          f"Lima's provision script did not install the shared package:\n{log[-3000:]}")
    unit_is_up(guest)
    dump = wait_for("a first push", lambda: (lambda d: d if d["loki"]["pushes"] else None)(run.receivers.dump()))
    FIGURES["boot to first push (lima)"] = f"{(dump['loki']['first_push_unix'] or time.time()) - guest.started:.0f} s"
    doc = probe(guest)
    check(doc["chosen"] == {"name": "host.lima.internal", "address": "192.168.5.2"}, f"probe chose {doc['chosen']}")
    say("provisioned by Lima's provision script; discovery chose host.lima.internal (192.168.5.2)")

    ralph_loop(run, guest)

    # A stale hosts entry: host.lima.internal names an address where nothing
    # answers; discovery passes it by for the default route's gateway.
    before = quiet(guest, run.receivers)
    guest.run("sed -i 's/^192.168.5.2 host.lima.internal/192.168.5.99 host.lima.internal/' /etc/hosts && "
              "grep -q '^192.168.5.99 host.lima.internal' /etc/hosts && systemctl restart wisp-agent", limit=120)
    unit_is_up(guest)
    doc = probe(guest)
    stale = [c for c in doc["candidates"] if c["name"] == "host.lima.internal"][0]
    check(stale["address"] == "192.168.5.99" and stale["services"]["loki"]["status"] != "ok", f"the stale entry: {stale}")
    check(doc["chosen"] == {"name": "gateway", "address": "192.168.5.2"}, f"with a stale entry probe chose {doc['chosen']}")
    lines = append_lines(guest, "/var/log/cloud-init-output.log", "stale-hosts", 10)
    dump = wait_for("lines after the stale entry", lambda: arrived(run.receivers, lines))
    exactly_once(dump, lines, "lines shipped past a stale host.lima.internal")
    rc, st = status(guest)
    check(st["host"] == {"candidate": "gateway", "address": "192.168.5.2"}, f"status shows host {st['host']}")
    # What status says it shipped since the restart is what Loki received.
    received = quiet(guest, run.receivers) - before
    shipped = status(guest)[1]["loki"]["records_shipped"]
    check(shipped == received, f"status says {shipped} lines shipped since the restart, Loki received {received}")
    say(f"status: {shipped} lines shipped since the restart, as many as Loki received")
    say("a stale host.lima.internal entry: probe and status say gateway 192.168.5.2, lines arrive")
    agent_usage(guest, "lima, idle after the Ralph loop and a restart")


def ralph_loop(run, guest):
    """tests/ralph_loop.rs's Node loop, in the guest as its user: a tmux pane
    piped into a file the agent tails, three `wisp-agent exec` iterations."""
    home = "/home/dev.linux"
    guest.run(
        "cat >>/etc/wisp-agent/config.toml <<'EOF'\n"
        "\n[[files]]\nname = \"pane\"\npaths = [\"/home/*/ralph/pane.log\"]\nstart_at = \"beginning\"\nEOF\n"
        "wisp-agent config check >/dev/null && systemctl restart wisp-agent")
    unit_is_up(guest)
    records = "/home/dev/ralph-records"  # in the shared folder: the host reads them
    guest.run(
        f"runuser -u dev -- mkdir -p {home}/ralph {records} && "
        f"runuser -u dev -- cp -r /home/dev/ralph-node/app.js /home/dev/ralph-node/instrumentation.js {home}/ralph/ && "
        f"runuser -u dev -- tar -C {home}/ralph -xf /home/dev/ralph-node/node_modules.tar && "
        f"cd {home}/ralph && runuser -u dev -- env HOME={home} tmux new-session -d -s ralph -x 200 -y 50 "
        f"-e RALPH_RECORDS={records} && "
        f"runuser -u dev -- tmux pipe-pane -o -t ralph 'cat >> {home}/ralph/pane.log'", limit=300)
    loop = ("for i in 1 2 3; do wisp-agent exec --name ralph --label iter=$i -- "
            "node --require ./instrumentation.js app.js; done; touch /home/dev/ralph-finished")
    started = time.monotonic()
    guest.run(f"runuser -u dev -- tmux send-keys -t ralph {shlex.quote(loop)} Enter")
    wait_for("the Ralph loop finishing", lambda: (run.workdir / "share/ralph-finished").exists(), limit=300)
    FIGURES["Ralph loop in the guest (3 Node iterations)"] = f"{time.monotonic() - started:.0f} s"
    runs = []
    for f in sorted((run.workdir / "share/ralph-records").glob("node-*.log")):
        text = f.read_text().splitlines()
        head = json.loads(text[0])
        runs.append({
            "id": head["traceparent"].split("-")[1],
            "iter": dict(kv.split("=", 1) for kv in head["resource"].split(",") if "=" in kv).get("iter"),
            "lines": text[1:],
        })
    check(len(runs) == 3 and all(len(r["id"]) == 32 and len(r["lines"]) >= 7 for r in runs),
          f"the loop's runs: {[(r['id'], r['iter'], len(r['lines'])) for r in runs]}")
    printed = [l for r in runs for l in r["lines"]]
    dump = wait_for("the Ralph loop's lines", lambda: arrived(run.receivers, printed), limit=120)

    def all_spans():
        d = run.receivers.dump()
        ids = {s["resource"].get("wisp.run.id") for s in d["collector"]["spans"]}
        return d if all(r["id"] in ids for r in runs) and all(r["id"] in {s["trace_id"] for s in d["collector"]["spans"] if s["scope"] == "wisp-agent exec"} for r in runs) else None

    dump = wait_for("the Ralph loop's spans", all_spans, limit=120)
    guest.run("sync; sleep 3")
    dump = run.receivers.dump()
    exactly_once(dump, printed, "the lines the Ralph loop printed, across every job")
    problems = []
    for r in runs:
        for line in r["lines"]:
            e = next((e for e in dump["loki"]["entries"] if e["line"] == line), None)
            labels = e["labels"] if e else {}
            want = {"job": "ralph", "iter": r["iter"], "user": "dev"}
            if any(labels.get(k) != v for k, v in want.items()):
                problems.append(f"{line[:60]}: labels {labels}")
            if e and e["metadata"].get("run_id") != r["id"]:
                problems.append(f"{line[:60]}: run_id {e['metadata'].get('run_id')}, not {r['id']}")
            t = json.loads(line).get("time")
            if e and t and int(e["ts"]) != t * 1_000_000:
                problems.append(f"{line[:60]}: timestamp {e['ts']}, pino's {t}")
        spans = [s for s in dump["collector"]["spans"] if s["resource"].get("wisp.run.id") == r["id"] and s["scope"] != "wisp-agent exec"]
        run_span = [s for s in dump["collector"]["spans"] if s["scope"] == "wisp-agent exec" and s["trace_id"] == r["id"]]
        if len(spans) < 4 or len(run_span) != 1:
            problems.append(f"run {r['id']}: {len(spans)} app spans, {len(run_span)} run spans")
            continue
        ids = {s["span_id"] for s in spans}
        for s in spans:
            if s["trace_id"] != r["id"]:
                problems.append(f"span {s['name']} in trace {s['trace_id']}, not the run's {r['id']}")
            if s["parent_span_id"] not in ids and s["parent_span_id"] != run_span[0]["span_id"]:
                problems.append(f"span {s['name']}: parent {s['parent_span_id']}, not the run span")
        logs = [l for l in dump["collector"]["logs"] if l["resource"].get("wisp.run.id") == r["id"]]
        if len(logs) < 2:
            problems.append(f"run {r['id']}: {len(logs)} OTLP log records at the collector")
        # The SDK's log records (pino's, through instrumentation-pino) are in
        # Loki too, in the run's job, with its run_id.
        for l in logs:
            e = next((e for e in dump["loki"]["entries"] if e["line"] == l["body"] and e["ts"] == l["time"]), None)
            if not e or e["metadata"].get("run_id") != r["id"] or e["labels"].get("job") != "ralph":
                problems.append(f"OTLP record {l['body'][:50]!r} of run {r['id']}: in Loki as {e and (e['labels'], e['metadata'])}")
    check(not problems, "the Ralph loop as a user sees it:\n- " + "\n- ".join(problems[:10]))
    guest.run("runuser -u dev -- tmux kill-server")
    say(f"the Ralph loop in the guest: {len(printed)} lines once each, labelled by run, spans in each run's trace")


# --- The run -------------------------------------------------------------------------------

SCENARIOS = {"cloud-init": scenario_cloud_init, "lima": scenario_lima}


class Run:
    """One scenario's namespace, receivers and guest, torn down in `close`."""

    def __init__(self, name, binary, receivers_bin, img, root):
        self.name, self.binary, self.img = name, binary, img
        self.workdir = root / name
        self.workdir.mkdir(parents=True)
        self.receivers_bin = receivers_bin
        self.netns = self.receivers = None
        self.guests = []

    def start(self):
        self.netns = Netns(f"wisp-vm-{os.getpid()}-{self.name}")
        self.receivers = Receivers(self.netns, self.receivers_bin, self.workdir / "receivers.log")

    def guest(self, share, seed, net):
        g = Guest(self.name, self.netns, self.img, self.workdir, share, seed, net)
        self.guests.append(g)
        return g

    def close(self):
        """Stops and removes everything; safe to call again."""
        guests, self.guests = self.guests, []
        for g in guests:
            g.close()
        if self.receivers:
            self.receivers.close()
            self.receivers = None
        if self.netns:
            self.netns.delete()
            self.netns = None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", choices=[[], *SCENARIOS], help="default: all")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("WISP_VM_JOBS", "1")),
                        help="scenarios at once (default 1, or $WISP_VM_JOBS)")
    args = parser.parse_args()
    names = args.scenarios or list(SCENARIOS)
    if os.geteuid() != 0:
        sys.exit("vm: must run as root (network namespaces, virtiofsd, apt)")

    # SIGTERM and SIGINT unwind through the finally blocks below.
    def stop(signum, _frame):
        raise SystemExit(f"vm: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    CACHE.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="wisp-vm-"))
    if not args.keep:
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    say(f"run folder {root}; cache {CACHE}; accel {accel()}")
    sweep_namespaces()
    ensure_tools()
    if "lima" in names:
        sh(ROOT / ".ci/sdks.sh", timeout=600, capture=False)
    binary, receivers_bin = cargo_artifacts()
    img = image()
    failures, runs = [], []

    def scenario(name):
        started = time.monotonic()
        say(f"== scenario {name}: {SCENARIOS[name].__doc__.split(chr(10))[0]}")
        run = Run(name, binary, receivers_bin, img, root)
        runs.append(run)
        try:
            run.start()
            SCENARIOS[name](run)
            say(f"== scenario {name} passed in {time.monotonic() - started:.0f} s")
        except Exception as e:  # noqa: BLE001 - any error fails this scenario, not the others
            failures.append(name)
            detail = str(e) if isinstance(e, (Failed, RuntimeError)) else traceback.format_exc()
            say(f"== scenario {name} FAILED after {time.monotonic() - started:.0f} s: {detail}")
            for g in run.guests:
                say(f"the console's end ({g.console}):\n{g.console_tail(40)}")
        finally:
            FIGURES[f"scenario {name}"] = f"{time.monotonic() - started:.0f} s"
            run.close()

    try:
        if args.jobs <= 1:
            for name in names:
                scenario(name)
        else:
            # Side by side, each in its own namespace; the main thread stays
            # free to take SIGTERM and stop them all.
            pending = list(names)
            threads = []
            while pending or any(t.is_alive() for t in threads):
                threads = [t for t in threads if t.is_alive()]
                while pending and len(threads) < args.jobs:
                    name = pending.pop(0)
                    t = threading.Thread(target=scenario, args=(name,), name=name, daemon=True)
                    t.start()
                    threads.append(t)
                time.sleep(0.5)
    finally:
        for run in runs:
            run.close()
    FIGURES["the VM test in all"] = f"{time.monotonic() - T0:.0f} s"
    say("figures:")
    for k, v in FIGURES.items():
        print(f"  {k}: {v}")
    if args.keep:
        say(f"kept {root}")
    if failures:
        say(f"failed: {', '.join(failures)}")
        print(f"vm: {len(names) - len(failures)} passed, {len(failures)} failed", flush=True)
        sys.exit(1)
    print(f"vm: {len(names)} passed, 0 failed", flush=True)


if __name__ == "__main__":
    main()
