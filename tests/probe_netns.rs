//! As close to a real VM as one machine allows: a "host" and a "vm" network
//! namespace joined by a veth pair, with the addresses Lima's user-mode network
//! (vm 192.168.5.15/24, host 192.168.5.2) or libvirt's NAT (vm 192.168.122.50/24,
//! host 192.168.122.1) uses. A small Loki (`/ready` only, in Python) listens in the
//! host namespace; the real binary runs in the vm namespace with the default
//! candidates and nothing injected: it must find the host through the kernel's own
//! `/proc/net/route` and, for Lima, the resolver reading `/etc/netns/<vm>/hosts`.
//!
//! Needs root, `ip` (iproute2) and `python3`; otherwise each test prints why it
//! was skipped and passes. Traffic stays inside the namespaces the test creates
//! (their resolver points at the host-side address, where nothing serves DNS), and
//! everything is removed in `Drop`, on failure too.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const FAKE_LOKI: &str = r#"
import http.server, sys
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/ready"
        body = b"ready\n" if ok else b"not found\n"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Ready)
print("listening", flush=True)
server.serve_forever()
"#;

/// One VM network flavour.
struct Flavour {
    tag: &'static str,
    vm_cidr: &'static str,
    host_cidr: &'static str,
    host: &'static str,
    /// The vm's `/etc/hosts`.
    hosts: &'static str,
}

/// The namespaces, `/etc/netns` dirs and processes of one test; all removed on drop.
struct Lab {
    namespaces: Vec<String>,
    etc_dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for dir in &self.etc_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        // Only when empty: another user of `ip netns` may keep files there.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite(tag: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?");
    if uid != "0" {
        return Some(format!("not root (uid {uid})"));
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    if Command::new(python()).arg("-V").output().is_err() {
        return Some("python3 is not installed".into());
    }
    let probe_ns = format!("wisp-check-{}-{tag}", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe_ns]) {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    let _ = ip(&["netns", "del", &probe_ns]);
    None
}

fn build_lab(f: &Flavour, lab: &mut Lab) -> Result<(String, String), String> {
    let pid = std::process::id();
    let host_ns = format!("wisp-host-{pid}-{}", f.tag);
    let vm_ns = format!("wisp-vm-{pid}-{}", f.tag);
    // Interface names are limited to 15 bytes.
    let host_if = format!("wh{pid}{}", &f.tag[..1]);
    let vm_if = format!("wv{pid}{}", &f.tag[..1]);
    for ns in [&host_ns, &vm_ns] {
        ip(&["netns", "add", ns])?;
        lab.namespaces.push(ns.clone());
    }
    ip(&[
        "link", "add", &host_if, "netns", &host_ns, "type", "veth", "peer", "name", &vm_if,
        "netns", &vm_ns,
    ])?;
    ip(&["-n", &host_ns, "addr", "add", f.host_cidr, "dev", &host_if])?;
    ip(&["-n", &vm_ns, "addr", "add", f.vm_cidr, "dev", &vm_if])?;
    for (ns, dev) in [
        (&host_ns, host_if.as_str()),
        (&vm_ns, vm_if.as_str()),
        (&host_ns, "lo"),
        (&vm_ns, "lo"),
    ] {
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    ip(&["-n", &vm_ns, "route", "add", "default", "via", f.host])?;

    // `ip netns exec` bind-mounts these over /etc/hosts and /etc/resolv.conf.
    let etc = PathBuf::from("/etc/netns").join(&vm_ns);
    std::fs::create_dir_all(&etc).map_err(|e| format!("cannot create {}: {e}", etc.display()))?;
    lab.etc_dirs.push(etc.clone());
    std::fs::write(etc.join("hosts"), f.hosts).map_err(|e| e.to_string())?;
    std::fs::write(
        etc.join("resolv.conf"),
        format!("nameserver {}\noptions timeout:1 attempts:1\n", f.host),
    )
    .map_err(|e| e.to_string())?;

    // The fake Loki, in the host namespace, on the default port.
    let mut loki = Command::new("ip")
        .args([
            "netns",
            "exec",
            &host_ns,
            python(),
            "-c",
            FAKE_LOKI,
            f.host,
            "3100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the fake Loki: {e}"))?;
    let stdout = loki.stdout.take();
    lab.children.push(loki);
    let mut line = String::new();
    if let Some(out) = stdout {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if !line.starts_with("listening") {
        return Err("the fake Loki did not start".into());
    }
    Ok((host_ns, vm_ns))
}

fn agent(vm_ns: &str, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", vm_ns, env!("CARGO_BIN_EXE_wisp-agent")])
        .args(args)
        .arg("--config")
        .arg(config);
    support::clear_agent_env(&mut cmd);
    cmd
}

/// Runs `probe --json` and `run --dry-run` in the vm; returns the probe document.
fn run_in_vm(f: &Flavour) -> Option<serde_json::Value> {
    if let Some(why) = missing_prerequisite(f.tag) {
        eprintln!("skipped: {why}");
        return None;
    }
    let mut lab = Lab {
        namespaces: Vec::new(),
        etc_dirs: Vec::new(),
        children: Vec::new(),
    };
    let (_host_ns, vm_ns) = match build_lab(f, &mut lab) {
        Ok(names) => names,
        Err(e) => panic!("cannot build the {} network: {e}", f.tag),
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    // Default candidates and URLs; OTLP off, as the fake host serves only Loki.
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"{}\"\n[otlp]\nenabled = false\n[receiver]\ngrpc = \"\"\nhttp = \"\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();

    let out = agent(&vm_ns, &config, &["probe", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "probe in the {} vm: {stdout}\n{}",
        f.tag,
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        doc["elapsed_ms"].as_u64().unwrap() < 5000,
        "probe took {}",
        doc["elapsed_ms"]
    );

    // The daemon finds the same host (its log says so on stderr).
    let mut run = agent(&vm_ns, &config, &["run", "--dry-run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    if let Some(err) = run.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    lab.children.push(run);
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains("host") && line.contains(f.host) => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    assert!(
        found,
        "`run` in the {} vm did not report {}: {seen:#?}",
        f.tag, f.host
    );
    Some(doc)
}

#[test]
fn in_a_lima_user_mode_vm_the_host_is_found_by_name_and_by_route() {
    let lima = Flavour {
        tag: "lima",
        vm_cidr: "192.168.5.15/24",
        host_cidr: "192.168.5.2/24",
        host: "192.168.5.2",
        hosts: "127.0.0.1 localhost\n192.168.5.2 host.lima.internal\n",
    };
    let Some(doc) = run_in_vm(&lima) else { return };
    assert_eq!(doc["chosen"]["name"], "host.lima.internal");
    assert_eq!(doc["chosen"]["address"], "192.168.5.2");
    let candidates = doc["candidates"].as_array().unwrap();
    let by_name = |n: &str| candidates.iter().find(|c| c["name"] == n).unwrap();
    assert_eq!(
        by_name("host.lima.internal")["resolution"]["via"],
        "hosts_file"
    );
    let gateway = &by_name("gateway")["resolution"];
    assert_eq!(gateway["via"], "route_table");
    assert_eq!(gateway["address"], "192.168.5.2");
    assert_eq!(by_name("gateway")["services"]["loki"]["status"], "ok");
}

#[test]
fn in_a_libvirt_nat_vm_the_host_is_found_by_the_default_route() {
    let libvirt = Flavour {
        tag: "virt",
        vm_cidr: "192.168.122.50/24",
        host_cidr: "192.168.122.1/24",
        host: "192.168.122.1",
        hosts: "127.0.0.1 localhost\n",
    };
    let Some(doc) = run_in_vm(&libvirt) else {
        return;
    };
    assert_eq!(doc["chosen"]["name"], "gateway");
    assert_eq!(doc["chosen"]["address"], "192.168.122.1");
    let lima = &doc["candidates"][0];
    assert_eq!(lima["name"], "host.lima.internal");
    assert_eq!(lima["resolution"]["via"], "failed");
}
