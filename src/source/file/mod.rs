//! The file tailer: follows every file the `[[files]]` globs match, and never loses
//! or doubles a line across rotations, truncations and restarts.
//!
//! How it holds that promise:
//! - files are known by device + inode confirmed by a fingerprint of their first
//!   bytes ([`fingerprint`]), not by path, so a rename-and-create rotation leaves the
//!   old file followed to its end while the new one is read from its start; a
//!   truncation (copytruncate, `: > file`) restarts reading at 0;
//! - one directory watcher wakes the tailer on file events ([`watcher`]), and a poll
//!   every `poll_interval` rescans the globs and stats every open file, which is what
//!   catches writes inotify never reports (virtiofs, 9p, sshfs shared folders);
//! - lines are cut, rendered and joined per file ([`reader`]) into batches whose
//!   acks, called once the batch is durable downstream, advance the checkpoint
//!   ([`checkpoint`]); the checkpoint file is written atomically every second and at
//!   shutdown, and a restart resumes from it exactly;
//! - `start_at = end` applies only to files present at startup with no checkpoint;
//!   a file that appears while the agent runs is read from its start, or lines
//!   written right after a rotation would be lost;
//! - a full channel stops the reading (backpressure): at most a few batches per file
//!   are held in memory, whatever the size of the files.
//!
//! - `copytruncate` is followed without loss when the copy is matched too (say
//!   `app.log*`): a new file whose first bytes are those of a followed or just
//!   truncated file is read on from where the original was read up to.
//!
//! - what the globs match is opened through [`open`]: regular files only, never
//!   blocking (a FIFO is skipped, not waited on), symlinks followed only when
//!   their owner owns the target or root owns them (or `follow_symlinks = true`);
//!   a path that cannot be checked for a moment is not taken for a rotation.
//!
//! Reading is plain blocking I/O on the tailer's task: reads of local files do not
//! block for long, and one task keeps the order of events simple. The poll runs at
//! the smallest `poll_interval` of the entries.
//!
//! Why not `linemux` (named on the design card): it tails by path, yields `String`
//! lines and has no resume offset, so it can neither checkpoint nor tell a rotated
//! file from a new one; `notify` is used directly instead.

mod checkpoint;
mod fingerprint;
pub(crate) mod open;
mod reader;
mod watcher;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{FileConfig, StartAt};
use crate::record::{Ack, SourceBatch, SourceInfo};
use crate::source::multiline::JoinerSettings;
use crate::source::terminal::RenderStats;
use crate::spool::ResumeState;

use checkpoint::{CheckpointStore, Known, SharedCommits};
use fingerprint::{FileId, Fingerprint};
use open::Opened;
use reader::{FileState, LineLimits, OpenFile, Tailed};
use watcher::DirWatcher;

pub use checkpoint::POSITIONS_FILE;

/// How often acknowledged offsets are written to the positions file (when they
/// changed).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// At shutdown, how long to wait for the last batches to be taken and acknowledged.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Bytes read from one file before the others get their turn.
const FILE_TURN_BYTES: usize = 8 << 20;
/// A file appearing this long after another was truncated may be its copy.
const COPY_WINDOW: Duration = Duration::from_secs(60);
/// How long a file whose copy appeared waits for its truncation before reading on.
const COPY_PAUSE: Duration = Duration::from_secs(5);
/// The poll never runs more often than this, whatever `poll_interval` says.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What the tailer needs from the configuration.
#[derive(Clone, Debug)]
pub struct TailSettings {
    pub files: Vec<FileConfig>,
    /// Checkpoints (`positions.json`) live here.
    pub state_dir: PathBuf,
    /// Listen for file events (inotify). Off, the tailer relies on its poll alone,
    /// as it must on mounts where events never fire; tests use it to prove that.
    pub events: bool,
    /// Where the tailer counts what it does (shared with the admin endpoint).
    pub counters: Arc<TailCounters>,
    /// The resume points the spool holds (its commits): they win over
    /// `positions.json`, which is written after them.
    pub resume: ResumeState,
}

impl TailSettings {
    /// Settings with file events on and fresh counters.
    pub fn new(files: Vec<FileConfig>, state_dir: PathBuf) -> Self {
        Self {
            files,
            state_dir,
            events: true,
            counters: Arc::default(),
            resume: ResumeState::new(),
        }
    }
}

/// Why the tailer could not run at all (per-file problems are logged, not fatal).
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("invalid path pattern {pattern:?} in [[files]] entry {entry:?}: {reason}")]
    Pattern {
        entry: String,
        pattern: String,
        reason: String,
    },
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The tailer's counters; read them with [`TailCounters::snapshot`].
#[derive(Debug, Default)]
pub struct TailCounters {
    bytes_read: AtomicU64,
    lines_read: AtomicU64,
    lines_cut: AtomicU64,
    invalid_utf8_lines: AtomicU64,
    escape_sequences_stripped: AtomicU64,
    controls_dropped: AtomicU64,
    files_open: AtomicU64,
    rotations: AtomicU64,
    truncations: AtomicU64,
    deletions: AtomicU64,
    checkpoint_write_errors: AtomicU64,
}

/// The tailer's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TailStats {
    pub bytes_read: u64,
    /// Physical lines read (a partial line flushed on timeout counts as one).
    pub lines_read: u64,
    /// Lines longer than `max_line_bytes`, cut there.
    pub lines_cut: u64,
    /// Lines with invalid UTF-8, shipped with U+FFFD in its place.
    pub invalid_utf8_lines: u64,
    pub escape_sequences_stripped: u64,
    /// Control characters removed from lines (NUL, BEL, DEL, stray C1).
    pub controls_dropped: u64,
    /// Files open now (a gauge).
    pub files_open: u64,
    /// Files renamed away from their path (rename-and-create rotation).
    pub rotations: u64,
    /// Files found shorter than what was read, or with new first bytes.
    pub truncations: u64,
    pub deletions: u64,
    pub checkpoint_write_errors: u64,
}

impl TailCounters {
    pub fn snapshot(&self) -> TailStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TailStats {
            bytes_read: g(&self.bytes_read),
            lines_read: g(&self.lines_read),
            lines_cut: g(&self.lines_cut),
            invalid_utf8_lines: g(&self.invalid_utf8_lines),
            escape_sequences_stripped: g(&self.escape_sequences_stripped),
            controls_dropped: g(&self.controls_dropped),
            files_open: g(&self.files_open),
            rotations: g(&self.rotations),
            truncations: g(&self.truncations),
            deletions: g(&self.deletions),
            checkpoint_write_errors: g(&self.checkpoint_write_errors),
        }
    }

    fn add_render(&self, stats: &RenderStats, cut: u64) {
        if cut > 0 {
            self.lines_cut.fetch_add(cut, Ordering::Relaxed);
        }
        if stats.invalid_utf8_lines > 0 {
            self.invalid_utf8_lines
                .fetch_add(stats.invalid_utf8_lines, Ordering::Relaxed);
        }
        if stats.sequences_stripped > 0 {
            self.escape_sequences_stripped
                .fetch_add(stats.sequences_stripped, Ordering::Relaxed);
        }
        if stats.controls_dropped > 0 {
            self.controls_dropped
                .fetch_add(stats.controls_dropped, Ordering::Relaxed);
        }
    }
}

impl TailStats {
    /// The counters under their metric names (`files_open` is a gauge).
    pub fn metrics(&self) -> [(&'static str, u64); 11] {
        [
            ("wisp_file_bytes_read_total", self.bytes_read),
            ("wisp_file_lines_read_total", self.lines_read),
            ("wisp_file_lines_cut_total", self.lines_cut),
            (
                "wisp_file_invalid_utf8_lines_total",
                self.invalid_utf8_lines,
            ),
            (
                "wisp_file_escape_sequences_stripped_total",
                self.escape_sequences_stripped,
            ),
            ("wisp_file_controls_dropped_total", self.controls_dropped),
            ("wisp_file_files_open", self.files_open),
            ("wisp_file_rotations_total", self.rotations),
            ("wisp_file_truncations_total", self.truncations),
            ("wisp_file_deletions_total", self.deletions),
            (
                "wisp_file_checkpoint_write_errors_total",
                self.checkpoint_write_errors,
            ),
        ]
    }
}

/// Tails every configured file until `cancel` fires, sending batches on `tx`; a
/// batch's ack advances the checkpoint. Returns once all read data has been handed
/// on and the checkpoints of acknowledged batches are written.
pub async fn run(
    settings: TailSettings,
    tx: mpsc::Sender<SourceBatch>,
    cancel: CancellationToken,
) -> Result<(), TailError> {
    let mut tailer = Tailer::new(&settings)?;
    tailer.scan(true);
    // Remember where files present at startup begin, so a crash before the first
    // ack does not apply `start_at = end` to them a second time.
    tailer.save(true);
    let wake = tailer.watcher.wake.clone();
    let mut next_poll = Instant::now() + tailer.poll_interval;
    let mut next_save = Instant::now() + CHECKPOINT_INTERVAL;
    loop {
        let flow = tailer.pump(&tx, &cancel).await;
        if flow == Flow::Stop {
            break;
        }
        let now = Instant::now();
        tailer.flush_due(now);
        if tailer.send_out(&tx, &cancel).await == Flow::Stop {
            break;
        }
        if now >= next_save {
            tailer.save(false);
            next_save = now + CHECKPOINT_INTERVAL;
        }
        let deadline = match flow {
            Flow::More => now,
            _ => tailer.deadline().map_or(next_poll.min(next_save), |d| {
                d.min(next_poll).min(next_save)
            }),
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = wake.notify.notified() => {
                if wake.rescan.swap(false, Ordering::Relaxed) || tailer.undecided {
                    tailer.scan(false);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let now = Instant::now();
        if now >= next_poll {
            tailer.poll();
            next_poll = now + tailer.poll_interval;
        }
    }
    tailer.shut_down(&tx).await;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Go,
    /// Some file has more to read right away.
    More,
    Stop,
}

/// Whether a file that appeared is a copy of another (see [`Tailer::copy_of`]).
#[derive(Clone, Copy, Debug)]
enum Copy {
    /// Read it from `offset`. `original`: the file it copies, still followed;
    /// `truncated`: whether that one was truncated already (else it pauses until
    /// it is).
    Of {
        offset: u64,
        original: u64,
        truncated: bool,
    },
    /// Too short to tell yet.
    Undecided,
    No,
}

/// One `[[files]]` entry, prepared.
struct Entry {
    config: FileConfig,
    limits: LineLimits,
    joiner: JoinerSettings,
}

/// A file no longer read whose last batches may still be acknowledged.
struct Closing {
    id: FileId,
    path: PathBuf,
    fingerprint: Fingerprint,
    commits: SharedCommits,
    deleted: bool,
}

struct Tailer {
    entries: Vec<Entry>,
    /// Open files by open order: read oldest first, so that after a rename and
    /// create the rotated file's last lines go out before the new file's first.
    files: BTreeMap<u64, Tailed>,
    by_id: HashMap<FileId, u64>,
    closing: Vec<Closing>,
    next_seq: u64,
    store: CheckpointStore,
    save_failing: bool,
    watcher: DirWatcher,
    roots: Vec<(PathBuf, bool)>,
    counters: Arc<TailCounters>,
    chunk: Vec<u8>,
    /// Batches read and not yet sent: a few at most, as reading stops while one waits.
    out: VecDeque<SourceBatch>,
    poll_interval: Duration,
    /// Matched paths not tailed now (unreadable, refused, not regular files), with
    /// the message logged for each: logged once, again only if it changes. Holds
    /// only the paths of the last scan's problems, so it stays as small as the
    /// globs' matches.
    unreadable: HashMap<PathBuf, String>,
    /// A new file was left for a later scan (see [`Copy::Undecided`]): writes
    /// that events report then call for a rescan too.
    undecided: bool,
    /// Files truncated within [`COPY_WINDOW`]: fingerprint before, where their
    /// unread part began, when, and which open file it was.
    truncated: Vec<(Fingerprint, u64, Instant, u64)>,
    /// The source named by batches that carry only resume points (no lines).
    marker_source: Arc<SourceInfo>,
}

impl Tailer {
    fn new(settings: &TailSettings) -> Result<Self, TailError> {
        let mut roots = Vec::new();
        for f in &settings.files {
            for p in &f.paths {
                glob::Pattern::new(p).map_err(|e| TailError::Pattern {
                    entry: f.name.clone(),
                    pattern: p.clone(),
                    reason: e.to_string(),
                })?;
                let root = watcher::root_of(p);
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
        }
        std::fs::create_dir_all(&settings.state_dir).map_err(|source| TailError::StateDir {
            path: settings.state_dir.clone(),
            source,
        })?;
        let (mut store, problem) = CheckpointStore::load(&settings.state_dir);
        if let Some(p) = problem {
            tracing::warn!("{p}");
        }
        let moved = store.apply_resume(&settings.resume);
        if moved > 0 {
            tracing::info!(
                "{moved} file(s) resume where the buffer's last commit left them, past {}: \
                 lines buffered before a crash are not read again",
                store.path().display()
            );
        }
        let entries: Vec<Entry> = settings
            .files
            .iter()
            .map(|c| {
                let max_line_bytes = c.max_line_bytes.as_usize().max(1);
                Entry {
                    config: c.clone(),
                    limits: LineLimits {
                        max_line_bytes,
                        partial_line_timeout: c.partial_line_timeout.get(),
                    },
                    joiner: JoinerSettings {
                        mode: c.multiline.clone(),
                        max_lines: c.multiline_max_lines,
                        max_bytes: max_line_bytes,
                        timeout: c.multiline_timeout.get(),
                    },
                }
            })
            .collect();
        let poll_interval = entries
            .iter()
            .map(|e| e.config.poll_interval.get())
            .min()
            .unwrap_or(Duration::from_secs(1))
            .max(MIN_POLL_INTERVAL);
        let watcher = DirWatcher::new(settings.events && !entries.is_empty());
        if !settings.events {
            tracing::info!("file events are off: following files by polling alone");
        }
        Ok(Self {
            entries,
            files: BTreeMap::new(),
            by_id: HashMap::new(),
            closing: Vec::new(),
            next_seq: 0,
            store,
            save_failing: false,
            watcher,
            roots,
            counters: settings.counters.clone(),
            chunk: vec![0; reader::CHUNK_BYTES],
            out: VecDeque::new(),
            poll_interval,
            unreadable: HashMap::new(),
            truncated: Vec::new(),
            undecided: false,
            marker_source: Arc::new(SourceInfo {
                job: String::new(),
                filename: None,
                labels: Vec::new(),
                format: crate::config::LogFormat::Text,
                label_fields: Vec::new(),
                trace_context: None,
            }),
        })
    }

    /// Matches the globs: opens files not followed yet, and starts draining the
    /// followed files no pattern matches any more (renamed away or deleted). A
    /// followed file the globs miss but whose path still names it, or cannot be
    /// checked for now (a folder the agent cannot search or list, no file
    /// descriptors left), is not taken for rotated: it is followed on through its
    /// descriptor and its checkpoint kept.
    fn scan(&mut self, startup: bool) {
        self.undecided = false;
        self.watcher.watch_roots(&self.roots);
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        let mut problems: Vec<(PathBuf, String)> = Vec::new();
        for (ei, entry) in self.entries.iter().enumerate() {
            for pattern in &entry.config.paths {
                let Ok(paths) = glob::glob(pattern) else {
                    continue;
                };
                for path in paths {
                    let path = match path {
                        Ok(p) => p,
                        Err(e) => {
                            let msg = format!(
                                "cannot list {} for {pattern:?}: {}; files there are not \
                                 found until it can",
                                e.path().display(),
                                open::describe(e.error())
                            );
                            problems.push((e.path().to_path_buf(), msg));
                            continue;
                        }
                    };
                    let meta = match std::fs::metadata(&path) {
                        Ok(m) => m,
                        Err(e) if open::is_gone(&e) => continue,
                        Err(e) => {
                            let msg = format!(
                                "cannot check {}: {}; skipping it for now",
                                path.display(),
                                open::describe(&e)
                            );
                            problems.push((path, msg));
                            continue;
                        }
                    };
                    if !meta.is_file() {
                        // `*` matching a folder is ordinary; anything else is noted.
                        if !meta.is_dir() {
                            let msg = open::Refused::NotRegular {
                                kind: open::kind_of(&meta.file_type()),
                            }
                            .message(&path);
                            problems.push((path, msg));
                        }
                        continue;
                    }
                    let id = FileId::of(&meta);
                    if seen.contains(&id) {
                        continue;
                    }
                    if self.by_id.contains_key(&id) {
                        seen.insert(id);
                        found.push((ei, path, id, None));
                        continue;
                    }
                    // Opened here, through the symlink policy, so that a path the
                    // policy refuses never claims the file for its entry (a link
                    // to a file another entry tails must not hide it from that one).
                    match open::open_file(&path, entry.config.follow_symlinks) {
                        Ok(opened) => {
                            // The path may have changed hands since the stat: the
                            // open descriptor is what counts.
                            let id = FileId::of(&opened.meta);
                            if seen.insert(id) {
                                found.push((ei, path, id, Some(opened)));
                            }
                        }
                        Err(r) => {
                            let msg = r.message(&path);
                            problems.push((path, msg));
                        }
                    }
                }
            }
        }
        let current: HashSet<&PathBuf> = problems.iter().map(|(p, _)| p).collect();
        self.unreadable.retain(|p, _| current.contains(p));
        drop(current);
        for (path, msg) in problems {
            if self.unreadable.get(&path) != Some(&msg) {
                tracing::warn!("{msg}");
                self.unreadable.insert(path, msg);
            }
        }
        let now = Instant::now();
        for t in self.files.values_mut() {
            if t.state == FileState::Following && !seen.contains(&t.id) {
                let deleted = t.is_deleted();
                if !deleted {
                    match std::fs::metadata(&t.path) {
                        // Still there: the glob missed it (a folder it could not
                        // list).
                        Ok(m) if FileId::of(&m) == t.id => continue,
                        Err(e) if !open::is_gone(&e) => {
                            t.report_error(format!(
                                "cannot check {}: {}; still following it through its open \
                                 descriptor, its checkpoint kept",
                                t.path.display(),
                                open::describe(&e)
                            ));
                            continue;
                        }
                        _ => {}
                    }
                }
                if deleted {
                    tracing::info!("{} was deleted: reading it to its end", t.path.display());
                    self.counters.deletions.fetch_add(1, Ordering::Relaxed);
                } else {
                    tracing::info!(
                        "{} was rotated away: reading it to its end",
                        t.path.display()
                    );
                    self.counters.rotations.fetch_add(1, Ordering::Relaxed);
                }
                t.start_draining(now, deleted);
            }
        }
        // Files with a checkpoint first: one found truncated since tells a copy
        // of it (`copytruncate`) among the new ones, whatever their names.
        found.sort_by_key(|(_, _, id, _)| !self.store.knows(*id));
        for (ei, path, id, opened) in found {
            if let Some(t) = self.by_id.get(&id).and_then(|s| self.files.get_mut(s)) {
                if t.path != path {
                    // A new name for a followed file counts only if the file could
                    // be opened there: a refused symlink to it is not a rotation.
                    let follow = self.entries[ei].config.follow_symlinks;
                    if open::open_file(&path, follow).is_ok_and(|o| FileId::of(&o.meta) == id) {
                        tracing::info!(
                            "{} was rotated to {}: following it there",
                            t.path.display(),
                            path.display()
                        );
                        self.counters.rotations.fetch_add(1, Ordering::Relaxed);
                        t.path = path;
                    }
                }
                t.state = FileState::Following;
                continue;
            }
            if let Some(opened) = opened {
                self.open(ei, path, opened, startup);
            }
        }
    }

    /// Starts following a file; where from, the checkpoint store decides, else
    /// `start_at` (at startup) or the file's start (a file that appeared later).
    fn open(&mut self, ei: usize, path: PathBuf, opened: Opened, startup: bool) {
        let Opened { file, meta } = opened;
        let id = FileId::of(&meta);
        if self.by_id.contains_key(&id) {
            return;
        }
        let size = meta.len();
        let fingerprint = match Fingerprint::of_file(&file) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}; skipping it", path.display());
                return;
            }
        };
        let known = self.store.lookup(id, &path, &file);
        // A new file may be a copy of a followed one, or of one found truncated
        // (`copytruncate`), at startup too: the copy may have been made while
        // the agent was away, or just before it stopped. At startup only a
        // whole fingerprint counts: a short file like another is not held back
        // waiting to tell.
        let copy_of = match known {
            Known::New | Known::Replaced if !startup || fingerprint.is_complete() => {
                self.copy_of(id, fingerprint)
            }
            _ => Copy::No,
        };
        let entry = &self.entries[ei];
        let (offset, why) = match known {
            Known::Resume { offset } if offset <= size => (offset, "its checkpoint"),
            Known::Resume { offset: was } => {
                self.counters.truncations.fetch_add(1, Ordering::Relaxed);
                Self::note_truncation(&mut self.truncated, self.next_seq, Some((fingerprint, was)));
                (0, "the start: it was truncated since its checkpoint")
            }
            Known::Changed { was, offset: read } => {
                Self::note_truncation(&mut self.truncated, self.next_seq, Some((was, read)));
                (0, "the start: its first bytes changed since its checkpoint")
            }
            Known::New | Known::Replaced => match copy_of {
                // Perhaps a copy still being written: decide at a later scan,
                // which the next write to it (or the poll) brings.
                Copy::Undecided => {
                    self.undecided = true;
                    return;
                }
                Copy::Of { offset, .. } if offset > size => {
                    self.undecided = true;
                    return;
                }
                Copy::Of { offset, .. } => (offset, "where its original was read up to: a copy"),
                Copy::No => match known {
                    Known::Replaced if startup => {
                        (0, "the start: it replaced a file followed before")
                    }
                    Known::New if startup && entry.config.start_at == StartAt::End => {
                        (size, "the end: start_at = end")
                    }
                    Known::New if startup => (0, "the start: start_at = beginning"),
                    _ => (0, "the start: a new file"),
                },
            },
        };
        if let Copy::Of {
            original,
            truncated,
            ..
        } = copy_of
        {
            if let Some(original) = self.files.get_mut(&original) {
                if truncated {
                    original.discard_orphan();
                } else {
                    original.mark_copied(COPY_PAUSE);
                }
            }
        }
        let source = Arc::new(SourceInfo {
            job: entry.config.name.clone(),
            filename: Some(path.display().to_string()),
            labels: entry
                .config
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            trace_context: None,
            format: entry.config.format,
            label_fields: entry.config.label_fields.clone(),
        });
        let seq = self.next_seq;
        let t = Tailed::open(OpenFile {
            id,
            path: path.clone(),
            file,
            fingerprint,
            offset,
            source,
            joiner: entry.joiner.clone(),
            limits: entry.limits,
        });
        tracing::info!("tailing {} from byte {offset} ({why})", path.display());
        self.store.put(id, &path, t.fingerprint, offset);
        self.out.push_back(t.resume_marker());
        self.next_seq += 1;
        self.by_id.insert(id, seq);
        self.files.insert(seq, t);
        self.counters.files_open.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a new file is a copy of one being followed, or of one truncated a
    /// moment ago: `copytruncate` copies a file, then truncates it. Then the copy is
    /// read on from where the original was read up to (the lines written before the
    /// truncation and not read yet are only in the copy), not from 0 (which would
    /// ship everything twice). Only complete fingerprints count as proof.
    fn copy_of(&mut self, id: FileId, fingerprint: Fingerprint) -> Copy {
        let live = self
            .files
            .iter()
            .filter(|(_, t)| t.id != id && t.state == FileState::Following);
        if !fingerprint.is_complete() {
            // Too short to tell: if a followed file starts with these bytes, this
            // may be its copy in the making. Reading it from 0 now could ship that
            // file's lines twice, so wait until it is long enough to tell.
            return match live.clone().any(|(_, t)| t.starts_like(fingerprint)) {
                true => Copy::Undecided,
                false => Copy::No,
            };
        }
        let mut live = live;
        if let Some((seq, t)) = live.find(|(_, t)| t.fingerprint == fingerprint) {
            return Copy::Of {
                offset: t.line_start(),
                original: *seq,
                truncated: false,
            };
        }
        let now = Instant::now();
        self.truncated
            .retain(|(_, _, at, _)| now.duration_since(*at) < COPY_WINDOW);
        match self.truncated.iter().find(|(fp, ..)| *fp == fingerprint) {
            Some((_, offset, _, seq)) => Copy::Of {
                offset: *offset,
                original: *seq,
                truncated: true,
            },
            None => Copy::No,
        }
    }

    /// Notes a truncation, for [`Tailer::copy_of`].
    fn note_truncation(
        truncated: &mut Vec<(Fingerprint, u64, Instant, u64)>,
        seq: u64,
        before: Option<(Fingerprint, u64)>,
    ) {
        if let Some((fp, offset)) = before {
            if fp.is_complete() {
                truncated.push((fp, offset, Instant::now(), seq));
            }
        }
    }

    /// Reads what is new in every file, oldest first, sending batches as they
    /// fill; a full channel holds the reading here. One turn per file: returns
    /// [`Flow::More`] when some file has more to read, so that timers, rescans and
    /// checkpoints get their turn during a long catch-up.
    async fn pump(&mut self, tx: &mpsc::Sender<SourceBatch>, cancel: &CancellationToken) -> Flow {
        let mut more = false;
        let seqs: Vec<u64> = self.files.keys().copied().collect();
        for seq in seqs {
            let mut turn = 0usize;
            while let Some(t) = self.files.get_mut(&seq) {
                match t.check_truncated(false, &self.counters, &mut self.out) {
                    Ok(before) => Self::note_truncation(&mut self.truncated, seq, before),
                    Err(e) => {
                        t.report_error(format!(
                            "cannot stat {}: {}",
                            t.path.display(),
                            open::describe(&e)
                        ));
                        break;
                    }
                }
                let n = match t.read_available(
                    &mut self.chunk,
                    FILE_TURN_BYTES - turn,
                    &self.counters,
                    &mut self.out,
                ) {
                    Ok(n) => n,
                    Err(e) => {
                        t.report_error(format!(
                            "cannot read {}: {}",
                            t.path.display(),
                            open::describe(&e)
                        ));
                        break;
                    }
                };
                turn += n;
                if n == 0 || turn >= FILE_TURN_BYTES {
                    t.take_batch(&mut self.out);
                }
                if self.send_out(tx, cancel).await == Flow::Stop {
                    return Flow::Stop;
                }
                if n == 0 {
                    break;
                }
                if turn >= FILE_TURN_BYTES {
                    more = true;
                    break;
                }
            }
        }
        if more {
            Flow::More
        } else {
            Flow::Go
        }
    }

    /// Sends the batches waiting in `out`, in order. Stops (keeping the batch) when
    /// cancelled, or when the receiver is gone.
    async fn send_out(
        &mut self,
        tx: &mpsc::Sender<SourceBatch>,
        cancel: &CancellationToken,
    ) -> Flow {
        while !self.out.is_empty() {
            let permit = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Flow::Stop,
                p = tx.reserve() => p,
            };
            let Ok(permit) = permit else {
                tracing::warn!("the pipeline stopped taking lines: the file tailer stops");
                return Flow::Stop;
            };
            if let Some(b) = self.out.pop_front() {
                permit.send(b);
            }
        }
        Flow::Go
    }

    /// Flushes timed-out partial lines and records, and closes drained files.
    fn flush_due(&mut self, now: Instant) {
        let mut done = Vec::new();
        for (seq, t) in self.files.iter_mut() {
            t.flush_due(now, &self.counters, &mut self.out);
            if let FileState::Draining { until, .. } = t.state {
                // Closed only once read to its end (a blocked channel may have held
                // the reading back past the grace period).
                if now >= until && t.size().is_ok_and(|size| size <= t.offset) {
                    done.push(*seq);
                }
            }
        }
        for seq in done {
            self.close(seq);
        }
        for t in self.files.values_mut() {
            t.take_batch(&mut self.out);
        }
    }

    /// Closes a drained file; its checkpoint is kept until its last acks are in.
    fn close(&mut self, seq: u64) {
        let Some(mut t) = self.files.remove(&seq) else {
            return;
        };
        self.by_id.remove(&t.id);
        t.finish(&self.counters, &mut self.out);
        let deleted = matches!(t.state, FileState::Draining { deleted: true, .. });
        tracing::info!(
            "closed {} at byte {}{}",
            t.path.display(),
            t.offset,
            if deleted { " (deleted)" } else { "" }
        );
        self.counters.files_open.fetch_sub(1, Ordering::Relaxed);
        self.closing.push(Closing {
            id: t.id,
            path: t.path.clone(),
            fingerprint: t.fingerprint,
            commits: t.commits.clone(),
            deleted,
        });
    }

    /// The periodic fallback: rescans the globs, and checks every open file for a
    /// truncation by size and by its first bytes. Reading follows in `pump`.
    fn poll(&mut self) {
        self.scan(false);
        for (seq, t) in self.files.iter_mut() {
            match t.check_truncated(true, &self.counters, &mut self.out) {
                Ok(before) => Self::note_truncation(&mut self.truncated, *seq, before),
                Err(e) => t.report_error(format!(
                    "cannot check {}: {}",
                    t.path.display(),
                    open::describe(&e)
                )),
            }
        }
    }

    /// The earliest moment a file needs attention without new data.
    fn deadline(&self) -> Option<Instant> {
        self.files.values().filter_map(Tailed::deadline).min()
    }

    /// Writes the acknowledged offsets, if any moved (or `force`).
    fn save(&mut self, force: bool) {
        let mut changed = force;
        let mut forgotten = Vec::new();
        for t in self.files.values() {
            changed |= self
                .store
                .update(t.id, &t.path, t.fingerprint, t.committed());
        }
        self.closing.retain(|c| {
            let (committed, outstanding) = {
                let g = checkpoint::lock(&c.commits);
                (g.committed(), g.outstanding())
            };
            if c.deleted && outstanding == 0 {
                // Gone for good and fully handed on: nothing left to resume.
                self.store.remove(c.id);
                forgotten.push(c.id);
                changed = true;
            } else {
                changed |= self.store.update(c.id, &c.path, c.fingerprint, committed);
            }
            outstanding > 0
        });
        if !changed {
            return;
        }
        forgotten.extend(self.store.prune(SystemTime::now()));
        if !forgotten.is_empty() {
            // The spool keeps a resume point until told to forget it.
            self.out.push_back(SourceBatch {
                source: self.marker_source.clone(),
                lines: Vec::new(),
                ack: forgotten.into_iter().fold(Ack::none(), |a, id| {
                    a.with_resume(checkpoint::forget_point(id))
                }),
            });
        }
        match self.store.save() {
            Ok(()) => {
                if self.save_failing {
                    tracing::info!(
                        "checkpoint file {} written again",
                        self.store.path().display()
                    );
                }
                self.save_failing = false;
            }
            Err(e) => {
                self.counters
                    .checkpoint_write_errors
                    .fetch_add(1, Ordering::Relaxed);
                if !self.save_failing {
                    tracing::warn!(
                        "cannot write checkpoint file {}: {e}; will retry",
                        self.store.path().display()
                    );
                }
                self.save_failing = true;
            }
        }
    }

    /// Stops reading, hands on every finished record, waits (bounded) for the acks,
    /// and writes the checkpoints. Unfinished lines and records are not flushed:
    /// the checkpoint stays before them, and a restart reads them whole.
    async fn shut_down(&mut self, tx: &mpsc::Sender<SourceBatch>) {
        self.counters
            .files_open
            .fetch_sub(self.files.len() as u64, Ordering::Relaxed);
        for t in self.files.values_mut() {
            t.take_batch(&mut self.out);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while let Some(b) = self.out.pop_front() {
            match tokio::time::timeout_at(deadline, tx.send(b)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(
                        "file tailer: the pipeline did not take the last lines; they are read \
                         again at the next start"
                    );
                    self.out.clear();
                    break;
                }
            }
        }
        while Instant::now() < deadline && self.outstanding() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.save(false);
    }

    fn outstanding(&self) -> usize {
        self.files.values().map(Tailed::outstanding).sum::<usize>()
            + self
                .closing
                .iter()
                .map(|c| checkpoint::lock(&c.commits).outstanding())
                .sum::<usize>()
    }
}
