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
//! the oldest is forgotten), so no user grows the spool's state without bound;
//! at most `agent.max_label_values` distinct `--name`/`--label` sets per uid
//! (further runs ship as `other`, `guard_streams`), so no user's streams
//! take another's; each uid's lines are its own owner in the spool
//! ([`crate::record::Owner::exec`]): a flood loses its own oldest first.
//!
//! Each line is also looked at for the cost the command reported
//! ([`super::cost`]); the run's last is kept with its resume point and put on
//! its span, and the run is counted ([`super::metrics`]) when its span is made.
//!
//! This file holds the socket and each connection's loop; [`hello`] checks what
//! a client says of its run, [`runs`] keeps the runs' keys and progress and
//! finishes an ended run (its span, the handled list).

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

use super::protocol::{encode, read_frame_async, ClientFrame, DaemonFrame, MAX_FRAME};
use super::DEFAULT_JOB;
use crate::config::LogFormat;
use crate::parse::labels::StreamGuard;
use crate::record::{Ack, Owner, ResumePoint, SourceBatch, SourceInfo, SourceLine, Timestamp};
use crate::relay::Intake;
use crate::source::exec::metrics::ExecCounters;
use crate::source::exec::spans::{Handled, RunSpan, SpanSettings};
use crate::source::exec::{cost, git};
use crate::source::terminal::{self, RenderStats};
use crate::spool::ResumeState;

use crate::source::known_runs::KnownRuns;

mod hello;
mod outboxes;
mod runs;
#[cfg(test)]
mod tests;

use hello::{check_hello, user_name};
pub use runs::MAX_UNFINISHED_RUNS_PER_USER;
use runs::{durable_runs, finish_run, make_room, run_key, Progress};

/// Connections served at once; more are refused (their `exec` keeps its capture).
pub const MAX_CONNECTIONS: usize = 64;

/// Connections one user may hold at once, so no user can take every slot.
pub const MAX_CONNECTIONS_PER_USER: usize = 16;

/// A second connection for a run another one is sending waits this long for
/// it, then is refused (its sender keeps the capture).
const ACTIVE_RUN_WAIT: Duration = Duration::from_secs(5);

/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the server needs from the daemon.
pub struct ExecServerSettings {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub span: SpanSettings,
    /// Where the run's spans go; without `[otlp]`, none is made.
    pub intake: Option<Intake>,
    /// The runs counted for `/metrics`.
    pub counters: Arc<ExecCounters>,
    /// Distinct label sets (`--name` and `--label` values) per user, at most
    /// (`agent.max_label_values`).
    pub max_label_sets: usize,
}

/// What the server knows before it serves, found by [`startup`] before the
/// tailers start: the runs (so a tailer leaves their marked lines to `exec`
/// from its first read on), the handled list, and the captures left in users'
/// outboxes.
pub struct Startup {
    pub known: Arc<KnownRuns>,
    handled: Handled,
    outboxes: Vec<outboxes::Outbox>,
}

/// Loads the handled list and the spool's unfinished runs, and looks into the
/// outboxes ([`outboxes`]): every run found there is known from now on.
pub fn startup(state_dir: &Path, resume: &ResumeState) -> Startup {
    let known = Arc::new(KnownRuns::default());
    let handled = Handled::load(state_dir);
    for key in handled.keys() {
        let mut parts = key.split(':');
        if let (Some(Ok(uid)), Some(trace_id)) = (parts.next().map(str::parse), parts.next()) {
            known.insert(trace_id, uid);
        }
    }
    for key in durable_runs(resume).keys() {
        if let Some((uid, trace_id)) = runs::key_run(key) {
            known.insert(trace_id, uid);
        }
    }
    let outboxes = outboxes::find(state_dir);
    for outbox in &outboxes {
        for (_, hello) in &outbox.captures {
            known.insert(&hello.trace_id, outbox.uid);
        }
    }
    Startup {
        known,
        handled,
        outboxes,
    }
}

struct Ctx {
    tx: mpsc::Sender<SourceBatch>,
    /// Run key → how far the spool holds the run.
    durable: Arc<Mutex<HashMap<Vec<u8>, Progress>>>,
    /// Runs a connection is serving now: a second connection for one waits
    /// for it (at most [`ACTIVE_RUN_WAIT`]).
    active: Mutex<HashSet<Vec<u8>>>,
    /// Told whenever a connection stops serving its run.
    run_ended: tokio::sync::Notify,
    /// Open connections per uid (bounded by [`MAX_CONNECTIONS_PER_USER`]).
    per_user: Mutex<HashMap<u32, usize>>,
    handled: Arc<Mutex<Handled>>,
    known: Arc<KnownRuns>,
    /// What users can make the server say again and again, said once a minute.
    warnings: crate::event::Repeated,
    intake: Option<Intake>,
    counters: Arc<ExecCounters>,
    span: SpanSettings,
    /// Each user's label sets ([`StreamGuard`]): one user's `--label` values
    /// never take another's streams.
    streams: Mutex<StreamGuard<u32>>,
}

/// Binds the socket: its parent is created 0755 if missing, a stale socket left
/// by a dead daemon is replaced, the socket is made 0666 (see the module doc)
/// before it appears under its name.
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
    // Bound, listening and opened to all under a name of its own, then renamed
    // into place: an `exec` starting beside the daemon finds either no socket
    // or one that answers, never one still being set up.
    let name = socket
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = socket.with_file_name(format!(".{name}.{}", std::process::id()));
    match std::fs::remove_file(&staging) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&staging)?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o666))
        .and_then(|()| std::fs::rename(&staging, socket));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(listener)
}

/// Serves the socket until `cancel`, then removes it. `tx` leads into the
/// transform stage; `resume` is the spool's resume state at start.
pub async fn run(
    listener: UnixListener,
    settings: ExecServerSettings,
    startup: Startup,
    resume: &ResumeState,
    tx: mpsc::Sender<SourceBatch>,
    cancel: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        tx,
        durable: Arc::new(Mutex::new(durable_runs(resume))),
        active: Mutex::new(HashSet::new()),
        run_ended: tokio::sync::Notify::new(),
        per_user: Mutex::new(HashMap::new()),
        handled: Arc::new(Mutex::new(startup.handled)),
        known: startup.known,
        warnings: crate::event::Repeated::default(),
        intake: settings.intake,
        counters: settings.counters,
        span: settings.span,
        streams: Mutex::new(StreamGuard::new(settings.max_label_sets)),
    });
    tracing::info!(
        "wisp-agent exec hands its runs over {}",
        settings.socket.display()
    );
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    if !startup.outboxes.is_empty() {
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        conns.spawn(async move { take_outboxes(startup.outboxes, &ctx, &cancel).await });
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        ctx.warnings.warn("accept", || format!("cannot accept on the exec socket: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    ctx.warnings.warn("busy", || format!(
                        "{MAX_CONNECTIONS} exec connections are open; refusing one (its exec keeps its capture)"
                    ));
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
        self.ctx.run_ended.notify_waiters();
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
async fn serve(stream: UnixStream, ctx: &Ctx, cancel: &CancellationToken) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let uid = cred.uid();
    let user = user_name(uid);
    let Some(_slot) = UserSlot::take(ctx, uid) else {
        ctx.warnings.warn("per user", || format!(
            "{user} (uid {uid}) has {MAX_CONNECTIONS_PER_USER} exec connections open; refusing another"
        ));
        let mut conn = Socket(stream);
        return conn
            .answer(&DaemonFrame::Refused {
                reason: "too many connections of yours; try later".into(),
            })
            .await;
    };
    serve_run(&mut Socket(stream), uid, user, ctx, cancel).await
}

/// Where a run comes from: a client on the socket, or a capture the daemon
/// takes from an outbox (which hears no answer).
trait Conn {
    /// The next frame, `None` when the run's sender is gone (or the daemon
    /// stops).
    async fn next(&mut self, cancel: &CancellationToken) -> io::Result<Option<ClientFrame>>;
    async fn answer(&mut self, frame: &DaemonFrame) -> io::Result<()>;
}

struct Socket(UnixStream);

impl Conn for Socket {
    async fn next(&mut self, cancel: &CancellationToken) -> io::Result<Option<ClientFrame>> {
        next_frame(&mut self.0, cancel).await
    }

    async fn answer(&mut self, frame: &DaemonFrame) -> io::Result<()> {
        send(&mut self.0, frame).await
    }
}

/// A capture in an outbox, read on a thread ([`outboxes::frames`]).
struct Capture(mpsc::Receiver<io::Result<ClientFrame>>);

impl Conn for Capture {
    async fn next(&mut self, cancel: &CancellationToken) -> io::Result<Option<ClientFrame>> {
        tokio::select! {
            _ = cancel.cancelled() => Ok(None),
            frame = self.0.recv() => frame.transpose(),
        }
    }

    async fn answer(&mut self, frame: &DaemonFrame) -> io::Result<()> {
        match frame {
            DaemonFrame::Refused { reason } => Err(io::Error::other(reason.clone())),
            _ => Ok(()),
        }
    }
}

/// Takes the captures found in the outboxes at start, one at a time, each as
/// its owner's run (see [`outboxes`]).
async fn take_outboxes(found: Vec<outboxes::Outbox>, ctx: &Ctx, cancel: &CancellationToken) {
    let (mut taken, mut left) = (0usize, 0usize);
    for outbox in &found {
        let user = user_name(outbox.uid);
        for (name, _) in &outbox.captures {
            if cancel.is_cancelled() {
                return;
            }
            let Some(file) = outbox.take(name) else {
                left += 1;
                continue;
            };
            let mut conn = Capture(outboxes::frames(file));
            match serve_run(&mut conn, outbox.uid, user.clone(), ctx, cancel).await {
                Ok(()) => taken += 1,
                Err(e) => {
                    left += 1;
                    tracing::warn!(
                        "cannot take the exec capture {:?}: {e}",
                        outbox.path.join(name)
                    );
                }
            }
        }
    }
    tracing::info!(
        "took {taken} exec capture(s) left in outboxes while no daemon ran ({left} left to their users' next exec)"
    );
}

/// Serves one run of `uid` from `conn` (see the module doc).
async fn serve_run(
    conn: &mut impl Conn,
    uid: u32,
    user: String,
    ctx: &Ctx,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let refuse = |reason: &str| DaemonFrame::Refused {
        reason: reason.to_string(),
    };
    let hello = match conn.next(cancel).await? {
        Some(ClientFrame::Hello(hello)) => hello,
        Some(_) => {
            return conn.answer(&refuse("the first frame must be hello")).await;
        }
        None => return Ok(()),
    };
    let (job, labels) = match check_hello(&hello) {
        Ok(v) => v,
        Err(reason) => {
            ctx.warnings.warn("hello", || {
                format!("refused an exec run of {user} (uid {uid}): {reason}")
            });
            return conn.answer(&refuse(&reason)).await;
        }
    };
    ctx.known.insert(&hello.trace_id, uid);
    let key = run_key(uid, &hello);
    let handled_key = format!("{uid}:{}:{}", hello.trace_id, hello.span_id);
    // Another connection may be sending this run (a flush racing the daemon's
    // own taking of the outbox, a reconnect whose old connection is not closed
    // yet): this one waits for it a while, and is then most likely told the
    // run is complete.
    let waited = tokio::time::Instant::now() + ACTIVE_RUN_WAIT;
    loop {
        let ended = ctx.run_ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        if ctx
            .handled
            .lock()
            .map(|h| h.contains(&handled_key))
            .unwrap_or(false)
        {
            return conn
                .answer(&DaemonFrame::Welcome {
                    acked: u64::MAX,
                    complete: true,
                })
                .await;
        }
        let fresh = ctx
            .active
            .lock()
            .map(|mut a| a.insert(key.clone()))
            .unwrap_or(false);
        if fresh {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = ended => {}
            _ = tokio::time::sleep_until(waited) => {
                return conn
                    .answer(&refuse("another connection sends this run"))
                    .await;
            }
        }
    }
    let _active = ActiveRun {
        ctx,
        key: key.clone(),
    };
    // How far the spool holds the run, and the last cost its lines reported.
    let (mut acked, mut cost_usd, evicted) = match ctx.durable.lock() {
        Ok(mut d) => match d.get(&key) {
            Some(p) => (p.seq, p.cost_usd, None),
            None => (0, None, make_room(&mut d, &key)),
        },
        Err(_) => (0, None, None),
    };
    if let Some(old) = evicted {
        ctx.warnings.warn("unfinished", || format!(
            "{user} (uid {uid}) has {MAX_UNFINISHED_RUNS_PER_USER} unfinished exec runs; forgetting the oldest"
        ));
        let forget = SourceBatch {
            source: Arc::new(SourceInfo {
                job: DEFAULT_JOB.into(),
                filename: None,
                labels: Vec::new(),
                format: LogFormat::Auto,
                label_fields: Vec::new(),
                trace_context: None,
                owner: Owner::exec(uid),
            }),
            lines: Vec::new(),
            ack: Ack::none().with_resume(ResumePoint {
                key: old,
                state: None,
            }),
        };
        let _ = ctx.tx.send(forget).await;
    }
    conn.answer(&DaemonFrame::Welcome {
        acked,
        complete: false,
    })
    .await?;
    let (line_job, line_labels) = guard_streams(ctx, uid, &user, &job, labels);
    let mut source_labels = line_labels;
    source_labels.push(("user".into(), user.clone()));
    let source = Arc::new(SourceInfo {
        job: line_job,
        filename: None,
        labels: source_labels,
        format: LogFormat::Auto,
        label_fields: Vec::new(),
        trace_context: Some((hello.trace_id.clone(), hello.span_id.clone())),
        owner: Owner::exec(uid),
    });
    loop {
        let Some(frame) = conn.next(cancel).await? else {
            return Ok(());
        };
        match frame {
            ClientFrame::Hello(_) => {
                return conn.answer(&refuse("hello sent twice")).await;
            }
            ClientFrame::Lines { seq, lines } => {
                if seq > acked {
                    let lines = source_lines(lines);
                    if let Some(c) = cost::last_reported(lines.iter().map(|l| l.text.as_str())) {
                        cost_usd = Some(c);
                    }
                    let (done, durable) = oneshot::channel();
                    let map = ctx.durable.clone();
                    let k = key.clone();
                    let progress = Progress {
                        seq,
                        started_ms: hello.started_ms,
                        cost_usd,
                    };
                    let ack = Ack::new(move || {
                        if let Ok(mut m) = map.lock() {
                            let e = m.entry(k).or_insert(progress);
                            if progress.seq >= e.seq {
                                *e = progress;
                            }
                        }
                        let _ = done.send(());
                    })
                    .with_resume(ResumePoint {
                        key: key.clone(),
                        state: Some(progress.encode()),
                    });
                    let batch = SourceBatch {
                        source: source.clone(),
                        lines,
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
                conn.answer(&DaemonFrame::Acked { seq }).await?;
            }
            ClientFrame::End {
                exit,
                ended_ms,
                git_head,
            } => {
                let commit = |h: Option<&String>| h.filter(|h| git::is_commit(h)).cloned();
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
                    git_head_before: commit(hello.git_head.as_ref()),
                    git_head_after: commit(git_head.as_ref()),
                    cost_usd,
                };
                if let Err(reason) = finish_run(ctx, uid, &run, handled_key).await {
                    return conn.answer(&refuse(&reason)).await;
                }
                // Handled: the spool need not remember how far it holds the
                // run (nothing to forget for a run that printed nothing: no
                // append, no fsync).
                let held = ctx
                    .durable
                    .lock()
                    .map(|mut d| d.remove(&key).is_some())
                    .unwrap_or(true);
                if held || acked > 0 {
                    let forget = SourceBatch {
                        source,
                        lines: Vec::new(),
                        ack: Ack::none().with_resume(ResumePoint { key, state: None }),
                    };
                    let _ = ctx.tx.send(forget).await;
                }
                return conn.answer(&DaemonFrame::Done).await;
            }
        }
    }
}

/// The job and labels a run's lines are shipped with: its own, or, once its
/// user has used [`ExecServerSettings::max_label_sets`] other sets, `other`
/// for the job and each label value (the names kept; the span keeps the
/// run's own). Warned once per user, counted per run.
fn guard_streams(
    ctx: &Ctx,
    uid: u32,
    user: &str,
    job: &str,
    labels: std::collections::BTreeMap<String, String>,
) -> (String, Vec<(String, String)>) {
    use crate::parse::labels::{Admitted, OVERFLOW_VALUE};
    let admitted = match ctx.streams.lock() {
        Ok(mut g) => g.admit(&uid, (job, &labels)),
        Err(_) => Admitted::Value(""),
    };
    match admitted {
        Admitted::Value(_) => (job.to_owned(), labels.into_iter().collect()),
        Admitted::Overflow { first } => {
            if first {
                tracing::warn!(
                    "{user} (uid {uid}) used more distinct exec --name/--label sets than \
                     agent.max_label_values allows; further runs of theirs are shipped with \
                     job and label values \"{OVERFLOW_VALUE}\""
                );
            }
            ctx.counters.relabelled();
            let labels = labels
                .into_keys()
                .map(|k| (k, OVERFLOW_VALUE.to_owned()))
                .collect();
            (OVERFLOW_VALUE.to_owned(), labels)
        }
    }
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

/// A client's read time is taken when it is plausible (at most a week old, not
/// ahead of now by more than ten minutes), else the daemon's now. Lines of one
/// chunk share it; the transform makes them distinct within the run
/// ([`crate::parse::stamp`], the run's clock kept with its resume point).
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

// MAX_FRAME is part of the bound stated in the module doc.
const _: () = assert!(MAX_FRAME * MAX_CONNECTIONS <= 64 * 1024 * 1024);
