//! What `wisp-agent exec -- /bin/true` adds to a command's wall time (issue 25:
//! under 5 ms, median of 100), with the daemon up and with it down.
//!
//! Per binary timed, a daemon (`run`, the fake Loki and a fake OTLP collector
//! of tests/support in this process, so each run's end makes its span) with
//! its own exec socket and state dir; "down" is the same configuration with a
//! socket nobody listens on and an outbox of its own. The command runs in a
//! git work tree with one commit (when `git` is installed), as a loop's
//! iteration does, so HEAD's commit is read as in use. Each round times
//! `/bin/true`, then `exec` up and down of each binary, in an order that
//! rotates from round to round, so a busy moment of the machine falls on all
//! of them alike. Prints min, median and p90 of each, and the median added to
//! `/bin/true`'s.
//!
//! `cargo bench --bench exec`; `WISP_BENCH_RUNS` sets the runs of each
//! (default 100); `WISP_BENCH_BIN` names other binaries to time beside the one
//! built (colon-separated, e.g. a build of main for before and after figures).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::loki::LokiReceiver;
use support::otlp::OtlpReceiver;

/// One binary under test: its daemon and its two configurations.
struct Subject {
    name: String,
    bin: PathBuf,
    up: PathBuf,
    down: PathBuf,
    down_outbox: PathBuf,
    up_outbox: PathBuf,
    daemon: Child,
}

fn config(socket: &Path, state: &Path, loki: &LokiReceiver, otlp: &str) -> String {
    format!(
        r#"[agent]
state_dir = "{state}"
hostname = "bench"
[host]
address = "127.0.0.1"
[loki]
url = "http://{{host}}:{port}/loki/api/v1/push"
[otlp]
endpoint = "{otlp}"
protocol = "grpc"
[receiver]
grpc = "127.0.0.1:0"
http = ""
[host_metrics]
enabled = false
agent_metrics = false
[admin]
listen = ""
[exec]
socket = "{socket}"
"#,
        state = state.display(),
        port = loki.addr().port(),
        socket = socket.display(),
    )
}

impl Subject {
    fn start(name: &str, bin: PathBuf, dir: &Path, loki: &LokiReceiver, otlp: &str) -> Subject {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("exec.sock");
        let (state, state_down) = (dir.join("state"), dir.join("state-down"));
        let up = dir.join("up.toml");
        std::fs::write(&up, config(&socket, &state, loki, otlp)).unwrap();
        let down = dir.join("down.toml");
        let nobody = dir.join("nobody.sock");
        std::fs::write(&down, config(&nobody, &state_down, loki, otlp)).unwrap();
        let mut cmd = Command::new(&bin);
        support::clear_agent_env(&mut cmd);
        let daemon = cmd
            .args(["run", "--log-level", "warn", "--config"])
            .arg(&up)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "{name}: the daemon never opened {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The outboxes: root's under the state dirs, anyone else's in
        // XDG_STATE_HOME (set per configuration, see `exec`).
        let root = rustix::process::geteuid().is_root();
        let outbox = |state: &Path, xdg: &Path| {
            if root {
                state.join("exec-outbox")
            } else {
                xdg.join("wisp-agent").join("exec")
            }
        };
        Subject {
            name: name.to_string(),
            up_outbox: outbox(&state, &dir.join("xdg-up")),
            down_outbox: outbox(&state_down, &dir.join("xdg-down")),
            bin,
            up,
            down,
            daemon,
        }
    }

    /// One `exec -- /bin/true`, timed.
    fn exec(&self, up: bool, cwd: &Path) -> Duration {
        let (config, xdg) = if up {
            (&self.up, "xdg-up")
        } else {
            (&self.down, "xdg-down")
        };
        let xdg = config.with_file_name(xdg);
        let mut cmd = Command::new(&self.bin);
        support::clear_agent_env(&mut cmd);
        cmd.args(["exec", "--config"])
            .arg(config)
            .args(["--", "/bin/true"])
            .env("XDG_STATE_HOME", xdg)
            .current_dir(cwd);
        timed(&mut cmd)
    }

    fn stop(mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.daemon.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.daemon.wait();
    }
}

/// Spawns `cmd` (stdin, stdout and stderr on /dev/null) and waits for it.
fn timed(cmd: &mut Command) -> Duration {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let status = cmd.status().unwrap();
    let took = started.elapsed();
    assert!(status.success(), "{cmd:?}: {status}");
    took
}

/// Captures left in an outbox.
fn captures(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cap"))
            .count()
    })
}

/// min, median and p90, in ms.
fn stats(samples: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (ms[0], at(0.5), at(0.9))
}

/// A git work tree with one commit, or a plain folder without git.
fn work_tree(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(&repo)
            .args(["-c", "user.name=wisp", "-c", "user.email=wisp@example.com"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !(git(&["init", "-q"]) && git(&["commit", "-q", "--allow-empty", "-m", "one"])) {
        eprintln!("no git: exec runs outside a work tree");
    }
    repo
}

fn main() {
    let runs: usize = std::env::var("WISP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let loki = rt.block_on(LokiReceiver::start());
    loki.set_count_only(true);
    let collector = rt.block_on(OtlpReceiver::start());
    let dir = tempfile::tempdir().unwrap();
    let repo = work_tree(dir.path());

    let mut bins = vec![(
        "built".to_string(),
        PathBuf::from(env!("CARGO_BIN_EXE_wisp-agent")),
    )];
    if let Ok(others) = std::env::var("WISP_BENCH_BIN") {
        for (i, b) in others.split(':').filter(|b| !b.is_empty()).enumerate() {
            bins.push((format!("other{}", i + 1), PathBuf::from(b)));
        }
    }
    let subjects: Vec<Subject> = bins
        .into_iter()
        .map(|(name, bin)| {
            eprintln!("{name}: {}", bin.display());
            Subject::start(&name, bin, dir.path(), &loki, &collector.grpc_endpoint())
        })
        .collect();
    // The runs of one round: /bin/true, then each subject up and down.
    let kinds = 1 + 2 * subjects.len();
    let run = |k: usize| -> Duration {
        if k == 0 {
            let mut cmd = Command::new("/bin/true");
            cmd.current_dir(&repo);
            return timed(&mut cmd);
        }
        let s = &subjects[(k - 1) / 2];
        s.exec((k - 1).is_multiple_of(2), &repo)
    };
    // Warm up: page cache, the daemons' first connections.
    for _ in 0..5 {
        for k in 0..kinds {
            run(k);
        }
    }
    let mut samples = vec![Vec::with_capacity(runs); kinds];
    for round in 0..runs {
        for i in 0..kinds {
            let k = (round + i) % kinds;
            samples[k].push(run(k));
        }
    }
    let (_, base, _) = stats(&samples[0]);
    println!("{runs} runs each, in ms:        min  median     p90  added (median)");
    let line = |what: &str, s: &[Duration]| {
        let (min, med, p90) = stats(s);
        println!(
            "{what:<28} {min:>6.2} {med:>7.2} {p90:>7.2} {:>+7.2}",
            med - base
        );
    };
    line("/bin/true", &samples[0]);
    for (i, s) in subjects.iter().enumerate() {
        line(&format!("{} exec, daemon up", s.name), &samples[1 + 2 * i]);
        line(
            &format!("{} exec, daemon down", s.name),
            &samples[2 + 2 * i],
        );
    }
    for s in &subjects {
        // Up, every run was handed over (and its capture deleted); down,
        // every run waits in the outbox.
        let (up, down) = (captures(&s.up_outbox), captures(&s.down_outbox));
        println!(
            "{}: {} | captures left: {up} up, {down} down",
            s.name,
            s.bin.display()
        );
    }
    for s in subjects {
        s.stop();
    }
}
