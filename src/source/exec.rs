//! `wisp-agent exec -- CMD`: runs CMD as one iteration of a loop. What it prints
//! passes through unchanged, and is captured so the daemon ships it to Loki.
//!
//! Captures: `<state_dir>/exec/<started_ms>-<pid>.log` holds the command's output
//! line by line (stdout and stderr in the order they arrived), and
//! `<started_ms>-<pid>.json` beside it holds the `job`, the `--label`s and the
//! command. The `.json` is written first; once the command ends it gets the exit
//! status as well. The daemon tails `<state_dir>/exec/*.log` as a built-in source
//! ([`capture_entry`]), with the job and labels from each file's `.json`, and so
//! with every promise of the tailer: nothing is lost while the daemon is stopped or
//! the host is away, nothing is shipped twice.
//!
//! The next `exec` deletes the captures whose command has ended and whose every
//! byte the daemon has acknowledged (`positions.json`), so a loop of a thousand
//! iterations leaves no thousand files behind.
//!
//! The command's stdin is exec's own; its stdout and stderr are pipes, as under
//! `tee`, so a program that colours only at a terminal prints plain text.
//!
//! Telemetry never fails the command, nor makes it wait: a bad configuration, a
//! capture directory that cannot be written or a full disk are warned about on
//! stderr and the command runs on, uncaptured. No network is used here.
//!
//! Signals: SIGTERM and SIGHUP sent to `exec` are passed on to the command. SIGINT
//! is not: at a terminal Ctrl-C reaches the whole foreground process group, the
//! command included, and passing it on would deliver it twice (a second Ctrl-C
//! means "quit now" to many programs). `exec` waits for the command either way.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cli::ExecArgs;
use crate::config::{Config, FileConfig, ProcessEnv, StartAt};

/// The `job` label of a command run without `--name`.
pub const DEFAULT_JOB: &str = "exec";

/// The captures' directory under `state_dir`.
pub const CAPTURE_DIR: &str = "exec";

/// A line longer than this is written to the capture in pieces (the tailer cuts
/// lines at `max_line_bytes` anyway); it bounds what `exec` holds in memory.
const MAX_PENDING_LINE: usize = 1024 * 1024;

/// After the command exited, its output pipes may stay open in processes it left
/// running in the background; `exec` stops reading them after this long.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// What the `.json` beside a capture says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub job: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub command: Vec<String>,
    /// The `exec` process that writes the capture.
    pub pid: u32,
    pub started_ms: u64,
    /// The command's exit status (128+N for signal N), once it ended.
    #[serde(default)]
    pub exit: Option<i32>,
    /// When it ended.
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// The run's trace and span ids (lowercase hex), also handed to the command as
    /// `TRACEPARENT` so the spans it makes become children of the run.
    #[serde(default)]
    pub trace_id: String,
    #[serde(default)]
    pub span_id: String,
}

impl Sidecar {
    /// The W3C `traceparent` of the run (sampled).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

/// `n` random bytes as lowercase hex, never all zero (an invalid W3C id).
fn random_id(n: usize) -> String {
    loop {
        let bytes: Vec<u8> = (0..n).map(|_| fastrand::u8(..)).collect();
        if bytes.iter().any(|&b| b != 0) {
            return bytes.iter().map(|b| format!("{b:02x}")).collect();
        }
    }
}

/// The daemon's built-in `[[files]]` entry for the captures under `state_dir`.
pub fn capture_entry(state_dir: &Path) -> FileConfig {
    FileConfig {
        name: DEFAULT_JOB.into(),
        paths: vec![state_dir
            .join(CAPTURE_DIR)
            .join("*.log")
            .display()
            .to_string()],
        start_at: StartAt::Beginning,
        exec_captures: true,
        ..FileConfig::default()
    }
}

/// Creates the capture directory for the daemon: writable by everyone with the
/// sticky bit, like `/tmp`, so `exec` run by any user of the VM can leave its
/// captures where a daemon running as root finds them.
pub fn prepare_capture_dir(state_dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = state_dir.join(CAPTURE_DIR);
    fs::create_dir_all(&dir)?;
    if let Err(e) = fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)) {
        tracing::debug!(
            "cannot open {} to other users ({e}); exec run by them keeps its output in their own state dir",
            dir.display()
        );
    }
    Ok(dir)
}

/// What the daemon labels the capture at `log` with, from its `.json`: the job,
/// the labels, and the run's trace context. A capture without a readable `.json`
/// is `exec`, with no labels.
#[allow(clippy::type_complexity)]
pub(crate) fn capture_source(
    log: &Path,
) -> (String, Vec<(String, String)>, Option<(String, String)>) {
    match read_sidecar(&log.with_extension("json")) {
        Some(s) => {
            let trace = (!s.trace_id.is_empty() && !s.span_id.is_empty())
                .then(|| (s.trace_id.clone(), s.span_id.clone()));
            let job = if s.job.is_empty() {
                DEFAULT_JOB.into()
            } else {
                s.job
            };
            (job, s.labels.into_iter().collect(), trace)
        }
        None => {
            tracing::warn!(
                "{} has no readable .json beside it; shipping it as job {DEFAULT_JOB:?}",
                log.display()
            );
            (DEFAULT_JOB.into(), Vec::new(), None)
        }
    }
}

pub(crate) fn read_sidecar(path: &Path) -> Option<Sidecar> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Writes `sidecar` to `path` atomically (temp file, rename): the daemon never
/// reads half of one.
fn write_sidecar(path: &Path, sidecar: &Sidecar) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(sidecar).map_err(io::Error::other)?;
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A run that ended without recording it is taken as over only when its capture
/// has not been written for this long as well: its `exec` may live in another
/// PID namespace (a container sharing the state dir), where `/proc` cannot see it.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// Whether the run of `sidecar` (its `.json` at `json`) is over: its exit is
/// recorded, or its `exec` is gone and its capture untouched for
/// [`ABANDONED_AFTER`].
pub(crate) fn run_is_over(sidecar: &Sidecar, json: &Path) -> bool {
    if sidecar.exit.is_some() {
        return true;
    }
    if process_alive(sidecar.pid) {
        return false;
    }
    let untouched = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age >= ABANDONED_AFTER)
    };
    untouched(json) && untouched(&json.with_extension("log"))
}

/// Deletes the captures in `dir` whose command has ended (or whose `exec` is gone),
/// whose every byte the daemon has acknowledged and whose run the daemon has
/// handled (its span handed on: [`crate::source::exec_spans`]). Returns how many
/// it deleted.
pub fn sweep(dir: &Path) -> usize {
    let Some(state_dir) = dir.parent() else {
        return 0;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let acked = crate::source::file::AckedOffsets::read(state_dir);
    let handled = crate::source::exec_spans::read_handled(state_dir);
    let mut deleted = 0;
    for entry in entries.flatten() {
        let json = entry.path();
        if json.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some(sidecar) = read_sidecar(&json) else {
            continue;
        };
        let handled_run = json
            .file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|stem| handled.contains(stem));
        if !handled_run || !run_is_over(&sidecar, &json) {
            continue;
        }
        let log = json.with_extension("log");
        match fs::metadata(&log) {
            Ok(meta) if !acked.covers(&meta) => continue,
            Ok(_) => {
                if fs::remove_file(&log).is_err() {
                    continue;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => continue,
        }
        if fs::remove_file(&json).is_ok() {
            deleted += 1;
        }
    }
    deleted
}

/// One capture being written: the log and its `.json`.
struct Capture {
    log: PathBuf,
    json: PathBuf,
    sidecar: Sidecar,
    /// `None` once a write failed: the command runs on uncaptured.
    file: Option<File>,
}

impl Capture {
    /// Starts a capture in the first of `dirs` where it can be written.
    fn create(dirs: &[PathBuf], sidecar: Sidecar) -> Result<Capture, String> {
        let mut why = Vec::new();
        for dir in dirs {
            let stem = format!("{}-{}", sidecar.started_ms, sidecar.pid);
            let log = dir.join(format!("{stem}.log"));
            let json = dir.join(format!("{stem}.json"));
            let opened = fs::create_dir_all(dir)
                .and_then(|()| write_sidecar(&json, &sidecar))
                .and_then(|()| OpenOptions::new().create_new(true).append(true).open(&log));
            match opened {
                Ok(file) => {
                    return Ok(Capture {
                        log,
                        json,
                        sidecar,
                        file: Some(file),
                    })
                }
                Err(e) => {
                    let _ = fs::remove_file(&json);
                    why.push(format!("{}: {e}", dir.display()));
                }
            }
        }
        Err(why.join("; "))
    }

    fn write(&mut self, bytes: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if let Err(e) = file.write_all(bytes) {
            warn(&format!(
                "cannot write the capture {} ({e}); the command's further output is not shipped",
                self.log.display()
            ));
            self.file = None;
        }
    }

    /// Records the exit status; the capture is then complete.
    fn finish(&mut self, exit: i32) {
        if let Some(file) = self.file.take() {
            let _ = file.sync_data();
        }
        self.sidecar.exit = Some(exit);
        self.sidecar.ended_ms = Some(now_ms());
        if let Err(e) = write_sidecar(&self.json, &self.sidecar) {
            warn(&format!("cannot update {} ({e})", self.json.display()));
        }
    }
}

/// `exec`'s own words, on stderr, marked as its own.
fn warn(msg: &str) {
    eprintln!("wisp-agent exec: {msg}");
}

/// Cuts a stream's bytes into whole lines for the capture.
#[derive(Default)]
struct LineCutter {
    pending: Vec<u8>,
}

impl LineCutter {
    /// Appends to `out` every line `chunk` completes, newline included.
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            out.extend_from_slice(&self.pending);
            self.pending.clear();
            out.extend_from_slice(&rest[..=i]);
            rest = &rest[i + 1..];
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() >= MAX_PENDING_LINE {
            out.append(&mut self.pending);
            out.push(b'\n');
        }
    }

    /// The last line, if the stream ended without a newline.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            out.append(&mut self.pending);
            out.push(b'\n');
        }
    }
}

/// Copies one of the command's streams to ours unchanged and at once, and its
/// whole lines to the capture. Reading goes on if our own stream is closed, so
/// the capture stays complete.
async fn pump<R, W>(mut from: R, mut to: W, capture: Option<Arc<Mutex<Capture>>>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut cutter = LineCutter::default();
    let mut lines = Vec::new();
    let mut passing = true;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if passing {
            passing = to.write_all(chunk).await.is_ok() && to.flush().await.is_ok();
        }
        if let Some(capture) = &capture {
            cutter.feed(chunk, &mut lines);
            if !lines.is_empty() {
                if let Ok(mut c) = capture.lock() {
                    c.write(&lines);
                }
                lines.clear();
            }
        }
    }
    if let Some(capture) = &capture {
        cutter.finish(&mut lines);
        if !lines.is_empty() {
            if let Ok(mut c) = capture.lock() {
                c.write(&lines);
            }
        }
    }
}

/// The shell's convention: the exit code, or 128+N for a death by signal N.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// Where captures may go, best first: the configured state dir (where the daemon
/// looks), then this user's fallback state dir.
fn capture_dirs(config: &Config) -> Vec<PathBuf> {
    let mut dirs = vec![config.agent.state_dir.join(CAPTURE_DIR)];
    let (resolved, _) = config.resolve_state_dir(&ProcessEnv);
    let fallback = resolved.join(CAPTURE_DIR);
    if !dirs.contains(&fallback) {
        dirs.push(fallback);
    }
    dirs
}

/// Runs the command of `args` as described in the module doc and returns its exit
/// status. `config` is `None` when the configuration could not be loaded (`exec`
/// then runs the command uncaptured: it cannot know where the daemon looks).
pub async fn run(config: Option<Config>, args: ExecArgs) -> ExitCode {
    let Some((program, program_args)) = args.command.split_first() else {
        warn("no command given: wisp-agent exec -- CMD [ARGS...]");
        return ExitCode::from(2);
    };
    let capture = config.as_ref().and_then(|config| {
        let dirs = capture_dirs(config);
        for dir in &dirs {
            sweep(dir);
        }
        let sidecar = Sidecar {
            job: args.name.clone().unwrap_or_else(|| DEFAULT_JOB.into()),
            labels: args.labels.iter().cloned().collect(),
            command: args.command.clone(),
            pid: std::process::id(),
            started_ms: now_ms(),
            exit: None,
            ended_ms: None,
            trace_id: random_id(16),
            span_id: random_id(8),
        };
        match Capture::create(&dirs, sidecar) {
            Ok(c) => {
                if c.log.parent() != dirs.first().map(PathBuf::as_path) {
                    warn(&format!(
                        "capturing to {} ({} is not writable): a daemon running as another user does not see it",
                        c.log.display(),
                        dirs[0].display()
                    ));
                }
                Some(Arc::new(Mutex::new(c)))
            }
            Err(why) => {
                warn(&format!(
                    "cannot capture the output ({why}); the command runs uncaptured"
                ));
                None
            }
        }
    });

    let mut command = tokio::process::Command::new(program);
    if let Some(c) = &capture {
        if let Ok(c) = c.lock() {
            command.env("TRACEPARENT", c.sidecar.traceparent());
        }
    }
    let spawned = command
        .args(program_args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let code = match e.kind() {
                io::ErrorKind::NotFound => {
                    warn(&format!("{program}: command not found"));
                    127
                }
                _ => {
                    warn(&format!("cannot run {program}: {e}"));
                    126
                }
            };
            if let Some(c) = &capture {
                if let Ok(mut c) = c.lock() {
                    c.finish(code);
                }
            }
            return ExitCode::from(code as u8);
        }
    };
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(
            out,
            tokio::io::stdout(),
            capture.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(
            err,
            tokio::io::stderr(),
            capture.clone(),
        )));
    }

    let status = wait_passing_signals(&mut child).await;
    let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
        for p in &mut pumps {
            let _ = p.await;
        }
    })
    .await;
    if drained.is_err() {
        for p in &pumps {
            p.abort();
        }
    }
    let code = match status {
        Ok(status) => exit_code(status),
        Err(e) => {
            warn(&format!("lost track of {program}: {e}"));
            1
        }
    };
    if let Some(c) = &capture {
        if let Ok(mut c) = c.lock() {
            c.finish(code);
        }
    }
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Waits for the child, passing SIGTERM and SIGHUP on to it and swallowing SIGINT
/// (see the module doc).
async fn wait_passing_signals(child: &mut tokio::process::Child) -> io::Result<ExitStatus> {
    use tokio::signal::unix::{signal, SignalKind};
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw);
    let (Ok(mut term), Ok(mut hup), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
    ) else {
        return child.wait().await;
    };
    loop {
        let forward = tokio::select! {
            status = child.wait() => return status,
            _ = term.recv() => Some(rustix::process::Signal::TERM),
            _ = hup.recv() => Some(rustix::process::Signal::HUP),
            _ = int.recv() => None,
        };
        if let (Some(sig), Some(pid)) = (forward, pid) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(chunks: &[&[u8]]) -> Vec<u8> {
        let mut c = LineCutter::default();
        let mut out = Vec::new();
        for ch in chunks {
            c.feed(ch, &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn a_run_is_over_when_its_exit_is_recorded_or_its_exec_is_long_gone() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("1-2.json");
        let log = dir.path().join("1-2.log");
        // A pid that existed and is gone: a child that has been waited for.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let mut sidecar = Sidecar {
            job: "exec".into(),
            labels: BTreeMap::new(),
            command: vec![],
            pid: std::process::id(),
            started_ms: 1,
            exit: None,
            ended_ms: None,
            trace_id: random_id(16),
            span_id: random_id(8),
        };
        write_sidecar(&json, &sidecar).unwrap();
        fs::write(&log, "line\n").unwrap();
        assert!(!run_is_over(&sidecar, &json), "its exec runs");
        sidecar.pid = gone;
        assert!(
            !run_is_over(&sidecar, &json),
            "gone, but written a moment ago"
        );
        let long_ago = SystemTime::now() - ABANDONED_AFTER - Duration::from_secs(1);
        for p in [&json, &log] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        assert!(run_is_over(&sidecar, &json), "gone and untouched");
        sidecar.pid = std::process::id();
        sidecar.exit = Some(0);
        assert!(run_is_over(&sidecar, &json), "its exit is recorded");
    }

    #[test]
    fn a_traceparent_is_w3c_shaped() {
        let s = Sidecar {
            job: "exec".into(),
            labels: BTreeMap::new(),
            command: vec![],
            pid: 1,
            started_ms: 0,
            exit: None,
            ended_ms: None,
            trace_id: random_id(16),
            span_id: random_id(8),
        };
        let tp = s.traceparent();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!((parts[0], parts[3]), ("00", "01"));
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
        assert!(tp
            .chars()
            .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn lines_split_across_chunks_come_out_whole() {
        assert_eq!(cut(&[b"ab", b"c\nde", b"f\n", b"g"]), b"abc\ndef\ng\n");
        assert_eq!(cut(&[b"\n\n"]), b"\n\n");
        assert_eq!(cut(&[]), b"");
    }

    #[test]
    fn a_huge_line_is_written_in_bounded_pieces() {
        let big = vec![b'x'; MAX_PENDING_LINE + 10];
        let mut c = LineCutter::default();
        let mut out = Vec::new();
        c.feed(&big, &mut out);
        assert_eq!(out.len(), MAX_PENDING_LINE + 11);
        assert!(c.pending.is_empty());
    }

    #[test]
    fn the_capture_entry_reads_captures_from_the_start_with_labels_from_sidecars() {
        let e = capture_entry(Path::new("/var/lib/wisp-agent"));
        assert_eq!(e.paths, vec!["/var/lib/wisp-agent/exec/*.log".to_string()]);
        assert_eq!(e.start_at, StartAt::Beginning);
        assert!(e.exec_captures);
    }

    #[test]
    fn a_sidecar_names_the_job_labels_and_trace_and_a_missing_one_means_exec() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("1-2.log");
        assert_eq!(capture_source(&log), ("exec".to_string(), vec![], None));
        let sidecar = Sidecar {
            job: "ralph".into(),
            labels: [("iter".to_string(), "3".to_string())].into(),
            command: vec!["true".into()],
            pid: 2,
            started_ms: 1,
            exit: None,
            ended_ms: None,
            trace_id: random_id(16),
            span_id: random_id(8),
        };
        write_sidecar(&log.with_extension("json"), &sidecar).unwrap();
        assert_eq!(
            capture_source(&log),
            (
                "ralph".to_string(),
                vec![("iter".to_string(), "3".to_string())],
                Some((sidecar.trace_id.clone(), sidecar.span_id.clone()))
            )
        );
    }
}
