//! The file tailer: follows every file the `[[files]]` globs match, and never loses
//! or doubles a line across rotations, truncations and restarts.
//!
//! How it holds that promise:
//! - files are known by device + inode confirmed by a fingerprint of their first
//!   bytes ([`fingerprint`]), not by path, so a rename-and-create rotation leaves the
//!   old file followed to its end while the new one is read from its start; a
//!   truncation (copytruncate, `: > file`) restarts reading at 0;
//! - files are found by a walk of our own ([`walk`]) from each pattern's fixed
//!   folders, into folders a glob can still match only, never through a symlink
//!   to a folder (unless `follow_symlinks = true`), bounded per walk (entries,
//!   depth, time), on a thread of its own so that reading never waits on it;
//! - one inotify instance watches the folders the walk entered, each on its own,
//!   at most [`watcher::WATCH_BUDGET`] of them ([`watcher`]): an event wakes the
//!   reading or a walk near where it happened; a poll every `poll_interval` asks
//!   for a sweep of every root and stats every open file, which is what catches
//!   writes inotify never reports (virtiofs, 9p, sshfs shared folders) and
//!   folders past the budget. Where events report everything (every folder the
//!   last sweep entered is watched and on a local filesystem, every file is
//!   reached by its own name in one of them, none draining or being told from a
//!   copy), the poll is only a safety net and runs every
//!   [`QUIET_POLL_INTERVAL`] instead, so that an idle agent hardly wakes. Walks
//!   are paced to a small share of the time ([`scan`]);
//! - lines are cut, rendered and joined per file ([`reader`]) into batches whose
//!   acks, called once the batch is durable downstream, advance the checkpoint
//!   ([`checkpoint`]); each batch carries the file's resume point to the spool,
//!   which stores it in the fsync that stores the lines, and a restart resumes
//!   where the spool's last commit says; the checkpoint file, written atomically
//!   every second and at shutdown after the spool, is the resume point only
//!   where no spool holds one (the dry run, the tailer alone);
//! - `start_at = end` applies only to files present at startup with no checkpoint;
//!   a file that appears while the agent runs is read from its start, or lines
//!   written right after a rotation would be lost;
//! - a full channel stops the reading (backpressure): at most a few batches per file
//!   are held in memory, whatever the size of the files.
//!
//! - `copytruncate` is followed without loss when the copy is matched too (say
//!   `app.log*`): a new file whose first bytes are those of a followed or just
//!   truncated file is read on from where the original was read up to; when it
//!   is not (`app.log` alone), the truncated file's folder is searched for its
//!   copy, and at start for files rotated out of the globs before they were
//!   read to their end ([`siblings`]).
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
//!
//! The tailer's parts: this file holds its settings, counters and the task's loop;
//! [`globs`] compiles the patterns; [`walk`] finds what they match; [`watcher`]
//! holds the watches and reads events; [`scan`] paces the walks, opens what they
//! found and notices files renamed away or deleted;
//! [`rotation`] decides where a file that appeared is read from (checkpoint,
//! `start_at`, or where the original of a copy was read up to); [`read_loop`]
//! reads, sends, closes drained files and writes the checkpoints.

mod checkpoint;
mod fingerprint;
mod globs;
pub(crate) mod open;
mod read_loop;
pub(crate) mod reader;
mod rotation;
mod scan;
mod siblings;
mod walk;
mod watcher;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::FileConfig;
use crate::metric::{
    counter, encode, gauge, labelled, named, names, one, single, Family, Registry,
};
use crate::record::{SourceBatch, SourceInfo};
use crate::source::known_runs::KnownRuns;
use crate::source::multiline::JoinerSettings;
use crate::source::terminal::RenderStats;
use crate::spool::ResumeState;

use checkpoint::{CheckpointStore, SharedCommits};
use fingerprint::{FileId, Fingerprint};
use globs::Globs;
use reader::{LineLimits, Tailed};
use scan::Discovery;
use walk::{Limits, Walker, WalkerThread};
use watcher::DirWatcher;

pub use checkpoint::POSITIONS_FILE;

/// How often acknowledged offsets are written to the positions file (when they
/// changed).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// The poll never runs more often than this, whatever `poll_interval` says.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How often the poll runs, at least, where file events report every change
/// ([`Tailer::poll_every`]): a safety net, not the way changes are found.
const QUIET_POLL_INTERVAL: Duration = Duration::from_secs(10);

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
    /// The resume points of the spool the tailer's lines go to (its commits),
    /// `None` without a spool (the dry run, the tailer alone). Once the spool
    /// holds any file's point, its points are the checkpoints and
    /// `positions.json` is a copy written after them; a spool that holds none
    /// is handed what `positions.json` says, in one batch at start.
    pub resume: Option<ResumeState>,
    /// The exec runs the daemon knows: a line marked as one of them, in a file
    /// of the user who ran it, is left to `exec` (see [`crate::source::terminal::mark`]).
    /// `None` (no exec server): every line is shipped.
    pub known_runs: Option<Arc<KnownRuns>>,
    /// The entries (by name) that were tailing before `run` reloaded its
    /// configuration: `start_at` does not apply to them again, so a file
    /// that appeared while the pipelines restarted is read from its start, as
    /// any file that appears while the agent runs. Empty at start.
    pub continued: std::collections::BTreeSet<String>,
}

impl TailSettings {
    /// Settings with file events on and fresh counters.
    pub fn new(files: Vec<FileConfig>, state_dir: PathBuf) -> Self {
        Self {
            files,
            state_dir,
            events: true,
            counters: Arc::default(),
            resume: None,
            known_runs: None,
            continued: Default::default(),
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
    #[error("cannot start the thread that looks for files: {0}")]
    Walker(std::io::Error),
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
    lines_left_to_exec: AtomicU64,
    scans_bounded_entries: AtomicU64,
    scans_bounded_depth: AtomicU64,
    scans_bounded_time: AtomicU64,
    scans_bounded_watches: AtomicU64,
    scan_micros: AtomicU64,
    watches: AtomicU64,
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
    /// Lines an exec run marked as its own: `exec` ships them, the tailer not.
    pub lines_left_to_exec: u64,
    /// Walks that reached a bound, by bound.
    pub scans_bounded_entries: u64,
    pub scans_bounded_depth: u64,
    pub scans_bounded_time: u64,
    /// Walks that found more folders than watches.
    pub scans_bounded_watches: u64,
    /// Time spent walking, in microseconds.
    pub scan_micros: u64,
    /// inotify watches held now (a gauge).
    pub watches: u64,
}

impl TailCounters {
    /// Registers the tailer's families ([`TailStats::FAMILIES`]), read from a
    /// snapshot of these counters at each reading.
    pub fn register(self: Arc<Self>, metrics: &mut Registry) {
        metrics.add("tail", names(TailStats::FAMILIES), move |out| {
            encode(out, TailStats::FAMILIES, &single(&self.snapshot()))
        });
    }

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
            lines_left_to_exec: g(&self.lines_left_to_exec),
            scans_bounded_entries: g(&self.scans_bounded_entries),
            scans_bounded_depth: g(&self.scans_bounded_depth),
            scans_bounded_time: g(&self.scans_bounded_time),
            scans_bounded_watches: g(&self.scans_bounded_watches),
            scan_micros: g(&self.scan_micros),
            watches: g(&self.watches),
        }
    }

    fn add_scan(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.scan_micros.fetch_add(micros, Ordering::Relaxed);
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
    /// The tailer's metric families: the one place their names and help live.
    pub(crate) const FAMILIES: &'static [Family<TailStats>] = &[
        counter(
            "wisp_file_bytes_read_total",
            "Bytes read from tailed files.",
            |s| one(s.bytes_read),
        ),
        counter(
            "wisp_file_lines_read_total",
            "Lines read from tailed files (a partial line flushed after a silence counts as one).",
            |s| one(s.lines_read),
        ),
        counter(
            "wisp_file_lines_cut_total",
            "Lines longer than max_line_bytes, cut there.",
            |s| one(s.lines_cut),
        ),
        counter(
            "wisp_file_invalid_utf8_lines_total",
            "Lines with invalid UTF-8, shipped with U+FFFD in its place.",
            |s| one(s.invalid_utf8_lines),
        ),
        counter(
            "wisp_file_escape_sequences_stripped_total",
            "Terminal escape sequences removed from lines.",
            |s| one(s.escape_sequences_stripped),
        ),
        counter(
            "wisp_file_controls_dropped_total",
            "Control characters removed from lines (NUL, BEL, DEL, stray C1).",
            |s| one(s.controls_dropped),
        ),
        gauge("wisp_file_files_open", "Files tailed now.", |s| {
            one(s.files_open)
        }),
        counter(
            "wisp_file_rotations_total",
            "Files renamed away from their path (rename-and-create rotation).",
            |s| one(s.rotations),
        ),
        counter(
            "wisp_file_truncations_total",
            "Files found truncated or rewritten (copytruncate).",
            |s| one(s.truncations),
        ),
        counter("wisp_file_deletions_total", "Tailed files deleted.", |s| {
            one(s.deletions)
        }),
        counter(
            "wisp_file_lines_left_to_exec_total",
            "Lines of tailed files that a wisp-agent exec run marked as its own (a piped terminal): exec ships them, the tailer does not.",
            |s| one(s.lines_left_to_exec),
        ),
        counter(
            "wisp_file_checkpoint_write_errors_total",
            "Failed writes of the file positions (positions.json).",
            |s| one(s.checkpoint_write_errors),
        ),
        counter(
            "wisp_file_scans_bounded_total",
            "Scans for the [[files]] globs that reached a bound, by bound: entries (100000 directory entries), depth (32 folders below a pattern's fixed folders), time (250 ms), watches (more folders than the 1024 inotify watches; the rest are polled).",
            |s| {
                [
                    ("entries", s.scans_bounded_entries),
                    ("depth", s.scans_bounded_depth),
                    ("time", s.scans_bounded_time),
                    ("watches", s.scans_bounded_watches),
                ]
                .into_iter()
                .map(|(bound, n)| labelled([("bound", bound.into())], n))
                .collect()
            },
        ),
        counter(
            "wisp_file_scan_seconds_total",
            "Time spent scanning for files the [[files]] globs match.",
            |s| one(s.scan_micros as f64 / 1e6),
        ),
        gauge(
            "wisp_file_watches",
            "Folders watched for file events (inotify) now; at most 1024, the rest are polled.",
            |s| one(s.watches),
        ),
    ];

    /// The counters under their metric names (`files_open` is a gauge), read
    /// through [`TailStats::FAMILIES`].
    pub fn metrics(&self) -> Vec<(&'static str, u64)> {
        named(Self::FAMILIES, self)
            .into_iter()
            .map(|(name, v)| (name, v.as_u64()))
            .collect()
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
    // The first walk: `start_at` applies to the files it finds.
    tailer.want_sweep();
    tailer.start_walk(Instant::now());
    let first = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        walked = tailer.discovery.thread.done() => Some(walked),
    };
    let Some(walked) = first else {
        tailer.discovery.thread.stop();
        return Ok(());
    };
    tailer.apply(walked, true);
    // Remember where files present at startup begin, so a crash before the first
    // ack does not apply `start_at = end` to them a second time.
    tailer.save(true);
    let mut last_poll = Instant::now();
    let mut next_save = Instant::now() + CHECKPOINT_INTERVAL;
    // Whether the last checkpoint write came after every ack: then nothing
    // calls for the next one until something happens (no wake every second).
    let mut saved = false;
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
        if tailer.moved {
            tailer.moved = false;
            saved = false;
        }
        if now >= next_save && !saved {
            // Acks come in on other tasks: all in before this write, it is the
            // last one needed.
            let settled = tailer.outstanding() == 0;
            tailer.save(false);
            saved = settled;
            next_save = now + CHECKPOINT_INTERVAL;
        }
        tailer.start_walk(now);
        let next_poll = last_poll + tailer.poll_every();
        let deadline = match flow {
            Flow::More => now,
            _ => [
                tailer.deadline(),
                tailer.discovery.deadline(),
                (!saved).then_some(next_save),
            ]
            .into_iter()
            .flatten()
            .fold(next_poll, Instant::min),
        };
        let undecided = tailer.undecided;
        let timer = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            walked = tailer.discovery.thread.done() => {
                tailer.apply(walked, false);
                false
            }
            woken = tailer.watcher.next(undecided) => {
                tailer.on_woken(woken);
                false
            }
            _ = tokio::time::sleep_until(deadline) => true,
        };
        if !timer {
            saved = false;
        }
        let now = Instant::now();
        if now >= last_poll + tailer.poll_every() {
            tailer.poll();
            last_poll = now;
        }
    }
    // A walk in progress stops at its next check; nothing waits for it.
    tailer.discovery.thread.stop();
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

/// One `[[files]]` entry, prepared.
struct Entry {
    config: FileConfig,
    /// It was tailing before a reload ([`TailSettings::continued`]).
    continued: bool,
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
    save_failing: crate::event::Repeated,
    watcher: DirWatcher,
    discovery: Discovery,
    counters: Arc<TailCounters>,
    chunk: Vec<u8>,
    /// Batches read and not yet sent: a few at most, as reading stops while one waits.
    out: VecDeque<SourceBatch>,
    poll_interval: Duration,
    /// Whether file events report every change that matters, as the last walk
    /// left things (see [`Tailer::poll_every`]).
    quiet: bool,
    /// A batch was sent or a file closed since the loop last looked: the
    /// checkpoints are to be written again.
    moved: bool,
    /// Matched paths not tailed now (unreadable, refused, not regular files), with
    /// the message logged for each and the sweep that last reported it: logged
    /// once, again only if it changes. Holds only the problems of the last whole
    /// sweep, so it stays as small as the globs' matches.
    unreadable: HashMap<PathBuf, (String, u64)>,
    /// A new file was left for a later scan (see [`rotation::Copy::Undecided`]): writes
    /// that events report then call for a rescan too.
    undecided: bool,
    /// Files truncated within [`rotation::COPY_WINDOW`]: fingerprint before, where their
    /// unread part began, when, and which open file it was.
    truncated: Vec<(Fingerprint, u64, Instant, u64)>,
    /// The source named by batches that carry only resume points (no lines).
    marker_source: Arc<SourceInfo>,
    known_runs: Option<Arc<KnownRuns>>,
    /// Every entry's patterns, with the entry: what the scan finds, which the
    /// search for copies ([`siblings`]) leaves to it.
    patterns: Vec<(glob::Pattern, usize)>,
}

impl Tailer {
    fn new(settings: &TailSettings) -> Result<Self, TailError> {
        let mut patterns = Vec::new();
        for (ei, f) in settings.files.iter().enumerate() {
            for p in &f.paths {
                let pattern = glob::Pattern::new(p).map_err(|e| TailError::Pattern {
                    entry: f.name.clone(),
                    pattern: p.clone(),
                    reason: e.to_string(),
                })?;
                patterns.push((pattern, ei));
            }
        }
        let globs = Globs::new(
            settings
                .files
                .iter()
                .map(|f| (f.paths.as_slice(), f.follow_symlinks)),
        )
        .map_err(|e| TailError::Pattern {
            entry: settings
                .files
                .get(e.entry)
                .map(|f| f.name.clone())
                .unwrap_or_default(),
            pattern: e.pattern,
            reason: e.reason,
        })?;
        let globs = Arc::new(globs);
        std::fs::create_dir_all(&settings.state_dir).map_err(|source| TailError::StateDir {
            path: settings.state_dir.clone(),
            source,
        })?;
        let (mut store, problem) = CheckpointStore::load(&settings.state_dir);
        if let Some(p) = problem {
            tracing::warn!("{p}");
        }
        let mut out = VecDeque::new();
        let marker_source = Arc::new(SourceInfo {
            job: String::new(),
            filename: None,
            labels: Vec::new(),
            format: crate::config::LogFormat::Text,
            label_fields: Vec::new(),
            trace_context: None,
            // Marks carry resume points, never records.
            owner: crate::record::Owner::UNKNOWN,
        });
        let handed = store.settle_start(settings.resume.as_ref());
        if !handed.is_empty() {
            out.push_back(SourceBatch {
                source: marker_source.clone(),
                lines: Vec::new(),
                ack: handed
                    .into_iter()
                    .fold(crate::record::Ack::none(), |a, p| a.with_resume(p)),
            });
        }
        let entries: Vec<Entry> = settings
            .files
            .iter()
            .map(|c| {
                let max_line_bytes = c.max_line_bytes.as_usize().max(1);
                Entry {
                    config: c.clone(),
                    continued: settings.continued.contains(&c.name),
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
        let watcher = DirWatcher::new(
            settings.events && !entries.is_empty(),
            globs.clone(),
            settings.counters.clone(),
        );
        if !settings.events {
            tracing::info!("file events are off: following files by polling alone");
        }
        let walker = Walker::new(globs, watcher.watches(), Limits::DEFAULT);
        let thread = WalkerThread::spawn(walker).map_err(TailError::Walker)?;
        Ok(Self {
            entries,
            files: BTreeMap::new(),
            by_id: HashMap::new(),
            closing: Vec::new(),
            next_seq: 0,
            store,
            save_failing: crate::event::Repeated::once(),
            watcher,
            discovery: Discovery::new(thread),
            counters: settings.counters.clone(),
            known_runs: settings.known_runs.clone(),
            chunk: vec![0; reader::CHUNK_BYTES],
            out,
            poll_interval,
            quiet: false,
            moved: false,
            unreadable: HashMap::new(),
            truncated: Vec::new(),
            undecided: false,
            patterns,
            marker_source,
        })
    }

    /// The entry whose patterns match `path` (the first), as the scan's
    /// `glob` would find it there.
    fn entry_of(&self, path: &std::path::Path) -> Option<usize> {
        const AS_GLOB_DOES: glob::MatchOptions = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.patterns
            .iter()
            .find(|(p, _)| p.matches_path_with(path, AS_GLOB_DOES))
            .map(|(_, ei)| *ei)
    }

    /// How long the poll waits: `poll_interval`, or [`QUIET_POLL_INTERVAL`] if
    /// longer while file events report every change that matters: the last
    /// walks found every folder a watch on a local filesystem, and every open
    /// file is named in one by its own path (not through a symlink, whose
    /// target's folder is not watched), is followed (a rotated file being
    /// drained is written to under a name no glob matches), and no copy is
    /// being told from its original (none undecided, no truncation within
    /// [`rotation::COPY_WINDOW`]).
    fn poll_every(&self) -> Duration {
        let quiet = self.quiet
            && !self.undecided
            && !self
                .truncated
                .iter()
                .any(|(_, _, at, _)| at.elapsed() < rotation::COPY_WINDOW)
            && self
                .files
                .values()
                .all(|t| t.state == reader::FileState::Following);
        if quiet {
            self.poll_interval.max(QUIET_POLL_INTERVAL)
        } else {
            self.poll_interval
        }
    }

    /// After a walk: whether events now report every change (see
    /// [`Tailer::poll_every`]); `complete`: every walk since the last whole
    /// sweep entered every folder, watched, within its bounds.
    fn events_cover(&self, complete: bool) -> bool {
        let Some(watches) = self.watcher.watches() else {
            return false;
        };
        if !complete {
            return false;
        }
        let table = watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table.all_local()
            && self.files.values().all(|t| {
                t.path.parent().is_some_and(|dir| table.covers(dir))
                    && std::fs::symlink_metadata(&t.path)
                        .is_ok_and(|m| m.file_type().is_file() && FileId::of(&m) == t.id)
            })
    }

    /// Whether some entry's patterns match `path`.
    fn globbed(&self, path: &std::path::Path) -> bool {
        self.entry_of(path).is_some()
    }
}
