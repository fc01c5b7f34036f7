//! `wisp-agent exec -- CMD`: runs CMD as one iteration of a loop. What it prints
//! passes through unchanged, and is handed to the daemon, which ships it to Loki
//! and makes a span of the run.
//!
//! The hand-off: every line goes first to the terminal (at once, unchanged), then
//! into this run's capture in the caller's own outbox ([`outbox`]), as the frames
//! the daemon takes ([`protocol`]); a sender thread ([`client`]) streams the
//! capture over the daemon's Unix socket as it grows and deletes it once the
//! daemon has made all of it durable. When the daemon is not running (or
//! refuses, or is slow) the capture stays, and the next `exec` (in the
//! background, without delaying its command) or `wisp-agent exec --flush` hands
//! it over. The daemon learns who ran the command from the socket, not from
//! anything written here.
//!
//! The command's stdin is exec's own; its stdout and stderr are pipes, as under
//! `tee`, so a program that colours only at a terminal prints plain text.
//!
//! Telemetry never fails the command, nor makes it wait: a bad configuration, an
//! outbox that cannot be written or a full disk are warned about on stderr and
//! the command runs on, uncaptured; after the command ended, `exec` gives the
//! sender at most [`HAND_OVER_GRACE`] to finish, then exits with the command's
//! status (what is not handed over yet stays in the outbox).
//!
//! The command's own OpenTelemetry joins the run: it gets `TRACEPARENT` (the
//! run's span as its parent), `OTEL_EXPORTER_OTLP_ENDPOINT` (the local
//! receiver, unless set) and `OTEL_RESOURCE_ATTRIBUTES` with the run's id, name
//! and labels ([`otel_env`]). HEAD's commit of the work tree `exec` runs in is
//! read before the command starts and after it ends ([`git`], bounded) and
//! travels in the run's `hello` and `end`.
//!
//! Signals: SIGTERM and SIGHUP sent to `exec` are passed on to the command. SIGINT
//! is not: at a terminal Ctrl-C reaches the whole foreground process group, the
//! command included, and passing it on would deliver it twice (a second Ctrl-C
//! means "quit now" to many programs). `exec` waits for the command either way.

pub mod client;
pub mod otel_env;

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cli::ExecArgs;
use crate::config::{Config, EnvSource, ProcessEnv};
use crate::record::Timestamp;
use crate::source::exec::protocol::{self, ClientFrame, Hello, Line, Stream, LINES_FRAME_TARGET};
use crate::source::exec::{git, now_ms, outbox, DEFAULT_JOB, MAX_PENDING_LINE};
use client::Follow;

/// After the command exited, its output pipes may stay open in processes it left
/// running in the background; `exec` stops reading them after this long.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// After the command's end is captured, the sender gets this long to hand the
/// rest to the daemon before `exec` exits (the rest stays in the outbox).
pub const HAND_OVER_GRACE: Duration = Duration::from_secs(2);

/// Before the command starts, `exec` waits at most this long for the daemon to
/// take the run's hello (a local round trip; nothing when no daemon listens):
/// a tailer reading the command's first marked line then knows the run.
const HELLO_WAIT: Duration = Duration::from_millis(250);

/// `n` random bytes as lowercase hex, never all zero (an invalid W3C id).
fn random_id(n: usize) -> String {
    loop {
        let bytes: Vec<u8> = (0..n).map(|_| fastrand::u8(..)).collect();
        if bytes.iter().any(|&b| b != 0) {
            return bytes.iter().map(|b| format!("{b:02x}")).collect();
        }
    }
}

/// A new run's trace id and span id. The span id is the trace id's low 8
/// bytes, so whoever knows the run's id (`wisp.run.id`) knows its span: the
/// relay makes the command's root spans its children.
fn run_ids() -> (String, String) {
    loop {
        let trace_id = random_id(16);
        let span_id = trace_id[16..].to_string();
        if span_id.bytes().any(|b| b != b'0') {
            return (trace_id, span_id);
        }
    }
}

/// One capture being written: this run's frames in its outbox file.
struct Capture {
    path: PathBuf,
    /// `None` once a write failed: the command runs on uncaptured.
    file: Option<File>,
    next_seq: u64,
    follow: Arc<Follow>,
}

impl Capture {
    /// Starts a capture in `dir` with the run's `hello`.
    fn create(dir: &std::path::Path, hello: &Hello) -> io::Result<Capture> {
        outbox::prepare(dir)?;
        let path = dir.join(format!(
            "{}-{}.{}",
            hello.started_ms,
            std::process::id(),
            outbox::CAPTURE_EXT
        ));
        let mut file = outbox::create(&path)?;
        let frame = protocol::encode(&ClientFrame::Hello(hello.clone()))?;
        if let Err(e) = file.write_all(&frame) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Capture {
            path,
            file: Some(file),
            next_seq: 1,
            follow: Arc::new(Follow::default()),
        })
    }

    /// Appends `lines` as `lines` frames of about [`LINES_FRAME_TARGET`] bytes.
    fn write_lines(&mut self, stream: Stream, lines: &[Vec<u8>]) {
        let now = Timestamp::now().as_nanos();
        let mut frame = Vec::new();
        let mut size = 0;
        let mut bytes = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            size += line.len() + 48;
            frame.push(Line {
                stream,
                text: String::from_utf8_lossy(line).into_owned(),
                time_ns: now,
            });
            if size >= LINES_FRAME_TARGET || i + 1 == lines.len() {
                let f = ClientFrame::Lines {
                    seq: self.next_seq,
                    lines: std::mem::take(&mut frame),
                };
                size = 0;
                match protocol::encode(&f) {
                    Ok(b) => {
                        bytes.extend_from_slice(&b);
                        self.next_seq += 1;
                    }
                    Err(e) => warn(&format!("some output is not shipped: {e}")),
                }
            }
        }
        self.write(&bytes);
    }

    fn write(&mut self, bytes: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if let Err(e) = file.write_all(bytes) {
            warn(&format!(
                "cannot write the capture {} ({e}); the command's further output is not shipped",
                self.path.display()
            ));
            self.file = None;
        }
        self.follow.wrote();
    }

    /// Records the end; the capture is then complete. The file stays open
    /// (and locked) until exec exits, so no flush takes the capture while this
    /// run's own sender still sends it.
    fn finish(&mut self, exit: i32, git_head: Option<String>) {
        match protocol::encode(&ClientFrame::End {
            exit: Some(exit),
            ended_ms: now_ms(),
            git_head,
        }) {
            Ok(b) => self.write(&b),
            Err(e) => warn(&format!("cannot record the end: {e}")),
        }
        self.follow.end();
    }

    /// Makes the capture durable: it stays in the outbox for a later hand-over.
    fn keep(&self) {
        if let Some(file) = &self.file {
            let _ = file.sync_data();
        }
    }
}

/// The environment `exec` reads its configuration with: the process's without
/// the `OTEL_*` variables. They configure the daemon's exporter, which `exec`
/// does not use, and `exec` points `OTEL_EXPORTER_OTLP_ENDPOINT` at the local
/// receiver for its command: a `wisp-agent exec` inside that command would
/// otherwise take it for an exporter looping into its own receiver, refuse the
/// configuration and run uncaptured.
pub struct ConfigEnv;

impl EnvSource for ConfigEnv {
    fn var(&self, name: &str) -> Option<String> {
        if name.starts_with("OTEL_") {
            return None;
        }
        ProcessEnv.var(name)
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
    /// Appends to `out` every line `chunk` completes, without its newline.
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<Vec<u8>>) {
        let mut rest = chunk;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let mut line = std::mem::take(&mut self.pending);
            line.extend_from_slice(&rest[..i]);
            out.push(line);
            rest = &rest[i + 1..];
        }
        self.pending.extend_from_slice(rest);
        while self.pending.len() >= MAX_PENDING_LINE {
            let tail = self.pending.split_off(MAX_PENDING_LINE);
            out.push(std::mem::replace(&mut self.pending, tail));
        }
    }

    /// The last line, if the stream ended without a newline.
    fn finish(&mut self, out: &mut Vec<Vec<u8>>) {
        if !self.pending.is_empty() {
            out.push(std::mem::take(&mut self.pending));
        }
    }
}

/// Copies one of the command's streams to ours unchanged (but for the marks on
/// a terminal, which it does not show) and at once, and its whole lines to the
/// capture. Reading goes on if our own stream is closed, so the capture stays
/// complete.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    stream: Stream,
    capture: Option<Arc<Mutex<Capture>>>,
    marks: Option<Arc<Marks>>,
) where
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
            passing = match &marks {
                Some(m) => {
                    // Held across the write: the two streams of one terminal
                    // take turns, so the line-start state stays the terminal's.
                    let mut at_line_start = m.at_line_start.lock().await;
                    let marked = m.apply(chunk, &mut at_line_start);
                    to.write_all(&marked).await.is_ok() && to.flush().await.is_ok()
                }
                None => to.write_all(chunk).await.is_ok() && to.flush().await.is_ok(),
            };
        }
        if let Some(capture) = &capture {
            cutter.feed(chunk, &mut lines);
            if !lines.is_empty() {
                if let Ok(mut c) = capture.lock() {
                    c.write_lines(stream, &lines);
                }
                lines.clear();
            }
        }
    }
    if let Some(capture) = &capture {
        cutter.finish(&mut lines);
        if !lines.is_empty() {
            if let Ok(mut c) = capture.lock() {
                c.write_lines(stream, &lines);
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

/// `exec`'s configuration, as `run` would load it but for the `OTEL_*`
/// variables ([`ConfigEnv`]). Telemetry never stops the command, so one that
/// cannot be loaded is a warning on stderr, not exit 2, and the command runs
/// uncaptured (`None`).
pub fn load_config(path: Option<&std::path::Path>, args: &ExecArgs) -> Option<Config> {
    match crate::config::load(path, &ConfigEnv) {
        Ok(loaded) => Some(loaded.config),
        Err(e) if args.flush => {
            warn(&e.to_string());
            None
        }
        Err(e) => {
            warn(&format!(
                "{e}; running the command without capturing its output"
            ));
            None
        }
    }
}

/// `exec --flush`: hands every finished capture in the caller's outbox to the
/// daemon. Exit 0 when none is left, 1 otherwise (the reason on stderr).
pub fn flush(config: Option<Config>) -> ExitCode {
    let Some(config) = config else {
        warn("without a configuration the daemon's socket is unknown; nothing was flushed");
        return ExitCode::from(1);
    };
    let Some(dir) = outbox::outbox_dir(&config, &ProcessEnv) else {
        warn("no outbox: neither XDG_STATE_HOME nor HOME is set");
        return ExitCode::from(1);
    };
    let sockets = config.exec.socket_candidates(&ProcessEnv);
    let done = client::flush(&sockets, &dir, None);
    eprintln!(
        "wisp-agent exec: {} capture(s) handed to the daemon, {} left",
        done.sent, done.left
    );
    if let Some(why) = &done.why {
        warn(why);
    }
    if done.left == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs the command of `args` as described in the module doc and returns its exit
/// status. `config` is `None` when the configuration could not be loaded (`exec`
/// then runs the command uncaptured: it cannot know where the daemon listens).
pub async fn run(config: Option<Config>, args: ExecArgs) -> ExitCode {
    let Some((program, program_args)) = args.command.split_first() else {
        warn("no command given: wisp-agent exec -- CMD [ARGS...]");
        return ExitCode::from(2);
    };
    // As the user typed it, for exec's own words (never raw bytes: it is printed).
    let shown = crate::parse::labels::escape_controls(&program.to_string_lossy()).into_owned();
    // Only a captured run has a span to put it on.
    let git_head = match &config {
        Some(_) => git::head().await,
        None => None,
    };
    let (trace_id, span_id) = run_ids();
    let hello = Hello {
        version: protocol::VERSION,
        job: args.name.clone().unwrap_or_else(|| DEFAULT_JOB.into()),
        labels: args.labels.iter().cloned().collect(),
        argv: args
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        trace_id,
        span_id,
        started_ms: now_ms(),
        git_head,
    };
    let mut sender = None;
    let mut outbox = None;
    let capture = config.as_ref().and_then(|config| {
        let sockets = config.exec.socket_candidates(&ProcessEnv);
        let Some(dir) = outbox::outbox_dir(config, &ProcessEnv) else {
            warn("cannot capture the output (neither XDG_STATE_HOME nor HOME is set); the command runs uncaptured");
            return None;
        };
        let capture = match Capture::create(&dir, &hello) {
            Ok(c) => c,
            Err(e) => {
                warn(&format!(
                    "cannot capture the output ({}: {e}); the command runs uncaptured",
                    dir.display()
                ));
                return None;
            }
        };
        // This run's sender first: the command waits for its hello.
        let (path, follow) = (capture.path.clone(), capture.follow.clone());
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let send_to = sockets.clone();
        let spawned = std::thread::Builder::new()
            .name("exec-send".into())
            .spawn(move || {
                let sent = match File::open(&path) {
                    Ok(mut file) => client::send_and_delete(&send_to, &path, &mut file, Some(&follow)),
                    Err(e) => Err(client::SendError::Corrupt(e.to_string())),
                };
                follow.settle();
                let _ = done_tx.send(sent);
            });
        // Earlier runs' captures, in the background.
        {
            let (dir, own) = (dir.clone(), capture.path.clone());
            let _ = std::thread::Builder::new()
                .name("exec-flush".into())
                .spawn(move || client::flush(&sockets, &dir, Some(&own)));
        }
        if spawned.is_ok() {
            sender = Some(done_rx);
            capture.follow.wait_settled(HELLO_WAIT);
        }
        outbox = Some(dir);
        Some(Arc::new(Mutex::new(capture)))
    });
    let ship_output = config.as_ref().is_some_and(|c| c.exec.ship_output);
    let lines = capture.clone().filter(|_| ship_output);
    let marks = match (&lines, &config) {
        (Some(_), Some(c)) if c.exec.terminal_marks => Marks::for_terminals(&hello.trace_id),
        _ => (None, None),
    };

    let mut command = tokio::process::Command::new(program);
    command.env("TRACEPARENT", hello.traceparent());
    let run = otel_env::Run {
        trace_id: &hello.trace_id,
        job: &hello.job,
        labels: &args.labels,
    };
    command.envs(otel_env::command_env(config.as_ref(), &ProcessEnv, &run));
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
                    warn(&format!("{shown}: command not found"));
                    127
                }
                _ => {
                    warn(&format!("cannot run {shown}: {e}"));
                    126
                }
            };
            finish(capture.as_ref(), code, None, sender);
            return ExitCode::from(code as u8);
        }
    };
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(
            out,
            tokio::io::stdout(),
            Stream::Stdout,
            lines.clone(),
            marks.0.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(
            err,
            tokio::io::stderr(),
            Stream::Stderr,
            lines.clone(),
            marks.1.clone(),
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
    Marks::end_all(&marks).await;
    let code = match status {
        Ok(status) => exit_code(status),
        Err(e) => {
            warn(&format!("lost track of {shown}: {e}"));
            1
        }
    };
    let git_head = match capture {
        Some(_) => git::head().await,
        None => None,
    };
    finish(capture.as_ref(), code, git_head, sender);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// What the sender thread says once it is done: the capture handed over, or why not.
type Sent = std::sync::mpsc::Receiver<Result<(), client::SendError>>;

/// Records the end in the capture and gives the sender [`HAND_OVER_GRACE`]; a
/// capture it did not hand over is made durable before exec exits (one the
/// daemon took is deleted: no fsync for it).
fn finish(
    capture: Option<&Arc<Mutex<Capture>>>,
    code: i32,
    git_head: Option<String>,
    sender: Option<Sent>,
) {
    let Some(capture) = capture else {
        return;
    };
    let mut dir = None;
    if let Ok(mut c) = capture.lock() {
        c.finish(code, git_head);
        dir = c.path.parent().map(std::path::Path::to_path_buf);
    }
    let handed_over = match (sender, dir) {
        (Some(done), Some(dir)) => match done.recv_timeout(HAND_OVER_GRACE) {
            Ok(Ok(())) => {
                outbox::daemon_answered(&dir);
                true
            }
            Ok(Err(client::SendError::Unreachable(why))) if outbox::daemon_away(&dir) => {
                warn(&format!(
                    "no daemon answers ({why}); runs are kept in {} and handed over once \
                     `wisp-agent run` is up (said once until it answers)",
                    dir.display()
                ));
                false
            }
            _ => false,
        },
        _ => false,
    };
    if !handed_over {
        if let Ok(c) = capture.lock() {
            c.keep();
        }
    }
}

/// The invisible marks `exec` puts on the lines it passes to a terminal (see
/// [`crate::source::terminal::mark`]), so a tailer of that terminal's capture
/// leaves them to `exec`. One per terminal: when stdout and stderr are the same
/// terminal, both streams share it, so a line started on one and ended on the
/// other is marked once, at its start.
struct Marks {
    begin: Vec<u8>,
    /// Whether the terminal's cursor is at the start of a line (of our output).
    at_line_start: tokio::sync::Mutex<bool>,
    stream: Stream,
}

impl Marks {
    /// The marks of stdout and of stderr: `None` for a stream that is no
    /// terminal (a pipe, a file: marks there would change the bytes a program
    /// or a reader gets).
    fn for_terminals(run_id: &str) -> (Option<Arc<Marks>>, Option<Arc<Marks>>) {
        fn tty(stream: impl std::io::IsTerminal + std::os::fd::AsFd) -> Option<u64> {
            if !stream.is_terminal() {
                return None;
            }
            rustix::fs::fstat(stream).ok().map(|s| s.st_rdev)
        }
        let new = |stream| {
            Arc::new(Marks {
                begin: crate::source::terminal::mark::begin(run_id),
                at_line_start: tokio::sync::Mutex::new(true),
                stream,
            })
        };
        let (out, err) = (tty(std::io::stdout()), tty(std::io::stderr()));
        let stdout = out.map(|_| new(Stream::Stdout));
        let stderr = match (err, &stdout) {
            (Some(e), Some(shared)) if Some(e) == out => Some(shared.clone()),
            (Some(_), _) => Some(new(Stream::Stderr)),
            (None, _) => None,
        };
        (stdout, stderr)
    }

    /// `chunk` with a mark before each line start in it.
    fn apply(&self, chunk: &[u8], at_line_start: &mut bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + self.begin.len() * 2);
        let mut rest = chunk;
        while !rest.is_empty() {
            if *at_line_start {
                out.extend_from_slice(&self.begin);
                *at_line_start = false;
            }
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    out.extend_from_slice(&rest[..=i]);
                    rest = &rest[i + 1..];
                    *at_line_start = true;
                }
                None => {
                    out.extend_from_slice(rest);
                    break;
                }
            }
        }
        out
    }

    /// After the command's output: ends the run's part of a terminal line its
    /// last output left unfinished, so what follows on it is not the run's.
    async fn end_all(marks: &(Option<Arc<Marks>>, Option<Arc<Marks>>)) {
        let (a, b) = marks;
        let distinct = match (a, b) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => vec![a],
            _ => a.iter().chain(b.iter()).collect(),
        };
        for m in distinct {
            if *m.at_line_start.lock().await {
                continue;
            }
            let end = crate::source::terminal::mark::END;
            let _ = match m.stream {
                Stream::Stdout => tokio::io::stdout().write_all(end).await,
                Stream::Stderr => tokio::io::stderr().write_all(end).await,
            };
            let _ = match m.stream {
                Stream::Stdout => tokio::io::stdout().flush().await,
                Stream::Stderr => tokio::io::stderr().flush().await,
            };
        }
    }
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

    fn cut(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut c = LineCutter::default();
        let mut out = Vec::new();
        for ch in chunks {
            c.feed(ch, &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn a_traceparent_is_w3c_shaped() {
        let h = Hello {
            version: protocol::VERSION,
            job: "exec".into(),
            labels: Default::default(),
            argv: vec![],
            trace_id: random_id(16),
            span_id: random_id(8),
            started_ms: 0,
            git_head: None,
        };
        let tp = h.traceparent();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!((parts[0], parts[3]), ("00", "01"));
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
        assert!(tp
            .chars()
            .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn each_line_passed_to_a_terminal_starts_with_the_runs_mark() {
        let run = "0123456789abcdef0123456789abcdef";
        let m = Marks {
            begin: crate::source::terminal::mark::begin(run),
            at_line_start: tokio::sync::Mutex::new(true),
            stream: Stream::Stdout,
        };
        let mark = String::from_utf8(m.begin.clone()).unwrap();
        let mut start = true;
        let out = |b: Vec<u8>| String::from_utf8(b).unwrap();
        assert_eq!(
            out(m.apply(b"one\ntw", &mut start)),
            format!("{mark}one\n{mark}tw")
        );
        assert!(!start, "in the middle of a line");
        assert_eq!(out(m.apply(b"o\n\n", &mut start)), format!("o\n{mark}\n"));
        assert!(start);
        assert_eq!(out(m.apply(b"", &mut start)), "");
        assert!(start, "nothing written, no mark");
    }

    #[test]
    fn lines_split_across_chunks_come_out_whole() {
        let v = |s: &[&str]| s.iter().map(|l| l.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            cut(&[b"ab", b"c\nde", b"f\n", b"g"]),
            v(&["abc", "def", "g"])
        );
        assert_eq!(cut(&[b"\n\n"]), v(&["", ""]));
        assert!(cut(&[]).is_empty());
    }

    #[test]
    fn a_huge_line_is_captured_in_bounded_pieces() {
        let big = vec![b'x'; MAX_PENDING_LINE * 2 + 10];
        let out = cut(&[&big]);
        assert_eq!(
            out.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_PENDING_LINE, MAX_PENDING_LINE, 10]
        );
    }

    #[test]
    fn every_frame_of_a_worst_case_capture_fits_the_limit() {
        // Control characters cost six bytes of JSON each.
        let line = vec![0u8; MAX_PENDING_LINE];
        let dir = tempfile::tempdir().unwrap();
        let hello = Hello {
            version: protocol::VERSION,
            job: "exec".into(),
            labels: Default::default(),
            argv: vec![],
            trace_id: random_id(16),
            span_id: random_id(8),
            started_ms: 0,
            git_head: None,
        };
        let mut c = Capture::create(dir.path(), &hello).unwrap();
        c.write_lines(Stream::Stdout, &[line.clone(), line.clone(), line]);
        assert!(c.file.is_some(), "every frame was written");
        assert!(c.next_seq >= 2);
    }
}
