//! The durable buffer (spool): records are appended to segment files under one
//! directory, read back in append order by one sink, and deleted once acknowledged.
//!
//! Promises:
//! - **Durable before acknowledged.** With [`FsyncPolicy::Batch`], [`SpoolWriter::append`]
//!   returns only after the batch is written and `fdatasync`ed: the caller may then
//!   advance its source checkpoint (the agent's commit point). With
//!   [`FsyncPolicy::Interval`] data is written at once (so it survives `kill -9`, which
//!   does not lose the page cache) and fsynced at most every `fsync_interval`; a power
//!   loss may lose up to that much. Call [`SpoolWriter::sync_if_due`] on a timer of
//!   that period and [`SpoolWriter::sync`] at shutdown.
//! - **Recovers by itself.** [`Spool::open`] checks every segment frame by frame through
//!   a small buffer (never a whole segment in memory), cuts a torn tail (found by
//!   length and CRC-32, counted and logged with the segment's name), and resumes
//!   reading after the last acknowledged position. Records appended but not
//!   acknowledged are read again after a restart, byte for byte the same.
//! - **Bounded.** Beyond `max_bytes` the oldest whole segments are deleted, read or
//!   not, and what is lost is counted and logged once per drop event. The writer never
//!   waits for the reader.
//! - **A full disk is an error, not a loss.** When a write fails with ENOSPC, `append`
//!   cuts the segment back to its last complete batch (a batch never spans two
//!   segments) and returns [`SpoolError::DiskFull`]: nothing of the batch is stored,
//!   the caller must not acknowledge its source, and the source re-reads the batch
//!   later. The spool does not delete unshipped data to make room on a disk that
//!   others filled; `max_bytes` is the only reason it drops.
//! - **An append is all or nothing.** It ends with a commit frame; recovery keeps
//!   nothing after the last commit. The commit carries the resume points the
//!   batch's sources gave ([`SpoolWriter::append_with`]), so where a file may
//!   resume is durable in the same fsync as its lines, and after a crash
//!   [`SpoolWriter::resume_state`] says exactly how far the spool holds each
//!   source. Every new segment starts with a snapshot of them, so acknowledged
//!   segments can go without losing one.
//! - **Damage inside a segment costs only what it covers.** A record whose
//!   checksum fails is skipped; where no frame starts (a damaged length, zeroed
//!   bytes), reading resumes at the next offset where a whole frame checks out.
//!   The commits count the records before them, so the records lost are counted
//!   exactly (`records_corrupt`), not only the bytes. A damaged header is
//!   rewritten, not a reason to delete the segment (see `segment.rs`).
//!
//! On disk: `<dir>/<20-digit id>.seg` segment files (format in `segment.rs`), ids only
//! ever growing, and `<dir>/ack`, the last acknowledged [`SpoolPosition`] and the
//! end of the push in flight ([`SpoolReader::begin_push`]) with a CRC-32, replaced
//! atomically (temp, fsync, rename); a version-1 file (the position alone) is
//! read. An unreadable `ack` means "nothing acknowledged": everything is shipped
//! again, never an error. The writer starts a new segment at each open, so it
//! never appends behind recovered data.
//!
//! File I/O here is synchronous: run the writer and the reader on blocking threads
//! (`spawn_blocking` or a dedicated thread). Only [`SpoolReader::wait`] is async. The
//! two halves share a small mutex-protected index of segments, held only for
//! bookkeeping, never across file I/O. One process per directory: two agents on one
//! `state_dir` would corrupt each other's spool.

mod segment;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{error, warn};

use crate::config::FsyncPolicy;
use crate::record::{LogRecord, ResumePoint};
use segment::{Commit, Frame, FRAME_HEADER_LEN, HEADER_LEN};
pub use segment::{DecodeError, ResumeState, SpoolRecord};

pub mod stage;

/// Where the spool lives and how it behaves.
#[derive(Clone, Debug)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    /// Bound on the bytes of all segments together (`buffer.max_bytes`).
    pub max_bytes: u64,
    /// A new segment is started when a batch would take the active one past this size
    /// (a batch is never split, so a segment may exceed it by one batch). Capped at
    /// half of `max_bytes`, so trimming whole segments can always make room.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
}

impl SpoolSettings {
    pub const DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

    /// Settings with the default segment size.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64, fsync: FsyncPolicy) -> Self {
        Self {
            dir: dir.into(),
            max_bytes,
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            fsync,
            fsync_interval: Duration::from_secs(1),
        }
    }

    fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes
            .min(self.max_bytes / 2)
            .max(HEADER_LEN + FRAME_HEADER_LEN)
    }
}

/// A place in the spool: the byte offset in a segment just after a record.
/// Positions order as the records they follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolPosition {
    pub segment: u64,
    pub offset: u64,
}

impl fmt::Display for SpoolPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "segment {} offset {}", self.segment, self.offset)
    }
}

/// Records read from the spool, and where to acknowledge up to once they are shipped.
#[derive(Debug)]
pub struct ReadBatch<R = LogRecord> {
    pub records: Vec<R>,
    /// The position just after the last record: pass it to [`SpoolReader::ack`].
    pub end: SpoolPosition,
    /// The records' payload bytes as stored.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool directory {} is out of space: the batch was not stored and must be re-read", dir.display())]
    DiskFull { dir: PathBuf },
}

impl SpoolError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        if is_disk_full(&source) {
            let dir = path.parent().unwrap_or(path).to_path_buf();
            return SpoolError::DiskFull { dir };
        }
        SpoolError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

/// The spool's self-metrics, shared by both halves; read with [`SpoolCounters::snapshot`].
#[derive(Debug, Default)]
pub struct SpoolCounters {
    records_appended: AtomicU64,
    bytes_appended: AtomicU64,
    bytes_buffered: AtomicU64,
    segments: AtomicU64,
    records_dropped: AtomicU64,
    bytes_dropped: AtomicU64,
    records_oversize: AtomicU64,
    records_corrupt: AtomicU64,
    torn_tails: AtomicU64,
    bytes_discarded: AtomicU64,
    records_read: AtomicU64,
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
}

/// A point-in-time copy of [`SpoolCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolCountersSnapshot {
    pub records_appended: u64,
    pub bytes_appended: u64,
    /// Bytes in segments on disk not yet acknowledged (a gauge).
    pub bytes_buffered: u64,
    /// Segment files on disk (a gauge).
    pub segments: u64,
    /// Records deleted unread because the spool reached `max_bytes`.
    pub records_dropped: u64,
    pub bytes_dropped: u64,
    /// Records larger than a frame can hold, dropped at append.
    pub records_oversize: u64,
    /// Records skipped because their checksum did not match.
    pub records_corrupt: u64,
    /// Torn or unframeable segment tails cut off, and unreadable or vanished segment
    /// files discarded (each may have held several records).
    pub torn_tails: u64,
    /// Bytes cut off with torn tails and unreadable segment files.
    pub bytes_discarded: u64,
    pub records_read: u64,
    /// Data fsyncs of segment files, and the time they took.
    pub fsyncs: u64,
    pub fsync_time: Duration,
}

impl SpoolCounters {
    pub fn snapshot(&self) -> SpoolCountersSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SpoolCountersSnapshot {
            records_appended: get(&self.records_appended),
            bytes_appended: get(&self.bytes_appended),
            bytes_buffered: get(&self.bytes_buffered),
            segments: get(&self.segments),
            records_dropped: get(&self.records_dropped),
            bytes_dropped: get(&self.bytes_dropped),
            records_oversize: get(&self.records_oversize),
            records_corrupt: get(&self.records_corrupt),
            torn_tails: get(&self.torn_tails),
            bytes_discarded: get(&self.bytes_discarded),
            records_read: get(&self.records_read),
            fsyncs: get(&self.fsyncs),
            fsync_time: Duration::from_nanos(get(&self.fsync_nanos)),
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

impl SpoolCountersSnapshot {
    /// The counters as Prometheus metric names and values.
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        vec![
            (
                "wisp_spool_records_appended_total",
                self.records_appended as f64,
            ),
            (
                "wisp_spool_bytes_appended_total",
                self.bytes_appended as f64,
            ),
            ("wisp_spool_bytes_buffered", self.bytes_buffered as f64),
            ("wisp_spool_segments", self.segments as f64),
            (
                "wisp_spool_records_dropped_total",
                self.records_dropped as f64,
            ),
            ("wisp_spool_bytes_dropped_total", self.bytes_dropped as f64),
            (
                "wisp_spool_records_oversize_total",
                self.records_oversize as f64,
            ),
            (
                "wisp_spool_records_corrupt_total",
                self.records_corrupt as f64,
            ),
            ("wisp_spool_torn_tails_total", self.torn_tails as f64),
            (
                "wisp_spool_bytes_discarded_total",
                self.bytes_discarded as f64,
            ),
            ("wisp_spool_records_read_total", self.records_read as f64),
            ("wisp_spool_fsyncs_total", self.fsyncs as f64),
            (
                "wisp_spool_fsync_seconds_total",
                self.fsync_time.as_secs_f64(),
            ),
        ]
    }
}

/// What the index knows of one segment file.
#[derive(Clone, Copy, Debug)]
struct SegmentMeta {
    /// Bytes of whole frames (and the header): readers never read past it.
    len: u64,
    records: u64,
}

/// The reader's progress, as the writer needs it to count what trimming loses.
#[derive(Clone, Copy, Debug, Default)]
struct ReaderMark {
    segment: u64,
    offset: u64,
    /// Records read from `segment` before `offset`.
    records: u64,
}

#[derive(Debug)]
struct Index {
    segments: BTreeMap<u64, SegmentMeta>,
    /// The segment the writer appends to; every other one is sealed.
    active: u64,
    total_bytes: u64,
    reader: ReaderMark,
    acked: SpoolPosition,
}

impl Index {
    fn update_gauges(&self, c: &SpoolCounters) {
        let acked_in_head = match self.segments.get(&self.acked.segment) {
            Some(_) => self.acked.offset,
            None => 0,
        };
        c.bytes_buffered.store(
            self.total_bytes.saturating_sub(acked_in_head),
            Ordering::Relaxed,
        );
        c.segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    index: Mutex<Index>,
    /// Woken by the writer after each append; one permit is kept when nobody waits,
    /// so an append between `next_batch` returning `None` and `wait` is not missed.
    appended: Notify,
    counters: Arc<SpoolCounters>,
}

impl Shared {
    fn index(&self) -> MutexGuard<'_, Index> {
        // The index holds only plain numbers updated in single steps: a panic elsewhere
        // cannot leave it half-written, so a poisoned lock is still usable.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(segment::file_name(id))
    }

    fn remove_segments(&self, ids: &[u64]) {
        for &id in ids {
            let path = self.segment_path(id);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(path = %path.display(), error = %e, "cannot delete spool segment"),
            }
        }
    }
}

/// Scratch buffers larger than this are released after use rather than kept: a rare
/// large batch or record must not raise the agent's idle memory for good.
const RETAINED_BUFFER_BYTES: usize = 1024 * 1024;

const ACK_FILE: &str = "ack";
const ACK_TMP_FILE: &str = "ack.tmp";
const ACK_MAGIC: [u8; 4] = *b"WSPA";
/// v1: magic, version, the acknowledged position, CRC-32 (28 bytes). Still read.
const ACK_V1: u32 = 1;
const ACK_V1_LEN: usize = 28;
/// v2 (written since the in-flight push is recorded): magic, version, the
/// acknowledged position, the in-flight end, CRC-32 over what precedes it (44
/// bytes). An agent older than v2 finds a v2 file unreadable and ships the whole
/// spool again (at least once); nothing newer needs a v1 writer.
const ACK_V2: u32 = 2;
const ACK_V2_LEN: usize = 44;

/// What the `ack` file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct AckState {
    /// Everything up to here was shipped.
    acked: SpoolPosition,
    /// The end of the furthest push begun ([`SpoolReader::begin_push`]); when it
    /// is beyond `acked`, the records between may already be in the sink's store.
    in_flight: SpoolPosition,
}

fn put_position(b: &mut [u8], pos: SpoolPosition) {
    b[..8].copy_from_slice(&pos.segment.to_le_bytes());
    b[8..16].copy_from_slice(&pos.offset.to_le_bytes());
}

fn get_position(b: &[u8]) -> Option<SpoolPosition> {
    Some(SpoolPosition {
        segment: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
        offset: u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
    })
}

fn encode_ack(state: AckState) -> [u8; ACK_V2_LEN] {
    let mut b = [0u8; ACK_V2_LEN];
    b[..4].copy_from_slice(&ACK_MAGIC);
    b[4..8].copy_from_slice(&ACK_V2.to_le_bytes());
    put_position(&mut b[8..24], state.acked);
    put_position(&mut b[24..40], state.in_flight);
    let crc = crc32fast::hash(&b[..40]);
    b[40..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Reads a v2 file, or a v1 file (which knows of no push in flight).
fn decode_ack(b: &[u8]) -> Option<AckState> {
    if b.get(..4)? != ACK_MAGIC {
        return None;
    }
    let version = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    let len = match version {
        ACK_V1 => ACK_V1_LEN,
        ACK_V2 => ACK_V2_LEN,
        _ => return None,
    };
    if b.len() != len {
        return None;
    }
    let crc = u32::from_le_bytes(b[len - 4..].try_into().ok()?);
    if crc32fast::hash(&b[..len - 4]) != crc {
        return None;
    }
    let acked = get_position(&b[8..24])?;
    let in_flight = match version {
        ACK_V1 => acked,
        _ => get_position(&b[24..40])?,
    };
    Some(AckState { acked, in_flight })
}

/// Replaces the `ack` file: written to a temporary file, fsynced, renamed over.
fn write_ack_file(dir: &Path, state: AckState) -> Result<(), SpoolError> {
    let tmp = dir.join(ACK_TMP_FILE);
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&encode_ack(state))?;
        f.sync_all()
    };
    write().map_err(|e| SpoolError::io("write spool acknowledgement file", &tmp, e))?;
    let path = dir.join(ACK_FILE);
    fs::rename(&tmp, &path)
        .map_err(|e| SpoolError::io("rename spool acknowledgement file", &path, e))?;
    // No directory fsync: should a power loss undo the rename, the previous
    // state is used and a little more is shipped again (at least once).
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io("fsync directory", dir, e))
}

/// Opens a spool directory.
pub struct Spool;

impl Spool {
    /// Creates `settings.dir` if needed, recovers the segments in it, and returns the
    /// writer (which always starts a fresh segment) and the reader (positioned after
    /// the last acknowledged record). Recovery reads each segment once, frame by frame,
    /// in bounded memory; its cost is proportional to the unacknowledged backlog.
    pub fn open(settings: SpoolSettings) -> Result<(SpoolWriter, SpoolReader), SpoolError> {
        Self::open_for::<LogRecord>(settings)
    }

    /// As [`Spool::open`], for a spool of another record type (OTLP requests).
    pub fn open_for<R: SpoolRecord>(
        settings: SpoolSettings,
    ) -> Result<(SpoolWriter<R>, SpoolReader<R>), SpoolError> {
        let dir = settings.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| SpoolError::io("create spool directory", &dir, e))?;
        let counters = Arc::new(SpoolCounters::default());

        let ack_state = read_ack_file(&dir);
        let acked = ack_state.map(|a| a.acked);
        let mut ids = Vec::new();
        let entries =
            fs::read_dir(&dir).map_err(|e| SpoolError::io("list spool directory", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SpoolError::io("list spool directory", &dir, e))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(segment::parse_file_name)
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        // Ids never go back, even past segments deleted below, so a position never
        // names two different segments.
        let max_seen = ids.last().copied().unwrap_or(0);

        let mut segments = BTreeMap::new();
        let mut reader = None;
        let mut state = ResumeState::new();
        // Files to delete once the new segment holds the resume points: an empty
        // segment may hold the only copy of them.
        let mut doomed = Vec::new();
        for id in ids {
            let path = dir.join(segment::file_name(id));
            if acked.is_some_and(|a| id < a.segment) {
                // Acknowledged before the last stop; its deletion did not happen.
                // (A later segment starts with a snapshot of its resume points.)
                doomed.push(path);
                continue;
            }
            let ack_offset = acked.filter(|a| a.segment == id).map(|a| a.offset);
            let scan = segment::scan_segment(&path, ack_offset, &mut state)
                .map_err(|e| SpoolError::io("read spool segment", &path, e))?;
            if scan.unreadable {
                if scan.file_len < HEADER_LEN {
                    warn!(segment = %path.display(), bytes = scan.file_len,
                        "spool segment was cut short as it was created; deleting it");
                } else {
                    error!(segment = %path.display(), bytes = scan.file_len,
                        "spool segment holds no frame this version can read (another format version, or damaged through); deleting it");
                }
                CounterSet(&counters).discarded(scan.file_len);
                doomed.push(path);
                continue;
            }
            if scan.header_damaged {
                warn!(segment = %path.display(),
                    "spool segment header is damaged; its records are kept and the header rewritten");
                rewrite_header(&path)?;
            }
            if scan.valid_len < scan.file_len {
                let cut = scan.file_len - scan.valid_len;
                warn!(segment = %path.display(), offset = scan.valid_len, bytes = cut,
                    "discarding a torn tail of a spool segment; earlier records are kept");
                CounterSet(&counters).discarded(cut);
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| SpoolError::io("open spool segment", &path, e))?;
                f.set_len(scan.valid_len)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| SpoolError::io("truncate spool segment", &path, e))?;
            }
            if scan.records == 0 || ack_offset.is_some_and(|a| a >= scan.valid_len) {
                // No records (a segment started just before a stop), or all of
                // them shipped: its resume points, if any, go on in the new segment.
                doomed.push(path);
                continue;
            }
            if scan.damaged > 0 {
                warn!(segment = %path.display(), places = scan.damaged,
                    "spool segment is damaged; reading skips the damage, and the records it cost are counted");
            }
            if let Some(offset) = ack_offset {
                if scan.ack_aligned {
                    reader = Some(ReaderMark {
                        segment: id,
                        offset,
                        records: scan.records_before_ack,
                    });
                } else {
                    warn!(segment = %path.display(), offset,
                        "acknowledged position is not at a record boundary; re-reading the segment from its start");
                }
            }
            segments.insert(
                id,
                SegmentMeta {
                    len: scan.valid_len,
                    records: scan.records,
                },
            );
        }

        // The new segment's id must be above the acknowledged one, or its records
        // would count as acknowledged.
        // Above the recorded in-flight end too: a new record must never fall
        // inside the range a restart checks against the sink's store.
        let active = max_seen
            .max(acked.map_or(0, |a| a.segment))
            .max(ack_state.map_or(0, |a| a.in_flight.segment))
            + 1;
        let (file, base_len) = create_segment(&dir, active, &state)?;
        sync_dir(&dir)?;
        for path in &doomed {
            remove_file_logged(path);
        }
        segments.insert(
            active,
            SegmentMeta {
                len: base_len,
                records: 0,
            },
        );

        let reader = reader.unwrap_or_else(|| {
            let first = segments.keys().next().copied().unwrap_or(active);
            ReaderMark {
                segment: first,
                offset: HEADER_LEN,
                records: 0,
            }
        });
        let total_bytes = segments.values().map(|m| m.len).sum();
        let index = Index {
            segments,
            active,
            total_bytes,
            reader,
            acked: acked.unwrap_or_default(),
        };
        index.update_gauges(&counters);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            index: Mutex::new(index),
            appended: Notify::new(),
            counters,
        });
        let segment_bytes = settings.effective_segment_bytes();
        let writer = SpoolWriter {
            shared: shared.clone(),
            settings,
            segment_bytes,
            file,
            active,
            len: base_len,
            base_len,
            records: 0,
            state,
            unsynced: false,
            last_sync: Instant::now(),
            buf: Vec::new(),
            needs_rotation: false,
            _record: PhantomData,
        };
        let reader = SpoolReader {
            shared,
            cursor: SpoolPosition {
                segment: reader.segment,
                offset: reader.offset,
            },
            records_in_segment: reader.records,
            file: None,
            acked: acked.unwrap_or_default(),
            in_flight: ack_state.map_or_else(SpoolPosition::default, |a| a.in_flight),
            ack_unsaved: false,
            in_flight_at_open: ack_state
                .map(|a| a.in_flight)
                .filter(|&end| end > acked.unwrap_or_default()),
            payload: Vec::new(),
            cache: R::Cache::default(),
        };
        Ok((writer, reader))
    }
}

/// A borrowed view that bumps related counters together.
struct CounterSet<'a>(&'a SpoolCounters);

impl CounterSet<'_> {
    fn discarded(&self, bytes: u64) {
        SpoolCounters::add(&self.0.torn_tails, 1);
        SpoolCounters::add(&self.0.bytes_discarded, bytes);
    }
}

fn remove_file_logged(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "cannot delete spool file");
        }
    }
}

/// The last acknowledged position and in-flight end, or `None` when nothing was
/// acknowledged or the file is unreadable: then everything is read again (at
/// least once, never fatal).
fn read_ack_file(dir: &Path) -> Option<AckState> {
    remove_file_logged(&dir.join(ACK_TMP_FILE));
    let path = dir.join(ACK_FILE);
    // An ack file is 44 bytes: a larger one is corrupt, and is not read whole.
    let read = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&path)
    }
    .and_then(|f| {
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(f, 4096), &mut bytes).map(|_| bytes)
    });
    match read {
        Ok(bytes) => {
            let pos = decode_ack(&bytes);
            if pos.is_none() {
                warn!(path = %path.display(),
                    "spool acknowledgement file is corrupt; re-reading the whole spool (records may be shipped twice)");
            }
            pos
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            warn!(path = %path.display(), error = %e,
                "cannot read spool acknowledgement file; re-reading the whole spool");
            None
        }
    }
}

/// Creates segment `id`: its header, then (when there are any) a snapshot of the
/// resume points, fsynced, so that older segments may go. Returns the file and
/// its length.
fn create_segment(dir: &Path, id: u64, state: &ResumeState) -> Result<(File, u64), SpoolError> {
    let path = dir.join(segment::file_name(id));
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| SpoolError::io("create spool segment", &path, e))?;
    let mut head = segment::header().to_vec();
    if !state.is_empty() {
        let points = state
            .iter()
            .map(|(k, v)| (k.as_slice(), Some(v.as_slice())));
        segment::encode_commit(0, true, points, &mut head);
    }
    let written = file.write_all(&head).and_then(|()| {
        if state.is_empty() {
            Ok(())
        } else {
            file.sync_data()
        }
    });
    if let Err(e) = written {
        remove_file_logged(&path);
        return Err(SpoolError::io("write spool segment", &path, e));
    }
    Ok((file, head.len() as u64))
}

/// Writes a good header over a damaged one (the frames behind it are intact).
fn rewrite_header(path: &Path) -> Result<(), SpoolError> {
    use std::os::unix::fs::FileExt;
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            f.write_all_at(&segment::header(), 0)?;
            f.sync_data()
        })
        .map_err(|e| SpoolError::io("repair spool segment header", path, e))
}

/// The appending half. Use it from one thread at a time; its calls block on file I/O.
pub struct SpoolWriter<R: SpoolRecord = LogRecord> {
    shared: Arc<Shared>,
    settings: SpoolSettings,
    segment_bytes: u64,
    file: File,
    active: u64,
    /// Bytes of whole frames in the active segment, header included.
    len: u64,
    /// `len` of the active segment before its first append (header and snapshot).
    base_len: u64,
    records: u64,
    /// Every source's resume point as the appends so far stored them.
    state: ResumeState,
    unsynced: bool,
    last_sync: Instant,
    /// Encoded frames of the batch being appended; reused between batches.
    buf: Vec<u8>,
    /// A write failed in the active segment: start a new segment before writing again.
    needs_rotation: bool,
    _record: PhantomData<fn(&R)>,
}

/// What one append deleted to stay under `max_bytes`.
#[derive(Default)]
struct Dropped {
    segments: u64,
    records: u64,
    bytes: u64,
}

impl<R: SpoolRecord> SpoolWriter<R> {
    /// Appends `records` in order. With [`FsyncPolicy::Batch`] they are on disk
    /// (fsynced) when this returns `Ok`. On an error nothing of the batch may be
    /// assumed stored: do not acknowledge the source; see the module doc for ENOSPC.
    /// A record too large for a frame (over 64 MiB) is dropped and counted.
    pub fn append(&mut self, records: &[R]) -> Result<(), SpoolError> {
        self.append_with(records, &[])
    }

    /// As [`SpoolWriter::append`], storing `resume` (where each of the records'
    /// sources may resume: in order, a later point of a source replaces an earlier
    /// one) in the same commit: after a crash the points are exactly those of the
    /// appends that are on disk ([`SpoolWriter::resume_state`]).
    pub fn append_with(&mut self, records: &[R], resume: &[ResumePoint]) -> Result<(), SpoolError> {
        if records.is_empty() && resume.is_empty() {
            return Ok(());
        }
        let mut dropped = Dropped::default();
        let result = self.append_inner(records, resume, &mut dropped);
        if dropped.segments > 0 {
            warn!(dir = %self.shared.dir.display(), records = dropped.records, bytes = dropped.bytes,
                segments = dropped.segments,
                "spool reached its max_bytes; dropped the oldest unshipped records");
        }
        self.shared.appended.notify_one();
        result
    }

    fn append_inner(
        &mut self,
        records: &[R],
        resume: &[ResumePoint],
        dropped: &mut Dropped,
    ) -> Result<(), SpoolError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut stored = 0u64;
        for record in records {
            let start = buf.len();
            let frame_len = segment::encode_frame(record, &mut buf) as u64;
            if frame_len > FRAME_HEADER_LEN + u64::from(segment::MAX_PAYLOAD) {
                buf.truncate(start);
                SpoolCounters::add(&self.shared.counters.records_oversize, 1);
                warn!(bytes = frame_len, "record too large for the spool; dropped");
                continue;
            }
            stored += 1;
        }
        // A batch goes whole into one segment (which may so exceed `segment_bytes` by
        // one batch): then a failed write is undone by cutting one file, and a failed
        // append has stored nothing.
        let full = self.len > self.base_len && self.len + buf.len() as u64 > self.segment_bytes;
        let mut result = if full || self.needs_rotation {
            self.rotate()
        } else {
            Ok(())
        };
        if result.is_ok() {
            // The commit ends the append: recovery keeps nothing of an append
            // without it, and takes its resume points with its records.
            let points = resume
                .iter()
                .map(|p| (p.key.as_slice(), p.state.as_deref()));
            segment::encode_commit(self.records + stored, false, points, &mut buf);
            result = self.write_chunk(&buf, stored, dropped);
        }
        if result.is_ok() {
            for p in resume {
                match &p.state {
                    Some(v) => {
                        self.state.insert(p.key.clone(), v.clone());
                    }
                    None => {
                        self.state.remove(&p.key);
                    }
                }
            }
        }
        // Keep the encoding buffer between batches, but not one a rare huge batch grew.
        if buf.capacity() > RETAINED_BUFFER_BYTES {
            buf = Vec::new();
        }
        self.buf = buf;
        result?;
        match self.settings.fsync {
            FsyncPolicy::Batch => self.sync(),
            FsyncPolicy::Interval if self.last_sync.elapsed() >= self.settings.fsync_interval => {
                self.sync()
            }
            FsyncPolicy::Interval => Ok(()),
        }
    }

    /// Writes whole frames to the active segment, after trimming old segments to make
    /// room, and publishes them to the reader.
    fn write_chunk(
        &mut self,
        chunk: &[u8],
        records: u64,
        dropped: &mut Dropped,
    ) -> Result<(), SpoolError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.trim(chunk.len() as u64, dropped);
        if let Err(e) = self.file.write_all(chunk) {
            // Cut the partial frames off (best effort, for recovery's sake) and never
            // write at these offsets again: the reader may have buffered the partial
            // bytes past the published length, so new frames there could be misread.
            let path = self.shared.segment_path(self.active);
            let _ = self.file.set_len(self.len);
            self.needs_rotation = true;
            return Err(SpoolError::io("write spool segment", &path, e));
        }
        self.len += chunk.len() as u64;
        self.records += records;
        self.unsynced = true;
        let c = &self.shared.counters;
        SpoolCounters::add(&c.records_appended, records);
        SpoolCounters::add(&c.bytes_appended, chunk.len() as u64);
        let mut index = self.shared.index();
        index.total_bytes += chunk.len() as u64;
        index.segments.insert(
            self.active,
            SegmentMeta {
                len: self.len,
                records: self.records,
            },
        );
        index.update_gauges(c);
        Ok(())
    }

    /// Deletes the oldest sealed segments until `incoming` more bytes fit in `max_bytes`.
    fn trim(&mut self, incoming: u64, dropped: &mut Dropped) {
        let mut doomed = Vec::new();
        {
            let mut index = self.shared.index();
            while index.total_bytes + incoming > self.settings.max_bytes {
                let Some((&id, &meta)) = index.segments.iter().next() else {
                    break;
                };
                if id == self.active {
                    break;
                }
                index.segments.remove(&id);
                index.total_bytes -= meta.len;
                // What the reader has not read yet is lost; what it has read is in
                // the sink's hands already.
                let r = index.reader;
                let (records, bytes) = match id.cmp(&r.segment) {
                    std::cmp::Ordering::Greater => {
                        (meta.records, meta.len.saturating_sub(HEADER_LEN))
                    }
                    std::cmp::Ordering::Equal => (
                        meta.records.saturating_sub(r.records),
                        meta.len.saturating_sub(r.offset.max(HEADER_LEN)),
                    ),
                    std::cmp::Ordering::Less => (0, 0),
                };
                dropped.segments += 1;
                dropped.records += records;
                dropped.bytes += bytes;
                SpoolCounters::add(&self.shared.counters.records_dropped, records);
                SpoolCounters::add(&self.shared.counters.bytes_dropped, bytes);
                doomed.push(id);
            }
            index.update_gauges(&self.shared.counters);
        }
        self.shared.remove_segments(&doomed);
    }

    /// Seals the active segment (always fsynced, whatever the policy, so only the
    /// newest segment can be torn by a crash) and starts the next one.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        if self.unsynced {
            self.sync()?;
        }
        let next = self.active + 1;
        let (file, len) = create_segment(&self.shared.dir, next, &self.state)?;
        sync_dir(&self.shared.dir)?;
        self.file = file;
        self.active = next;
        self.len = len;
        self.base_len = len;
        self.records = 0;
        self.unsynced = true;
        self.needs_rotation = false;
        let mut index = self.shared.index();
        index.segments.insert(next, SegmentMeta { len, records: 0 });
        index.active = next;
        index.total_bytes += len;
        // A segment acknowledged to its end while it was active can go now.
        let sealed = next - 1;
        let mut done = None;
        if index.acked.segment == sealed {
            if let Some(meta) = index.segments.get(&sealed).copied() {
                if index.acked.offset >= meta.len {
                    index.segments.remove(&sealed);
                    index.total_bytes -= meta.len;
                    done = Some(sealed);
                }
            }
        }
        index.update_gauges(&self.shared.counters);
        drop(index);
        if let Some(id) = done {
            self.shared.remove_segments(&[id]);
        }
        Ok(())
    }

    /// Fsyncs what was appended so far. With [`FsyncPolicy::Interval`] call it at
    /// shutdown and when appends pause, so data never waits long for the disk.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if !self.unsynced {
            return Ok(());
        }
        let started = Instant::now();
        self.file.sync_data().map_err(|e| {
            SpoolError::io(
                "fsync spool segment",
                &self.shared.segment_path(self.active),
                e,
            )
        })?;
        let took = started.elapsed();
        let c = &self.shared.counters;
        SpoolCounters::add(&c.fsyncs, 1);
        SpoolCounters::add(
            &c.fsync_nanos,
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
        );
        self.unsynced = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Fsyncs if data has waited `fsync_interval` or longer; returns whether it did.
    /// With [`FsyncPolicy::Interval`], call it on a timer of that period so the last
    /// appends before a pause do not wait for the next append to reach the disk.
    pub fn sync_if_due(&mut self) -> Result<bool, SpoolError> {
        if !self.unsynced || self.last_sync.elapsed() < self.settings.fsync_interval {
            return Ok(false);
        }
        self.sync().map(|()| true)
    }

    /// Hands the encoding buffer back to the allocator. Call it when appends pause:
    /// a burst grows the buffer to the size of its largest group (about 1 MiB), and
    /// an idle agent should not keep that.
    pub fn release_memory(&mut self) {
        self.buf = Vec::new();
    }

    /// Whether appended data awaits an fsync (only with [`FsyncPolicy::Interval`]).
    pub fn sync_pending(&self) -> bool {
        self.unsynced
    }

    pub fn counters(&self) -> Arc<SpoolCounters> {
        self.shared.counters.clone()
    }

    /// Each source's resume point, as the appends on disk stored them (at open:
    /// what recovery found, the newest per source).
    pub fn resume_state(&self) -> &ResumeState {
        &self.state
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

impl<R: SpoolRecord> Drop for SpoolWriter<R> {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            warn!(error = %e, "cannot fsync the spool on close");
        }
        // Wake a waiting reader so it drains what is left.
        self.shared.appended.notify_one();
    }
}

/// The reading half: one consumer reads records in append order and acknowledges
/// them once shipped. Its calls block on file I/O, except [`SpoolReader::wait`].
pub struct SpoolReader<R: SpoolRecord = LogRecord> {
    shared: Arc<Shared>,
    /// The next record to read.
    cursor: SpoolPosition,
    records_in_segment: u64,
    /// The cursor's segment, open at `cursor.offset`.
    file: Option<BufReader<File>>,
    acked: SpoolPosition,
    /// The end recorded by the last [`SpoolReader::begin_push`] (or found at open).
    in_flight: SpoolPosition,
    /// The in-flight end found at open, when it was beyond the acknowledged position.
    in_flight_at_open: Option<SpoolPosition>,
    /// `acked` moved past what the `ack` file says ([`SpoolReader::ack_later`]).
    ack_unsaved: bool,
    payload: Vec<u8>,
    cache: R::Cache,
}

impl<R: SpoolRecord> SpoolReader<R> {
    /// Reads up to `max_records` records and about `max_bytes` bytes (at least one
    /// record, however large). Returns `None` when everything appended has been read.
    /// Never waits for the writer: see [`SpoolReader::wait`].
    pub fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<ReadBatch<R>>, SpoolError> {
        let shared = Arc::clone(&self.shared);
        let mut records = Vec::new();
        let mut bytes = 0u64;
        let max_records = max_records.max(1);
        let max_bytes = max_bytes.max(1);
        'segments: while records.len() < max_records && (bytes as usize) < max_bytes {
            let (limit, sealed) = {
                let index = shared.index();
                // Normally the cursor's own segment; when that was trimmed for space
                // (the writer counted the loss) or acknowledged, the oldest after it.
                let Some((&id, meta)) = index.segments.range(self.cursor.segment..).next() else {
                    break;
                };
                if id != self.cursor.segment {
                    self.enter_segment(id);
                }
                (meta.len, id < index.active)
            };
            if self.cursor.offset >= limit {
                if sealed {
                    // Moves on; the next iteration finds the next segment.
                    self.enter_segment(self.cursor.segment + 1);
                    continue;
                }
                break;
            }
            let path = self.shared.segment_path(self.cursor.segment);
            if self.file.is_none() {
                match segment::open_at(&path, self.cursor.offset) {
                    Ok(f) => self.file = Some(f),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if self.forget_missing_segment() {
                            continue;
                        }
                        break;
                    }
                    Err(e) => return Err(SpoolError::io("open spool segment", &path, e)),
                }
            }
            while self.cursor.offset < limit {
                let Some(file) = self.file.as_mut() else {
                    continue 'segments;
                };
                // A full batch still takes the commit right after its last record,
                // so that its end (the acknowledged position) is past the append.
                if (records.len() >= max_records || (bytes as usize) >= max_bytes)
                    && !segment::commit_is_next(file)
                        .map_err(|e| SpoolError::io("read spool segment", &path, e))?
                {
                    break;
                }
                let frame =
                    segment::read_frame(file, limit - self.cursor.offset, &mut self.payload)
                        .map_err(|e| SpoolError::io("read spool segment", &path, e))?;
                match frame {
                    Frame::Record { len } => {
                        self.cursor.offset += frame.size();
                        self.records_in_segment += 1;
                        match R::decode_payload(&self.payload, &mut self.cache) {
                            Ok(r) => {
                                bytes += u64::from(len);
                                records.push(r);
                            }
                            Err(e) => {
                                SpoolCounters::add(&self.shared.counters.records_corrupt, 1);
                                warn!(segment = %path.display(), offset = self.cursor.offset, error = %e,
                                    "skipping an undecodable spool record");
                            }
                        }
                    }
                    Frame::Commit { .. } => {
                        self.cursor.offset += frame.size();
                        // The commit counts the segment's records up to it: more
                        // than were read means damage before it cost some.
                        if let Ok(c) = Commit::decode(&self.payload, false) {
                            if c.records > self.records_in_segment {
                                let lost = c.records - self.records_in_segment;
                                SpoolCounters::add(&self.shared.counters.records_corrupt, lost);
                                warn!(segment = %path.display(), offset = self.cursor.offset, records = lost,
                                    "records of a damaged spool segment are lost");
                            }
                            self.records_in_segment = c.records;
                        }
                    }
                    Frame::Corrupt { .. }
                        if segment::frame_starts_at(
                            file.get_ref(),
                            self.cursor.offset + frame.size(),
                            limit,
                        )
                        .map_err(|e| SpoolError::io("read spool segment", &path, e))? =>
                    {
                        // A damaged payload under an intact length: one record.
                        self.cursor.offset += frame.size();
                        self.records_in_segment += 1;
                        SpoolCounters::add(&self.shared.counters.records_corrupt, 1);
                        warn!(segment = %path.display(), offset = self.cursor.offset,
                            "skipping a spool record whose checksum does not match");
                    }
                    Frame::Corrupt { .. } | Frame::Torn => {
                        // No frame starts here: skip to the next place where one
                        // does (the commit after it counts what was lost), or,
                        // when none does, to the end of what is written.
                        let from = self.cursor.offset;
                        let next = segment::find_frame(file.get_ref(), from + 1, limit)
                            .map_err(|e| SpoolError::io("read spool segment", &path, e))?
                            .unwrap_or(limit);
                        warn!(segment = %path.display(), offset = from, bytes = next - from,
                            "spool segment is damaged here; skipping to the next intact record");
                        CounterSet(&self.shared.counters).discarded(next - from);
                        self.cursor.offset = next;
                        self.file = None;
                    }
                }
            }
        }
        if self.payload.capacity() > RETAINED_BUFFER_BYTES {
            self.payload = Vec::new();
        }
        {
            let mut index = shared.index();
            index.reader = ReaderMark {
                segment: self.cursor.segment,
                offset: self.cursor.offset,
                records: self.records_in_segment,
            };
        }
        if records.is_empty() {
            return Ok(None);
        }
        SpoolCounters::add(&self.shared.counters.records_read, records.len() as u64);
        Ok(Some(ReadBatch {
            records,
            end: self.cursor,
            bytes,
        }))
    }

    /// Handles a segment file gone from disk: normally trimmed by the writer between
    /// the index check and the open (it is out of the index then); otherwise deleted
    /// behind the agent's back, which is counted as discarded and dropped from the
    /// index. Returns whether reading can go on with the next segment.
    fn forget_missing_segment(&mut self) -> bool {
        let id = self.cursor.segment;
        let mut index = self.shared.index();
        let Some(meta) = index.segments.remove(&id) else {
            return true;
        };
        index.total_bytes -= meta.len;
        index.update_gauges(&self.shared.counters);
        let active = index.active;
        drop(index);
        warn!(segment = %self.shared.segment_path(id).display(),
            "spool segment file disappeared; its records are lost");
        CounterSet(&self.shared.counters).discarded(meta.len);
        // The writer still appends to the active one and will list it again: stop
        // here rather than spin on it.
        id != active
    }

    fn enter_segment(&mut self, id: u64) {
        self.cursor = SpoolPosition {
            segment: id,
            offset: HEADER_LEN,
        };
        self.records_in_segment = 0;
        self.file = None;
    }

    /// Waits until the writer appends (returns at once if it appended since the last
    /// wait). Cancel-safe. Call [`SpoolReader::next_batch`] after it.
    pub async fn wait(&self) {
        self.shared.appended.notified().await;
    }

    /// Records that everything up to `upto` was shipped: deletes the segments it
    /// covers and persists the position (written to a temporary file, fsynced,
    /// renamed over the previous one). A position at or before the last acknowledged one is ignored.
    ///
    /// Covered segments go first: that is safe (a restart with the older position
    /// starts at the oldest remaining segment, past them) and frees space, so an
    /// acknowledgement still works on a full disk.
    pub fn ack(&mut self, upto: SpoolPosition) -> Result<(), SpoolError> {
        self.ack_later(upto);
        self.save_ack()
    }

    /// As [`SpoolReader::ack`], but the position is written to the `ack` file only
    /// with the next [`SpoolReader::begin_push`] (one write for both) or
    /// [`SpoolReader::save_ack`]. Until then a restart starts from the previous
    /// position, whose records past this one are gone with their segments or
    /// were in flight (so the sink checks them against its store): a sink that
    /// records pushes in flight pays one write per push, not two.
    pub fn ack_later(&mut self, upto: SpoolPosition) {
        if upto <= self.acked {
            return;
        }
        let mut done = Vec::new();
        {
            let mut index = self.shared.index();
            index.acked = upto;
            let active = index.active;
            let covered: Vec<u64> = index
                .segments
                .range(..=upto.segment)
                .filter(|(&id, meta)| id < upto.segment || (id < active && upto.offset >= meta.len))
                .map(|(&id, _)| id)
                .collect();
            for id in covered {
                if let Some(meta) = index.segments.remove(&id) {
                    index.total_bytes -= meta.len;
                    done.push(id);
                }
            }
            index.update_gauges(&self.shared.counters);
        }
        self.shared.remove_segments(&done);
        self.acked = upto;
        self.ack_unsaved = true;
    }

    /// Whether an acknowledgement made with [`SpoolReader::ack_later`] waits to
    /// be written.
    pub fn ack_pending(&self) -> bool {
        self.ack_unsaved
    }

    /// Writes an acknowledgement made with [`SpoolReader::ack_later`] to the
    /// `ack` file, if one is waiting.
    pub fn save_ack(&mut self) -> Result<(), SpoolError> {
        if !self.ack_unsaved {
            return Ok(());
        }
        let state = AckState {
            acked: self.acked,
            in_flight: self.in_flight.max(self.acked),
        };
        write_ack_file(&self.shared.dir, state)?;
        self.in_flight = state.in_flight;
        self.ack_unsaved = false;
        Ok(())
    }

    /// Records durably (in the `ack` file, as [`SpoolReader::ack`] does) that a push
    /// of the records up to `end` is about to be sent: should the agent stop before
    /// it can acknowledge them, the next start knows ([`SpoolReader::in_flight`])
    /// that the sink's store may hold some of them. Call it before the first
    /// attempt of each push. An end at or before the acknowledged position, or at or
    /// before one already recorded, writes nothing: the recorded end only grows.
    pub fn begin_push(&mut self, end: SpoolPosition) -> Result<(), SpoolError> {
        if end <= self.acked || end <= self.in_flight {
            return Ok(());
        }
        let state = AckState {
            acked: self.acked,
            in_flight: end,
        };
        write_ack_file(&self.shared.dir, state)?;
        self.in_flight = end;
        self.ack_unsaved = false;
        Ok(())
    }

    /// The end of the push that was in flight when the agent last stopped: records
    /// from the acknowledged position up to it may already be in the sink's store.
    /// `None` when no push was in flight, and once acknowledgements reach it.
    pub fn in_flight(&self) -> Option<SpoolPosition> {
        self.in_flight_at_open.filter(|&end| end > self.acked)
    }

    /// The position after the last record returned by [`SpoolReader::next_batch`].
    pub fn position(&self) -> SpoolPosition {
        self.cursor
    }

    pub fn counters(&self) -> Arc<SpoolCounters> {
        self.shared.counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_file_round_trips_and_rejects_damage() {
        let state = AckState {
            acked: SpoolPosition {
                segment: 7,
                offset: 1234,
            },
            in_flight: SpoolPosition {
                segment: 8,
                offset: 99,
            },
        };
        let bytes = encode_ack(state);
        assert_eq!(bytes.len(), ACK_V2_LEN);
        assert_eq!(decode_ack(&bytes), Some(state));
        for i in 0..bytes.len() {
            let mut bad = bytes;
            bad[i] ^= 1;
            assert_eq!(decode_ack(&bad), None, "flip at {i}");
        }
        assert_eq!(decode_ack(&bytes[..20]), None);
        assert_eq!(decode_ack(&bytes[..ACK_V1_LEN]), None);
        assert_eq!(decode_ack(&[]), None);
    }

    #[test]
    fn a_version_1_ack_file_is_read_as_nothing_in_flight() {
        // As the agent wrote it before v2: magic, version 1, segment, offset, CRC.
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"WSPA");
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&7u64.to_le_bytes());
        v1.extend_from_slice(&1234u64.to_le_bytes());
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(v1.len(), 28);
        let pos = SpoolPosition {
            segment: 7,
            offset: 1234,
        };
        assert_eq!(
            decode_ack(&v1),
            Some(AckState {
                acked: pos,
                in_flight: pos
            })
        );
        v1[27] ^= 1;
        assert_eq!(decode_ack(&v1), None);
    }

    #[test]
    fn enospc_and_quota_errors_are_disk_full_naming_the_dir() {
        let e = SpoolError::io(
            "write spool segment",
            Path::new("/var/lib/wisp/spool/00000000000000000001.seg"),
            io::Error::from_raw_os_error(28),
        );
        assert_eq!(
            e.to_string(),
            "spool directory /var/lib/wisp/spool is out of space: the batch was not stored and must be re-read"
        );
        let e = SpoolError::io(
            "open spool segment",
            Path::new("/x/y"),
            io::Error::from_raw_os_error(13),
        );
        assert!(
            e.to_string()
                .starts_with("cannot open spool segment /x/y: "),
            "{e}"
        );
    }

    #[test]
    fn both_halves_can_move_to_their_own_threads() {
        fn send<T: Send + 'static>() {}
        send::<SpoolWriter>();
        send::<SpoolReader>();
        send::<Arc<SpoolCounters>>();
    }

    #[test]
    fn segments_are_at_most_half_the_spool() {
        let mut s = SpoolSettings::new("/tmp/x", 1000, FsyncPolicy::Batch);
        assert_eq!(s.effective_segment_bytes(), 500);
        s.max_bytes = 1 << 40;
        assert_eq!(
            s.effective_segment_bytes(),
            SpoolSettings::DEFAULT_SEGMENT_BYTES
        );
    }
}
