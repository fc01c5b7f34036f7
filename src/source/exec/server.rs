//! The daemon's end of the exec socket: takes runs from `wisp-agent exec` (see
//! [`super::protocol`]), makes their lines durable in the Loki spool through the
//! same transform → spool path as file lines, and builds each run's span.
//!
//! Who ran a command is what the kernel says of the socket's peer (SO_PEERCRED),
//! never what the client says: every line gets the label `user` (the uid's name
//! in `/etc/passwd`, or the uid), and a client cannot set `user`, `job` (other
//! than by `--name`), `host`, `filename` or `level` through its labels. The
//! daemon reads no file any user can write for this.
//!
//! Exactly once: each `lines` frame's number is stored with its lines in the
//! spool's commit, as a resume point keyed by (uid, trace id, span id); a client
//! that reconnects (after a lost connection, a daemon restart, or from its
//! outbox) is told how far the daemon holds the run and sends on from there.
//! Once a run's end is handled (its span in the OTLP spool, the run in
//! [`Handled`]) its resume point is forgotten; a replay of it is then answered
//! "complete".
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections (more are refused), at most
//! [`MAX_CONNECTIONS_PER_USER`] of one uid, each with one frame (at most
//! [`MAX_FRAME`]) in flight, so at most 64 MiB in flight; a connection silent
//! for [`IDLE_TIMEOUT`] is closed (its `exec` reconnects); at most
//! [`MAX_UNFINISHED_RUNS_PER_USER`] unfinished runs remembered per uid (past it
//! the oldest is forgotten), so no user grows the spool's state without bound.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::protocol::{
    encode, read_frame_async, ClientFrame, DaemonFrame, Hello, MAX_FRAME, VERSION,
};
use super::DEFAULT_JOB;
use crate::config::{is_valid_label_name, LogFormat};
use crate::record::{
    Ack, OtlpPayload, OtlpSignal, ResumePoint, SourceBatch, SourceInfo, SourceLine, Timestamp,
};
use crate::relay::Intake;
use crate::source::exec_spans::{span_request, Handled, RunSpan, SpanSettings};
use crate::source::terminal::{self, RenderStats};
use crate::spool::ResumeState;

/// Connections served at once; more are refused (their `exec` keeps its capture).
pub const MAX_CONNECTIONS: usize = 64;

/// Connections one user may hold at once, so no user can take every slot.
pub const MAX_CONNECTIONS_PER_USER: usize = 16;

/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Label names a client may not set: the agent's own.
const RESERVED_LABELS: [&str; 5] = ["job", "host", "filename", "level", "user"];

/// Resume-point keys of exec runs start so (file keys are 16 bytes of device and
/// inode: they never start so and are never this long).
const KEY_PREFIX: &[u8] = b"wisp-exec\0";

/// At most this many `--label`s, and this long a job or label value.
const MAX_LABELS: usize = 32;
const MAX_VALUE_CHARS: usize = 1024;

/// What the server needs from the daemon.
pub struct ExecServerSettings {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub span: SpanSettings,
    /// Where the run's spans go; without `[otlp]`, none is made.
    pub intake: Option<Intake>,
}

struct Ctx {
    tx: mpsc::Sender<SourceBatch>,
    /// Run key → how far the spool holds the run.
    durable: Arc<Mutex<HashMap<Vec<u8>, Progress>>>,
    /// Runs a connection is serving now: a second connection for one is refused.
    active: Mutex<HashSet<Vec<u8>>>,
    /// Open connections per uid (bounded by [`MAX_CONNECTIONS_PER_USER`]).
    per_user: Mutex<HashMap<u32, usize>>,
    handled: Arc<Mutex<Handled>>,
    intake: Option<Intake>,
    span: SpanSettings,
}

/// Binds the socket: its parent is created 0755 if missing, a stale socket left
/// by a dead daemon is replaced, the socket is made 0666 (see the module doc).
pub fn bind(socket: &Path) -> io::Result<UnixListener> {
    if let Some(parent) = socket.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another wisp-agent listens on {}; stop it or set exec.socket",
                        socket.display()
                    ),
                ));
            }
            std::fs::remove_file(socket)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; remove it or set exec.socket",
                    socket.display()
                ),
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// How far the spool holds an unfinished run: its resume point, `seq` then
/// `started_ms` (little-endian u64 each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Progress {
    seq: u64,
    started_ms: u64,
}

impl Progress {
    fn encode(self) -> Vec<u8> {
        let mut v = self.seq.to_le_bytes().to_vec();
        v.extend_from_slice(&self.started_ms.to_le_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<Progress> {
        let u64_at = |at: usize| Some(u64::from_le_bytes(v.get(at..at + 8)?.try_into().ok()?));
        Some(Progress {
            seq: u64_at(0)?,
            started_ms: u64_at(8).unwrap_or(0),
        })
    }
}

/// At most this many unfinished runs of one user are remembered (their resume
/// points live in every spool snapshot); past it the oldest is forgotten, and
/// should its capture still come, it is shipped again from its start.
pub const MAX_UNFINISHED_RUNS_PER_USER: usize = 256;

/// The exec runs the spool holds lines of, by run key, from its resume state.
fn durable_runs(resume: &ResumeState) -> HashMap<Vec<u8>, Progress> {
    resume
        .iter()
        .filter(|(k, _)| k.starts_with(KEY_PREFIX))
        .filter_map(|(k, v)| Some((k.clone(), Progress::decode(v)?)))
        .collect()
}

/// The uid part of a run key.
fn key_uid(key: &[u8]) -> Option<&[u8]> {
    key.get(KEY_PREFIX.len()..KEY_PREFIX.len() + 4)
}

/// When a new run of `key`'s user would exceed
/// [`MAX_UNFINISHED_RUNS_PER_USER`]: forgets that user's oldest and returns its
/// key, for the spool to forget too.
fn make_room(map: &mut HashMap<Vec<u8>, Progress>, key: &[u8]) -> Option<Vec<u8>> {
    let uid = key_uid(key)?;
    let mine: Vec<(&Vec<u8>, &Progress)> = map
        .iter()
        .filter(|(k, _)| key_uid(k) == Some(uid))
        .collect();
    if mine.len() < MAX_UNFINISHED_RUNS_PER_USER {
        return None;
    }
    let oldest = mine
        .into_iter()
        .min_by_key(|(_, p)| p.started_ms)
        .map(|(k, _)| k.clone())?;
    map.remove(&oldest);
    Some(oldest)
}

/// Serves the socket until `cancel`, then removes it. `tx` leads into the
/// transform stage; `resume` is the spool's resume state at start.
pub async fn run(
    listener: UnixListener,
    settings: ExecServerSettings,
    resume: &ResumeState,
    tx: mpsc::Sender<SourceBatch>,
    cancel: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        tx,
        durable: Arc::new(Mutex::new(durable_runs(resume))),
        active: Mutex::new(HashSet::new()),
        per_user: Mutex::new(HashMap::new()),
        handled: Arc::new(Mutex::new(Handled::load(&settings.state_dir))),
        intake: settings.intake,
        span: settings.span,
    });
    tracing::info!(
        "wisp-agent exec hands its runs over {}",
        settings.socket.display()
    );
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("cannot accept on the exec socket: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(
                        "{MAX_CONNECTIONS} exec connections are open; refusing one (its exec keeps its capture)"
                    );
                    tokio::spawn(refuse(stream, "the daemon is busy; try later".into()));
                    continue;
                };
                let ctx = ctx.clone();
                let cancel = cancel.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    if let Err(e) = serve(stream, &ctx, &cancel).await {
                        tracing::debug!("exec connection ended: {e}");
                    }
                });
            }
        }
    }
    conns.shutdown().await;
    let _ = std::fs::remove_file(&settings.socket);
}

async fn refuse(mut stream: UnixStream, reason: String) {
    if let Ok(bytes) = encode(&DaemonFrame::Refused { reason }) {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
    }
}

async fn send(stream: &mut UnixStream, frame: &DaemonFrame) -> io::Result<()> {
    let bytes = encode(frame)?;
    tokio::time::timeout(IDLE_TIMEOUT, stream.write_all(&bytes))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client does not read"))?
}

/// Removes a run from [`Ctx::active`] when its connection ends.
struct ActiveRun<'a> {
    ctx: &'a Ctx,
    key: Vec<u8>,
}

impl Drop for ActiveRun<'_> {
    fn drop(&mut self) {
        if let Ok(mut active) = self.ctx.active.lock() {
            active.remove(&self.key);
        }
    }
}

/// Counts a connection of `uid` while it lives (see [`Ctx::per_user`]).
struct UserSlot<'a> {
    ctx: &'a Ctx,
    uid: u32,
}

impl<'a> UserSlot<'a> {
    fn take(ctx: &'a Ctx, uid: u32) -> Option<UserSlot<'a>> {
        let mut map = ctx.per_user.lock().ok()?;
        let n = map.entry(uid).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_USER {
            return None;
        }
        *n += 1;
        Some(UserSlot { ctx, uid })
    }
}

impl Drop for UserSlot<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.ctx.per_user.lock() {
            if let Some(n) = map.get_mut(&self.uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.uid);
                }
            }
        }
    }
}

/// One connection: one run (see the module doc).
async fn serve(mut stream: UnixStream, ctx: &Ctx, cancel: &CancellationToken) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let uid = cred.uid();
    let user = user_name(uid);
    let Some(_slot) = UserSlot::take(ctx, uid) else {
        tracing::warn!(
            "{user} (uid {uid}) has {MAX_CONNECTIONS_PER_USER} exec connections open; refusing another"
        );
        return refuse_with(
            &mut stream,
            "too many connections of yours; try later".into(),
        )
        .await;
    };
    let hello = match next_frame(&mut stream, cancel).await? {
        Some(ClientFrame::Hello(hello)) => hello,
        Some(_) => {
            return refuse_with(&mut stream, "the first frame must be hello".into()).await;
        }
        None => return Ok(()),
    };
    let (job, labels) = match check_hello(&hello) {
        Ok(v) => v,
        Err(reason) => {
            tracing::warn!("refused an exec run of {user} (uid {uid}): {reason}");
            return refuse_with(&mut stream, reason).await;
        }
    };
    let key = run_key(uid, &hello);
    let handled_key = format!("{uid}:{}:{}", hello.trace_id, hello.span_id);
    if ctx
        .handled
        .lock()
        .map(|h| h.contains(&handled_key))
        .unwrap_or(false)
    {
        return send(
            &mut stream,
            &DaemonFrame::Welcome {
                acked: u64::MAX,
                complete: true,
            },
        )
        .await;
    }
    let fresh = ctx
        .active
        .lock()
        .map(|mut a| a.insert(key.clone()))
        .unwrap_or(false);
    if !fresh {
        return refuse_with(&mut stream, "another connection sends this run".into()).await;
    }
    let _active = ActiveRun {
        ctx,
        key: key.clone(),
    };
    let (mut acked, evicted) = match ctx.durable.lock() {
        Ok(mut d) => match d.get(&key) {
            Some(p) => (p.seq, None),
            None => (0, make_room(&mut d, &key)),
        },
        Err(_) => (0, None),
    };
    if let Some(old) = evicted {
        tracing::warn!(
            "{user} (uid {uid}) has {MAX_UNFINISHED_RUNS_PER_USER} unfinished exec runs; forgetting the oldest"
        );
        let forget = SourceBatch {
            source: Arc::new(SourceInfo {
                job: DEFAULT_JOB.into(),
                filename: None,
                labels: Vec::new(),
                format: LogFormat::Auto,
                label_fields: Vec::new(),
                trace_context: None,
            }),
            lines: Vec::new(),
            ack: Ack::none().with_resume(ResumePoint {
                key: old,
                state: None,
            }),
        };
        let _ = ctx.tx.send(forget).await;
    }
    send(
        &mut stream,
        &DaemonFrame::Welcome {
            acked,
            complete: false,
        },
    )
    .await?;
    let mut source_labels: Vec<(String, String)> = labels.into_iter().collect();
    source_labels.push(("user".into(), user.clone()));
    let source = Arc::new(SourceInfo {
        job: job.clone(),
        filename: None,
        labels: source_labels,
        format: LogFormat::Auto,
        label_fields: Vec::new(),
        trace_context: Some((hello.trace_id.clone(), hello.span_id.clone())),
    });
    loop {
        let Some(frame) = next_frame(&mut stream, cancel).await? else {
            return Ok(());
        };
        match frame {
            ClientFrame::Hello(_) => {
                return refuse_with(&mut stream, "hello sent twice".into()).await;
            }
            ClientFrame::Lines { seq, lines } => {
                if seq > acked {
                    let (done, durable) = oneshot::channel();
                    let map = ctx.durable.clone();
                    let k = key.clone();
                    let progress = Progress {
                        seq,
                        started_ms: hello.started_ms,
                    };
                    let ack = Ack::new(move || {
                        if let Ok(mut m) = map.lock() {
                            let e = m.entry(k).or_insert(progress);
                            e.seq = e.seq.max(seq);
                        }
                        let _ = done.send(());
                    })
                    .with_resume(ResumePoint {
                        key: key.clone(),
                        state: Some(progress.encode()),
                    });
                    let batch = SourceBatch {
                        source: source.clone(),
                        lines: source_lines(lines),
                        ack,
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        sent = ctx.tx.send(batch) => if sent.is_err() { return Ok(()) },
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        d = durable => if d.is_err() { return Ok(()) },
                    }
                    acked = seq;
                }
                send(&mut stream, &DaemonFrame::Acked { seq }).await?;
            }
            ClientFrame::End { exit, ended_ms } => {
                let run = RunSpan {
                    job,
                    labels: hello.labels.clone(),
                    command: hello.argv.clone(),
                    trace_id: hello.trace_id.clone(),
                    span_id: hello.span_id.clone(),
                    started_ms: hello.started_ms,
                    ended_ms,
                    exit,
                    user,
                };
                if let Err(reason) = finish_run(ctx, &run, handled_key).await {
                    return refuse_with(&mut stream, reason).await;
                }
                // Handled: the spool need not remember how far it holds the run.
                let forget = SourceBatch {
                    source,
                    lines: Vec::new(),
                    ack: Ack::none().with_resume(ResumePoint { key, state: None }),
                };
                let _ = ctx.tx.send(forget).await;
                return send(&mut stream, &DaemonFrame::Done).await;
            }
        }
    }
}

/// Hands the run's span on (with `[otlp]`) and lists the run as handled.
async fn finish_run(ctx: &Ctx, run: &RunSpan, handled_key: String) -> Result<(), String> {
    if let Some(intake) = &ctx.intake {
        match span_request(run, &ctx.span) {
            Some(body) => intake
                .store(OtlpPayload {
                    signal: OtlpSignal::Traces,
                    body: body.into(),
                })
                .await
                .map_err(|e| format!("cannot buffer the run's span: {e}"))?,
            None => tracing::warn!("exec run {handled_key} has invalid ids; no span for it"),
        }
    }
    let handled = ctx.handled.clone();
    let now = super::now_ms();
    let written = tokio::task::spawn_blocking(move || match handled.lock() {
        Ok(mut h) => h.insert(handled_key, now),
        Err(_) => Err(io::Error::other("the handled list is poisoned")),
    })
    .await
    .map_err(|e| e.to_string())?;
    // The span is in the spool either way: a replay would send it again, no worse.
    if let Err(e) = written {
        tracing::warn!("cannot record a handled exec run: {e}");
    }
    Ok(())
}

async fn refuse_with(stream: &mut UnixStream, reason: String) -> io::Result<()> {
    send(stream, &DaemonFrame::Refused { reason }).await
}

/// The next frame, `None` when the client closed, the daemon stops or the
/// connection has been idle for [`IDLE_TIMEOUT`].
async fn next_frame(
    stream: &mut UnixStream,
    cancel: &CancellationToken,
) -> io::Result<Option<ClientFrame>> {
    tokio::select! {
        _ = cancel.cancelled() => Ok(None),
        read = tokio::time::timeout(IDLE_TIMEOUT, read_frame_async::<ClientFrame, _>(stream)) => {
            match read {
                Ok(r) => r,
                Err(_) => Ok(None),
            }
        }
    }
}

fn run_key(uid: u32, hello: &Hello) -> Vec<u8> {
    let mut key = KEY_PREFIX.to_vec();
    key.extend_from_slice(&uid.to_le_bytes());
    key.extend_from_slice(hello.trace_id.as_bytes());
    key.extend_from_slice(hello.span_id.as_bytes());
    key
}

fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// Checks what a client may say of its run; returns the job and the labels.
fn check_hello(
    hello: &Hello,
) -> Result<(String, std::collections::BTreeMap<String, String>), String> {
    if hello.version != VERSION {
        return Err(format!(
            "protocol version {} is not {VERSION}: run the wisp-agent exec that came with this daemon",
            hello.version
        ));
    }
    if !is_hex_id(&hello.trace_id, 32) || !is_hex_id(&hello.span_id, 16) {
        return Err("trace_id and span_id must be 32 and 16 lowercase hex digits".into());
    }
    if hello.labels.len() > MAX_LABELS {
        return Err(format!("more than {MAX_LABELS} labels"));
    }
    for (k, v) in &hello.labels {
        if !is_valid_label_name(k) {
            return Err(format!(
                "label name {k:?} must match [a-zA-Z_][a-zA-Z0-9_]*"
            ));
        }
        if RESERVED_LABELS.contains(&k.as_str()) {
            return Err(format!(
                "label {k:?} is the agent's own (use --name for the job)"
            ));
        }
        if v.chars().count() > MAX_VALUE_CHARS {
            return Err(format!(
                "label {k:?} is longer than {MAX_VALUE_CHARS} characters"
            ));
        }
    }
    if hello.job.chars().count() > MAX_VALUE_CHARS {
        return Err(format!(
            "the job is longer than {MAX_VALUE_CHARS} characters"
        ));
    }
    let job = if hello.job.is_empty() {
        DEFAULT_JOB.to_string()
    } else {
        hello.job.clone()
    };
    Ok((job, hello.labels.clone()))
}

/// A client's read time is taken when it is plausible (at most a week old, not
/// ahead of now by more than ten minutes), else the daemon's now.
fn source_lines(lines: Vec<super::protocol::Line>) -> Vec<SourceLine> {
    const WEEK_NS: i64 = 7 * 24 * 3600 * 1_000_000_000;
    const AHEAD_NS: i64 = 600 * 1_000_000_000;
    let now = Timestamp::now();
    let mut stats = RenderStats::default();
    lines
        .into_iter()
        .map(|l| {
            let plausible = l.time_ns > now.0.saturating_sub(WEEK_NS)
                && l.time_ns < now.0.saturating_add(AHEAD_NS);
            SourceLine {
                text: terminal::render(l.text.as_bytes(), &mut stats),
                read_time: if plausible { Timestamp(l.time_ns) } else { now },
            }
        })
        .collect()
}

/// The name of `uid` in `/etc/passwd`, or the uid as text.
fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let _password = fields.next()?;
                let id: u32 = fields.next()?.parse().ok()?;
                (id == uid && !name.is_empty()).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

// MAX_FRAME is part of the bound stated in the module doc.
const _: () = assert!(MAX_FRAME * MAX_CONNECTIONS <= 64 * 1024 * 1024);

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: VERSION,
            job: "ralph".into(),
            labels: [("iter".to_string(), "3".to_string())].into(),
            argv: vec!["true".into()],
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            started_ms: 1,
        }
    }

    #[test]
    fn a_client_cannot_set_the_agents_own_labels_or_bad_ids() {
        assert!(check_hello(&hello()).is_ok());
        for name in RESERVED_LABELS {
            let mut h = hello();
            h.labels.insert(name.into(), "forged".into());
            assert!(check_hello(&h).is_err(), "{name}");
        }
        let mut h = hello();
        h.trace_id = "0".repeat(32);
        assert!(check_hello(&h).is_err());
        let mut h = hello();
        h.version = 99;
        assert!(check_hello(&h).is_err());
        let mut h = hello();
        h.job = String::new();
        assert_eq!(check_hello(&h).unwrap().0, "exec");
    }

    #[test]
    fn run_keys_differ_by_user_and_are_never_file_keys() {
        let a = run_key(0, &hello());
        let b = run_key(1000, &hello());
        assert_ne!(a, b);
        assert_ne!(a.len(), 16);
        let mut resume = ResumeState::new();
        resume.insert(a.clone(), 5u64.to_le_bytes().to_vec());
        resume.insert(vec![0; 16], vec![1; 30]);
        let runs = durable_runs(&resume);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs.get(&a).map(|p| p.seq), Some(5));
    }

    #[test]
    fn a_user_with_too_many_unfinished_runs_loses_its_oldest_not_anothers() {
        let mut map = HashMap::new();
        let key = |uid: u32, n: usize| {
            let mut h = hello();
            h.span_id = format!("{:016x}", n + 1);
            run_key(uid, &h)
        };
        for n in 0..MAX_UNFINISHED_RUNS_PER_USER {
            let p = Progress {
                seq: 1,
                started_ms: 100 + n as u64,
            };
            map.insert(key(1000, n), p);
        }
        map.insert(
            key(2000, 0),
            Progress {
                seq: 1,
                started_ms: 1,
            },
        );
        assert_eq!(make_room(&mut map, &key(2000, 1)), None);
        let evicted = make_room(&mut map, &key(1000, 9999));
        assert_eq!(evicted, Some(key(1000, 0)), "the oldest of that user");
        assert_eq!(map.len(), MAX_UNFINISHED_RUNS_PER_USER);
        let p = Progress {
            seq: 7,
            started_ms: 9,
        };
        assert_eq!(Progress::decode(&p.encode()), Some(p));
    }

    #[test]
    fn one_user_cannot_take_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let ctx = Ctx {
            tx,
            durable: Arc::default(),
            active: Mutex::default(),
            per_user: Mutex::default(),
            handled: Arc::new(Mutex::new(Handled::load(dir.path()))),
            intake: None,
            span: SpanSettings {
                hostname: "vm".into(),
                resource_attributes: vec![],
            },
        };
        let slots: Vec<_> = (0..MAX_CONNECTIONS_PER_USER)
            .map(|_| UserSlot::take(&ctx, 1000).unwrap())
            .collect();
        assert!(UserSlot::take(&ctx, 1000).is_none());
        assert!(UserSlot::take(&ctx, 1001).is_some(), "others still get in");
        drop(slots);
        assert!(UserSlot::take(&ctx, 1000).is_some());
    }

    #[test]
    fn root_is_named() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "4000000000");
    }
}
