//! One tailed file: reads new bytes, cuts them into lines, renders and joins them
//! into records, and packs the records into batches whose acks advance the file's
//! checkpoint.
//!
//! Promises: bytes are read in large chunks into a buffer shared by all files and
//! split with `memchr`; a partial last line waits for its newline (flushed after
//! `partial_line_timeout` of silence); a line longer than `max_line_bytes` is cut
//! there, the rest of it up to its newline is discarded and the cut counted, so no
//! line is ever buffered without bound; a batch holds at most [`BATCH_MAX_LINES`]
//! lines or about [`BATCH_MAX_BYTES`] bytes; a batch's ack checkpoints the end of
//! its last record, never past the start of a record the joiner still holds.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::checkpoint::{self, AckTicket, Commits, SharedCommits};
use super::fingerprint::{FileId, Fingerprint};
use super::TailCounters;
use crate::record::{Ack, SourceBatch, SourceInfo, SourceLine, Timestamp};
use crate::source::known_runs::KnownRuns;
use crate::source::multiline::{Joined, Joiner, JoinerSettings};
use crate::source::terminal::{self, mark, RenderStats};

/// At most this many lines in one batch.
pub(crate) const BATCH_MAX_LINES: usize = 1000;
/// A batch is sent once its text reaches this many bytes.
pub(crate) const BATCH_MAX_BYTES: usize = 1 << 20;
/// Bytes read per `read` call: enough to keep syscalls per line low (256 KiB read
/// 1.6% faster in `benches/tail.rs` but kept 192 KiB more resident after a burst).
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// Whether the file is still followed, or is being read to its end before closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileState {
    Following,
    /// Renamed away from every pattern, or deleted: read to the end, then closed
    /// once nothing new has arrived until `until` (a writer may still hold it).
    Draining {
        until: Instant,
        deleted: bool,
    },
}

/// Per-entry bounds applied to each line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LineLimits {
    pub max_line_bytes: usize,
    pub partial_line_timeout: Duration,
}

/// The exec runs a file's lines may be marked with (see [`mark`]), and the
/// file's owner: only that user's runs' marks are trusted.
pub(crate) struct ExecRuns {
    pub known: Arc<KnownRuns>,
    pub owner: u32,
}

impl ExecRuns {
    /// Whether the part of a line the mark of `run` owns is left to `exec`.
    fn leaves(&self, run: &mark::RunId) -> bool {
        self.known.owner(run) == Some(self.owner)
    }
}

/// One open, tailed file.
pub(crate) struct Tailed {
    pub id: FileId,
    /// The `[[files]]` entry it is tailed for (an index into the tailer's).
    pub entry: usize,
    /// Where the file was last found.
    pub path: PathBuf,
    pub source: Arc<SourceInfo>,
    file: File,
    /// Next byte to read.
    pub offset: u64,
    /// The unfinished line read so far (at most `max_line_bytes`).
    line: Vec<u8>,
    /// The current line was cut: the rest of it up to its newline is discarded.
    line_cut: bool,
    /// When bytes last arrived: the partial line's timeout counts from here.
    last_data: Instant,
    joiner: Joiner,
    joined: Vec<Joined>,
    pub fingerprint: Fingerprint,
    batch: Vec<SourceLine>,
    batch_bytes: usize,
    /// Lines in the last batch made: the room a new batch starts with.
    last_batch_lines: usize,
    batch_end: u64,
    /// Lines left to `exec` moved `batch_end` since the last batch: the next
    /// batch is made even without lines, so the checkpoint passes them too.
    skipped: bool,
    pub commits: SharedCommits,
    pub state: FileState,
    limits: LineLimits,
    /// The last read error logged (see [`Tailed::report_error`]).
    last_error: Option<String>,
    /// The unfinished line this file held when it was truncated, and when to ship
    /// it unless a copy that holds it whole turns up.
    orphan: Option<(Vec<u8>, Instant)>,
    /// A copy of this file is followed from where this one was read up to (see
    /// [`Tailed::mark_copied`]); until this moment, reading here waits for the
    /// truncation that `copytruncate` does next.
    copied: Option<Instant>,
    exec_runs: Option<ExecRuns>,
}

impl std::fmt::Debug for Tailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailed")
            .field("path", &self.path)
            .field("id", &self.id)
            .field("offset", &self.offset)
            .field("state", &self.state)
            .finish()
    }
}

/// What opening a file needs.
pub(crate) struct OpenFile {
    pub id: FileId,
    pub entry: usize,
    pub path: PathBuf,
    pub file: File,
    pub fingerprint: Fingerprint,
    pub offset: u64,
    pub source: Arc<SourceInfo>,
    pub joiner: JoinerSettings,
    pub limits: LineLimits,
    pub exec_runs: Option<ExecRuns>,
}

impl Tailed {
    pub(crate) fn open(o: OpenFile) -> Self {
        let fingerprint = o.fingerprint;
        Self {
            id: o.id,
            entry: o.entry,
            path: o.path,
            source: o.source,
            file: o.file,
            offset: o.offset,
            line: Vec::new(),
            line_cut: false,
            last_data: Instant::now(),
            joiner: {
                // Lines pushed to the joiner start where reading starts, so the
                // offsets it reports (and the checkpoint) are the file's own.
                let mut j = Joiner::new(o.joiner);
                j.reset(o.offset);
                j
            },
            joined: Vec::new(),
            fingerprint,
            batch: Vec::new(),
            batch_bytes: 0,
            last_batch_lines: 0,
            batch_end: o.offset,
            skipped: false,
            commits: Commits::new(o.offset),
            state: FileState::Following,
            limits: o.limits,
            copied: None,
            orphan: None,
            last_error: None,
            exec_runs: o.exec_runs,
        }
    }

    /// The file's size now, through the open descriptor.
    pub(crate) fn size(&self) -> io::Result<u64> {
        self.file.metadata().map(|m| m.len())
    }

    /// Whether the file has been unlinked (its descriptor is all that is left). A
    /// failing `fstat` proves nothing: the caller then checks the path.
    pub(crate) fn is_deleted(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().is_ok_and(|m| m.nlink() == 0)
    }

    /// Reads what is new, up to about `budget` bytes; stops early once a full batch
    /// is waiting in `out`, so the caller can send it (backpressure). Returns the
    /// bytes read.
    pub(crate) fn read_available(
        &mut self,
        chunk: &mut [u8],
        budget: usize,
        counters: &TailCounters,
        out: &mut VecDeque<SourceBatch>,
    ) -> io::Result<usize> {
        if let Some(until) = self.copied {
            if Instant::now() < until {
                return Ok(0);
            }
            self.copied = None;
        }
        let mut total = 0usize;
        let queued = out.len();
        while total < budget && out.len() == queued {
            let n = match self.file.read_at(chunk, self.offset) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            total += n;
            self.consume(&chunk[..n], counters, out);
        }
        if total > 0 {
            counters
                .bytes_read
                .fetch_add(total as u64, Ordering::Relaxed);
            if !self.fingerprint.is_complete() && self.offset > u64::from(self.fingerprint.len) {
                self.fingerprint = Fingerprint::of_file(&self.file)?;
            }
            if let FileState::Draining { until, .. } = &mut self.state {
                // Still being written to: keep it open a while longer.
                *until = Instant::now() + drain_grace(self.limits);
            }
        }
        Ok(total)
    }

    /// Cuts `data` (read at `self.offset`) into lines and feeds them on.
    fn consume(&mut self, data: &[u8], counters: &TailCounters, out: &mut VecDeque<SourceBatch>) {
        let now = Instant::now();
        let read_time = Timestamp::now();
        let base = self.offset;
        let max = self.limits.max_line_bytes;
        let mut stats = RenderStats::default();
        let mut lines = 0u64;
        let mut cut = 0u64;
        let mut start = 0usize;
        for nl in memchr::memchr_iter(b'\n', data) {
            let seg = &data[start..nl];
            let end_offset = base + nl as u64 + 1;
            let text = if self.line.is_empty() && !self.line_cut {
                // The common case: the whole line is in this chunk, no copy.
                if seg.len() > max {
                    cut += 1;
                    self.render(&seg[..char_floor(seg, max)], &mut stats, counters)
                } else {
                    self.render(seg, &mut stats, counters)
                }
            } else if self.line_cut && self.line.is_empty() {
                // The rest of a cut line whose start was already flushed on timeout.
                self.line_cut = false;
                start = nl + 1;
                continue;
            } else {
                cut += u64::from(self.append_bounded(seg));
                let text = self.render(&self.line, &mut stats, counters);
                self.line.clear();
                text
            };
            self.line_cut = false;
            lines += 1;
            match text {
                Some(text) => self.emit(text, end_offset, now, read_time, out),
                None => self.skip_to(end_offset),
            }
            start = nl + 1;
        }
        if start < data.len() {
            cut += u64::from(self.append_bounded(&data[start..]));
        }
        self.offset = base + data.len() as u64;
        self.last_data = now;
        counters.lines_read.fetch_add(lines, Ordering::Relaxed);
        counters.add_render(&stats, cut);
    }

    /// The text to ship for the raw line `raw`: what a terminal shows of it,
    /// less the parts the marks of this file's owner's exec runs claim (see
    /// [`mark`]: `exec` ships those); `None` when nothing else is on the line.
    fn render(
        &self,
        raw: &[u8],
        stats: &mut RenderStats,
        counters: &TailCounters,
    ) -> Option<String> {
        // Most lines: no control byte, so no mark; shipped without a search
        // for marks (a line that is not plain is scanned again below, up to
        // its first control byte).
        if let Some(text) = terminal::plain(raw) {
            return Some(text);
        }
        if let Some(runs) = &self.exec_runs {
            if let Some(segments) = mark::segments(raw) {
                let mut kept = Vec::with_capacity(raw.len());
                let mut left = false;
                for s in segments {
                    match s.run {
                        Some(run) if runs.leaves(&run) => left = true,
                        _ => kept.extend_from_slice(&raw[s.range]),
                    }
                }
                if left {
                    counters.lines_left_to_exec.fetch_add(1, Ordering::Relaxed);
                    let text = terminal::render(&kept, stats);
                    return (!text.trim().is_empty()).then_some(text);
                }
            }
        }
        Some(terminal::render(raw, stats))
    }

    /// Appends to the unfinished line up to `max_line_bytes`; returns whether this
    /// cut the line (counted once per line).
    fn append_bounded(&mut self, seg: &[u8]) -> bool {
        if self.line_cut {
            return false;
        }
        let room = self.limits.max_line_bytes.saturating_sub(self.line.len());
        if seg.len() > room {
            self.line.extend_from_slice(&seg[..char_floor(seg, room)]);
            self.line_cut = true;
            true
        } else {
            self.line.extend_from_slice(seg);
            false
        }
    }

    fn emit(
        &mut self,
        text: String,
        end_offset: u64,
        now: Instant,
        read_time: Timestamp,
        out: &mut VecDeque<SourceBatch>,
    ) {
        self.joiner.push(text, end_offset, now, &mut self.joined);
        self.take_joined(read_time, out);
    }

    fn take_joined(&mut self, read_time: Timestamp, out: &mut VecDeque<SourceBatch>) {
        if self.joined.is_empty() {
            return;
        }
        let mut joined = std::mem::take(&mut self.joined);
        if self.batch.is_empty() {
            // A new batch has room for as many lines as the last one held (at
            // most BATCH_MAX_LINES): a busy file's batch is one allocation, not
            // ten doublings, and a quiet file's stays small.
            self.batch
                .reserve(self.last_batch_lines.max(joined.len()).min(BATCH_MAX_LINES));
        }
        for j in joined.drain(..) {
            self.batch_bytes += j.text.len();
            self.batch_end = self.batch_end.max(j.end_offset);
            self.batch.push(SourceLine {
                text: j.text,
                read_time,
            });
            if self.batch.len() >= BATCH_MAX_LINES || self.batch_bytes >= BATCH_MAX_BYTES {
                let batch = std::mem::take(&mut self.batch);
                self.batch_bytes = 0;
                out.push_back(self.make_batch(batch));
            }
        }
        // Keep the allocation for the next line.
        self.joined = joined;
    }

    /// A line up to `end_offset` ships nothing (it is left to `exec`): the
    /// checkpoint may pass it.
    fn skip_to(&mut self, end_offset: u64) {
        self.batch_end = self.batch_end.max(end_offset);
        self.skipped = true;
    }

    /// Hands the records read so far over as a batch, if there are any (or if
    /// lines left to `exec` moved the checkpoint).
    pub(crate) fn take_batch(&mut self, out: &mut VecDeque<SourceBatch>) {
        if !self.batch.is_empty() || self.skipped {
            let batch = std::mem::take(&mut self.batch);
            self.batch_bytes = 0;
            out.push_back(self.make_batch(batch));
        }
    }

    fn make_batch(&mut self, lines: Vec<SourceLine>) -> SourceBatch {
        self.last_batch_lines = lines.len();
        self.skipped = false;
        // A record the joiner still holds starts at or after every record it has
        // finished; the cap only guards that promise.
        let end = match self.joiner.pending_start() {
            Some(p) => self.batch_end.min(p),
            None => self.batch_end,
        };
        let ticket = AckTicket::register(&self.commits, end);
        let resume = checkpoint::resume_point(self.id, &self.path, self.fingerprint, end);
        SourceBatch {
            source: self.source.clone(),
            lines,
            ack: Ack::new(move || ticket.ack()).with_resume(resume),
        }
    }

    /// Flushes what has waited long enough: a partial last line after
    /// `partial_line_timeout`, a pending multi-line record after its timeout.
    pub(crate) fn flush_due(
        &mut self,
        now: Instant,
        counters: &TailCounters,
        out: &mut VecDeque<SourceBatch>,
    ) {
        if !self.line.is_empty() && now >= self.last_data + self.limits.partial_line_timeout {
            self.flush_partial(now, counters, out);
        }
        if self.orphan.as_ref().is_some_and(|(_, due)| now >= *due) {
            self.ship_orphan(now, counters, out);
        }
        self.joiner.flush_due(now, &mut self.joined);
        self.take_joined(Timestamp::now(), out);
    }

    /// Ships the unfinished line as it is; what follows it becomes a new line
    /// (unless the line was cut: then the rest up to the newline stays discarded).
    fn flush_partial(
        &mut self,
        now: Instant,
        counters: &TailCounters,
        out: &mut VecDeque<SourceBatch>,
    ) {
        let mut stats = RenderStats::default();
        let text = self.render(&self.line, &mut stats, counters);
        self.line.clear();
        counters.lines_read.fetch_add(1, Ordering::Relaxed);
        counters.add_render(&stats, 0);
        let end = self.offset;
        match text {
            Some(text) => self.emit(text, end, now, Timestamp::now(), out),
            None => self.skip_to(end),
        }
    }

    /// Ships the line held since a truncation (see `orphan`).
    fn ship_orphan(
        &mut self,
        now: Instant,
        counters: &TailCounters,
        out: &mut VecDeque<SourceBatch>,
    ) {
        if let Some((bytes, _)) = self.orphan.take() {
            let mut stats = RenderStats::default();
            let text = self.render(&bytes, &mut stats, counters);
            counters.lines_read.fetch_add(1, Ordering::Relaxed);
            counters.add_render(&stats, 0);
            // It belongs to the content before the truncation: its end says
            // nothing about the new content's checkpoint.
            let end = self.batch_end;
            if let Some(text) = text {
                self.emit(text, end, now, Timestamp::now(), out);
            }
        }
    }

    /// Everything still held becomes records (the file is being closed).
    pub(crate) fn finish(&mut self, counters: &TailCounters, out: &mut VecDeque<SourceBatch>) {
        let now = Instant::now();
        self.ship_orphan(now, counters, out);
        if !self.line.is_empty() {
            self.flush_partial(now, counters, out);
        }
        self.joiner.flush(&mut self.joined);
        self.take_joined(Timestamp::now(), out);
        self.take_batch(out);
    }

    /// Whether the file was truncated under us: smaller than what was read, or (when
    /// `check_content`, or when there is something new to read) no longer starting with the bytes it started with. Then
    /// what is held is handed on, and reading restarts at 0. Returns what the file
    /// was before (its fingerprint and where its unread part began), so that a copy
    /// made by `copytruncate` can be read on from there. The caller then hands
    /// on [`Tailed::resume_marker`] (with the copy's resume point, if it finds
    /// one: in one batch, so that the spool never holds the new start without
    /// the copy).
    pub(crate) fn check_truncated(
        &mut self,
        check_content: bool,
        counters: &TailCounters,
        out: &mut VecDeque<SourceBatch>,
    ) -> io::Result<Option<(Fingerprint, u64)>> {
        let size = self.size()?;
        // New bytes are worth a look at the first ones before they are read: a file
        // truncated and refilled past the old size shows it only there.
        let check_content = check_content || size > self.offset;
        let truncated = size < self.offset
            || (check_content
                && self.fingerprint.len > 0
                && !self.fingerprint.matches(&self.file)?);
        if !truncated {
            return Ok(None);
        }
        tracing::info!(
            "{} was truncated (size {size}, read up to {}): reading it again from the start",
            self.path.display(),
            self.offset
        );
        counters.truncations.fetch_add(1, Ordering::Relaxed);
        let before = (self.fingerprint, self.line_start());
        if self.copied.is_some() {
            // A copy of the file is followed from the start of this unfinished
            // line: it is read whole there, not shipped half here.
            self.line.clear();
        }
        // A copy may still turn up and hold this unfinished line whole; if none
        // does within the partial line timeout, it is shipped as it is.
        let orphan = (!self.line.is_empty() && !self.line_cut).then(|| {
            (
                std::mem::take(&mut self.line),
                Instant::now() + self.limits.partial_line_timeout,
            )
        });
        // What was read before the truncation still goes out; its acks belong to
        // the old content and no longer move the checkpoint.
        self.finish(counters, out);
        // `finish` flushed the joiner; the new content's lines start at 0.
        self.joiner.reset(0);
        self.orphan = orphan;
        self.line_cut = false;
        self.copied = None;
        self.offset = 0;
        self.batch_end = 0;
        checkpoint::lock(&self.commits).reset(0);
        self.fingerprint = Fingerprint::of_file(&self.file)?;
        Ok(Some(before))
    }

    /// A batch without lines that only moves the file's resume point to where
    /// reading is now: for the spool, whose resume points must follow every move
    /// of the checkpoint, not only those that lines make.
    pub(crate) fn resume_marker(&self) -> SourceBatch {
        let point = checkpoint::resume_point(self.id, &self.path, self.fingerprint, self.offset);
        SourceBatch {
            source: self.source.clone(),
            lines: Vec::new(),
            ack: Ack::none().with_resume(point),
        }
    }

    /// Where the unfinished line starts (where a copy of this file is read from).
    pub(crate) fn line_start(&self) -> u64 {
        if self.line_cut {
            self.offset
        } else {
            self.offset - self.line.len() as u64
        }
    }

    /// A copy of this file (`copytruncate`'s) is now followed from [`line_start`].
    /// What this file holds now is read from the copy; reading here pauses until
    /// the truncation (or `window` passes: then it was a copy, not a rotation, and
    /// reading goes on).
    pub(crate) fn mark_copied(&mut self, window: Duration) {
        self.copied = Some(Instant::now() + window);
    }

    /// A copy holds the line this file held when truncated: it is read there.
    pub(crate) fn discard_orphan(&mut self) {
        self.orphan = None;
    }

    /// Whether the file starts with the bytes `fp` was taken of.
    pub(crate) fn starts_like(&self, fp: Fingerprint) -> bool {
        fp.matches(&self.file).unwrap_or(false)
    }

    /// The file's owner, when it can be told.
    pub(crate) fn owner(&self) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| m.uid())
    }

    /// When this file next needs attention without new data.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let partial =
            (!self.line.is_empty()).then(|| self.last_data + self.limits.partial_line_timeout);
        let drain = match self.state {
            FileState::Draining { until, .. } => Some(until),
            FileState::Following => None,
        };
        let orphan = self.orphan.as_ref().map(|(_, due)| *due);
        [partial, self.joiner.deadline(), drain, orphan]
            .into_iter()
            .flatten()
            .min()
    }

    /// Starts reading the file to its end before closing it.
    pub(crate) fn start_draining(&mut self, now: Instant, deleted: bool) {
        self.state = FileState::Draining {
            until: now + drain_grace(self.limits),
            deleted,
        };
    }

    /// Logs a read error once until a different one happens (a failing network
    /// mount would otherwise log at every poll).
    pub(crate) fn report_error(&mut self, message: String) {
        if self.last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!("{message}");
            self.last_error = Some(message);
        }
    }

    /// The offset to checkpoint now.
    pub(crate) fn committed(&self) -> u64 {
        checkpoint::lock(&self.commits).committed()
    }

    pub(crate) fn outstanding(&self) -> usize {
        checkpoint::lock(&self.commits).outstanding()
    }
}

/// How long a rotated or deleted file stays open after its last new byte: a writer
/// often keeps writing to it for a moment before it reopens the path.
fn drain_grace(limits: LineLimits) -> Duration {
    limits
        .partial_line_timeout
        .clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// The largest cut point ≤ `max` that does not split a UTF-8 sequence, when one is
/// near; a cut line is then still valid UTF-8 when its start was.
pub(crate) fn char_floor(bytes: &[u8], max: usize) -> usize {
    let mut cut = max.min(bytes.len());
    let floor = cut.saturating_sub(3);
    while cut > floor && cut < bytes.len() && (bytes[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    if cut < bytes.len() && (bytes[cut] & 0xC0) == 0x80 {
        // Not UTF-8 here anyway: cut at the limit.
        return max.min(bytes.len());
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LogFormat, Multiline};

    const RUN: &str = "0123456789abcdef0123456789abcdef";

    /// The lines a file holding `bytes`, owned by uid `owner`, ships when the
    /// daemon knows `RUN` as a run of `runner`.
    fn shipped(bytes: &[u8], owner: u32, runner: u32) -> (Vec<String>, u64) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, bytes).unwrap();
        let file = tmp.reopen().unwrap();
        let known = Arc::new(KnownRuns::default());
        known.insert(RUN, runner);
        let meta = file.metadata().unwrap();
        let mut t = Tailed::open(OpenFile {
            id: FileId::of(&meta),
            entry: 0,
            path: tmp.path().to_path_buf(),
            fingerprint: Fingerprint::of_file(&file).unwrap(),
            file,
            offset: 0,
            source: Arc::new(SourceInfo {
                job: "app".into(),
                filename: None,
                labels: vec![],
                format: LogFormat::Auto,
                label_fields: vec![],
                trace_context: None,
                owner: crate::record::Owner::UNKNOWN,
            }),
            joiner: JoinerSettings {
                mode: Multiline::None,
                max_lines: 10,
                max_bytes: 1 << 16,
                timeout: Duration::from_secs(1),
            },
            limits: LineLimits {
                max_line_bytes: 1 << 16,
                partial_line_timeout: Duration::from_secs(5),
            },
            exec_runs: Some(ExecRuns { known, owner }),
        });
        let counters = TailCounters::default();
        let mut out = VecDeque::new();
        let mut chunk = vec![0u8; CHUNK_BYTES];
        t.read_available(&mut chunk, 1 << 20, &counters, &mut out)
            .unwrap();
        t.finish(&counters, &mut out);
        let lines = out
            .into_iter()
            .flat_map(|b| b.lines.into_iter().map(|l| l.text))
            .collect();
        (lines, counters.snapshot().lines_left_to_exec)
    }

    fn pane() -> Vec<u8> {
        let mark = mark::begin(RUN);
        let mut b = b"$ loop\r\n".to_vec();
        for line in [
            &b"{\"level\":30}\r\n"[..],
            b"\x1b[31mred\x1b[0m\r\n",
            b"unfinished",
        ] {
            b.extend_from_slice(&mark);
            b.extend_from_slice(line);
        }
        b.extend_from_slice(mark::END);
        b.extend_from_slice(b" after\r\n");
        b.extend_from_slice(&mark::begin("ffffffffffffffffffffffffffffffff"));
        b.extend_from_slice(b"unknown run\r\n");
        b
    }

    #[test]
    fn the_marked_lines_of_a_run_of_the_files_owner_are_left_to_exec() {
        let (lines, left) = shipped(&pane(), 1000, 1000);
        assert_eq!(lines, vec!["$ loop", " after", "unknown run"]);
        assert_eq!(left, 3);
    }

    #[test]
    fn another_users_run_marks_nothing_out_of_a_file() {
        let (lines, left) = shipped(&pane(), 1000, 1001);
        assert_eq!(
            lines,
            vec![
                "$ loop",
                "{\"level\":30}",
                "red",
                "unfinished after",
                "unknown run"
            ]
        );
        assert_eq!(left, 0);
    }

    #[test]
    fn a_cut_does_not_split_a_utf8_character() {
        let s = "aé".as_bytes(); // a, 0xC3, 0xA9
        assert_eq!(char_floor(s, 2), 1);
        assert_eq!(char_floor(s, 3), 3);
        assert_eq!(char_floor(b"abcdef", 4), 4);
    }
}
