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
//! - **Bounded, and shared fairly.** Each append says whose its records are
//!   ([`Owner`]: a file entry and the file's owner, a user's `exec` output, an
//!   OTLP sender, the agent), in its commit. Beyond `max_bytes` the largest
//!   owner loses its oldest records first: a segment holding them is deleted,
//!   and the unread records of other owners in it are first carried forward
//!   (copied, frame by frame, into the active segment, in one commit that names
//!   the segment it replaces; recovery deletes a replaced segment a crash left
//!   behind, so nothing is read twice). What is lost is counted per owner and
//!   logged once per drop event. Whole oldest segments go only when no owner's
//!   records can (`share.rs`). The writer never waits for the reader beyond one
//!   [`SpoolReader::next_batch`] while it carries records forward.
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
//! end of the push in flight ([`SpoolReader::begin_push`]), while the sink put
//! one on it the push's mark ([`SpoolReader::mark_in_flight`]), and a CRC-32,
//! replaced atomically (temp, fsync, rename); a version-1 file (the position
//! alone) is read. An unreadable `ack` means "nothing acknowledged": everything is shipped
//! again, never an error. The writer starts a new segment at each open, so it
//! never appends behind recovered data.
//!
//! File I/O here is synchronous: run the writer and the reader on blocking threads
//! (`spawn_blocking` or a dedicated thread). Only [`SpoolReader::wait`] is async. The
//! two halves share a small mutex-protected index of segments, held only for
//! bookkeeping, never across file I/O. One process per directory: two agents on one
//! `state_dir` would corrupt each other's spool.

mod ack;
mod open;
mod reader;
mod segment;
mod share;
mod writer;

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
use crate::metric::{
    counter, encode, gauge, labelled, named, names, one, Family, Registry, Sample,
};
use crate::record::{LogRecord, Owner, ResumePoint};
use segment::{Commit, Frame, Shares, FRAME_HEADER_LEN, HEADER_LEN};
pub use segment::{DecodeError, ResumeState, SpoolRecord};

pub mod stage;

use ack::*;
pub use open::Spool;
use open::*;
pub use reader::SpoolReader;
pub use share::OwnerCounts;
use share::*;
pub use writer::SpoolWriter;
use writer::*;

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
    bytes_carried: AtomicU64,
    /// Per owner: bytes buffered, records and bytes dropped (at most
    /// [`MAX_OWNERS_SHOWN`] owners).
    owners: Mutex<BTreeMap<Owner, OwnerCounts>>,
}

/// A point-in-time copy of [`SpoolCounters`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    /// Bytes of other owners' unread records copied forward out of segments
    /// deleted for space.
    pub bytes_carried: u64,
    /// Per owner, in owner order.
    pub owners: Vec<(Owner, OwnerCounts)>,
}

/// A spool's bound, served after `wisp_spool_bytes_buffered`.
pub(crate) const SPOOL_MAX_BYTES: &[Family<u64>] = &[gauge(
    "wisp_spool_max_bytes",
    "The buffer's bound, its share of buffer.max_bytes; past it the oldest data of the owner holding the most is dropped.",
    |max| one(*max),
)];

impl SpoolCounters {
    /// Registers this spool as an instance of the spool families, each
    /// sample labelled `spool=name`, with its bound `max_bytes` (its share of
    /// `buffer.max_bytes`) served after `wisp_spool_bytes_buffered`.
    pub fn register(self: Arc<Self>, metrics: &mut Registry, name: &'static str, max_bytes: u64) {
        let (a, b) = SpoolCountersSnapshot::split();
        let families = names(a).chain(names(SPOOL_MAX_BYTES)).chain(names(b));
        metrics.add("spool", families, move |out| {
            let own = || vec![("spool", name.into())];
            let snapshot = self.snapshot();
            encode(out, a, &[(own(), &snapshot)])?;
            encode(out, SPOOL_MAX_BYTES, &[(own(), &max_bytes)])?;
            encode(out, b, &[(own(), &snapshot)])
        });
    }

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
            bytes_carried: get(&self.bytes_carried),
            owners: self
                .owners
                .lock()
                .map(|m| m.iter().map(|(o, c)| (*o, *c)).collect())
                .unwrap_or_default(),
        }
    }

    /// Counts records of `owner` dropped for space.
    pub(crate) fn owner_dropped(&self, owner: Owner, records: u64, bytes: u64) {
        Self::add(&self.records_dropped, records);
        Self::add(&self.bytes_dropped, bytes);
        if let Ok(mut m) = self.owners.lock() {
            if let Some(c) = owner_entry(&mut m, owner) {
                c.records_dropped += records;
                c.bytes_dropped += bytes;
            }
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

impl SpoolCountersSnapshot {
    /// The families served before [`SPOOL_MAX_BYTES`] and those after.
    pub(crate) fn split() -> (
        &'static [Family<SpoolCountersSnapshot>],
        &'static [Family<SpoolCountersSnapshot>],
    ) {
        let at = Self::FAMILIES
            .iter()
            .position(|f| f.name == "wisp_spool_bytes_buffered")
            .map_or(0, |i| i + 1);
        Self::FAMILIES.split_at(at)
    }

    /// The spool's metric families, the one place their names and help live.
    /// Both spools serve them, each sample labelled `spool="loki"|"otlp"`;
    /// `wisp_spool_max_bytes` (a setting, not a counter) is [`SPOOL_MAX_BYTES`].
    pub(crate) const FAMILIES: &'static [Family<SpoolCountersSnapshot>] = &[
        counter(
            "wisp_spool_records_appended_total",
            "Records written to the buffer.",
            |s| one(s.records_appended),
        ),
        counter(
            "wisp_spool_bytes_appended_total",
            "Bytes written to the buffer.",
            |s| one(s.bytes_appended),
        ),
        gauge(
            "wisp_spool_bytes_buffered",
            "Bytes in the buffer not yet acknowledged by the sink.",
            |s| one(s.bytes_buffered),
        ),
        gauge(
            "wisp_spool_segments",
            "Segment files of the buffer on disk.",
            |s| one(s.segments),
        ),
        counter(
            "wisp_spool_records_dropped_total",
            "Records dropped unshipped because the buffer reached buffer.max_bytes.",
            |s| one(s.records_dropped),
        ),
        counter(
            "wisp_spool_bytes_dropped_total",
            "Bytes dropped unshipped because the buffer reached buffer.max_bytes.",
            |s| one(s.bytes_dropped),
        ),
        counter(
            "wisp_spool_records_oversize_total",
            "Records too large for a buffer frame, dropped.",
            |s| one(s.records_oversize),
        ),
        counter(
            "wisp_spool_records_corrupt_total",
            "Records skipped in the buffer because their checksum did not match.",
            |s| one(s.records_corrupt),
        ),
        counter(
            "wisp_spool_torn_tails_total",
            "Torn segment tails and unreadable segment files discarded at recovery.",
            |s| one(s.torn_tails),
        ),
        counter(
            "wisp_spool_bytes_discarded_total",
            "Bytes of torn tails and unreadable segment files discarded.",
            |s| one(s.bytes_discarded),
        ),
        counter(
            "wisp_spool_records_read_total",
            "Records read from the buffer by the sink (a retried push reads once).",
            |s| one(s.records_read),
        ),
        counter(
            "wisp_spool_fsyncs_total",
            "fsyncs of buffer segment files.",
            |s| one(s.fsyncs),
        ),
        counter(
            "wisp_spool_fsync_seconds_total",
            "Time spent in fsyncs of buffer segment files.",
            |s| one(s.fsync_time.as_secs_f64()),
        ),
        gauge(
            "wisp_spool_owner_bytes_buffered",
            "Bytes of each owner's records in the buffer (a file entry and the file's owner, a user's exec output, an OTLP sender, the agent).",
            |s| per_owner(s, |c| c.bytes_buffered),
        ),
        counter(
            "wisp_spool_owner_records_dropped_total",
            "Records of each owner dropped unshipped because the buffer reached buffer.max_bytes (the largest owner loses first).",
            |s| per_owner(s, |c| c.records_dropped),
        ),
        counter(
            "wisp_spool_owner_bytes_dropped_total",
            "Bytes of each owner's records dropped unshipped because the buffer reached buffer.max_bytes.",
            |s| per_owner(s, |c| c.bytes_dropped),
        ),
        counter(
            "wisp_spool_bytes_carried_total",
            "Bytes of unread records of other owners copied forward out of a segment dropped for the largest owner.",
            |s| one(s.bytes_carried),
        ),
    ];

    /// The counters as Prometheus metric names and values, read through
    /// [`SpoolCountersSnapshot::FAMILIES`].
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        named(Self::FAMILIES, self)
            .into_iter()
            .map(|(name, v)| (name, v.as_f64()))
            .collect()
    }
}

/// One sample per owner, labelled `owner`.
fn per_owner(s: &SpoolCountersSnapshot, value: fn(&OwnerCounts) -> u64) -> Vec<Sample> {
    s.owners
        .iter()
        .map(|(owner, c)| labelled([("owner", owner.to_string().into())], value(c)))
        .collect()
}

/// A borrowed view that bumps related counters together.
struct CounterSet<'a>(&'a SpoolCounters);

impl CounterSet<'_> {
    fn discarded(&self, bytes: u64) {
        SpoolCounters::add(&self.0.torn_tails, 1);
        SpoolCounters::add(&self.0.bytes_discarded, bytes);
    }
}

/// What the index knows of one segment file.
#[derive(Clone, Copy, Debug)]
struct SegmentMeta {
    /// Bytes of whole frames (and the header): readers never read past it.
    len: u64,
    records: u64,
}

/// An owner's records in a segment, or in the spool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Share {
    records: u64,
    /// Their frames' bytes (headers and commits are no one's).
    bytes: u64,
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
    /// Whose the records of each segment are.
    shares: BTreeMap<u64, BTreeMap<Owner, Share>>,
    /// The shares of all segments, per owner.
    owners: BTreeMap<Owner, Share>,
}

impl Index {
    /// Forgets segment `id` (its bytes and its owners' shares); its meta, if
    /// it was listed.
    fn remove_segment(&mut self, id: u64) -> Option<SegmentMeta> {
        let meta = self.segments.remove(&id)?;
        self.total_bytes = self.total_bytes.saturating_sub(meta.len);
        for (owner, share) in self.shares.remove(&id).unwrap_or_default() {
            self.take_share(owner, share);
        }
        Some(meta)
    }

    /// Credits `share` to `owner` in segment `id`.
    fn add_share(&mut self, id: u64, owner: Owner, share: Share) {
        let s = self.shares.entry(id).or_default().entry(owner).or_default();
        s.records += share.records;
        s.bytes += share.bytes;
        let t = self.owners.entry(owner).or_default();
        t.records += share.records;
        t.bytes += share.bytes;
    }

    fn take_share(&mut self, owner: Owner, share: Share) {
        if let Some(t) = self.owners.get_mut(&owner) {
            t.records = t.records.saturating_sub(share.records);
            t.bytes = t.bytes.saturating_sub(share.bytes);
            if t.bytes == 0 && t.records == 0 {
                self.owners.remove(&owner);
            }
        }
    }

    fn update_gauges(&self, c: &SpoolCounters) {
        if let Ok(mut m) = c.owners.lock() {
            for (owner, counts) in m.iter_mut() {
                counts.bytes_buffered = self.owners.get(owner).map_or(0, |s| s.bytes);
            }
            for (owner, share) in &self.owners {
                if let Some(counts) = owner_entry(&mut m, *owner) {
                    counts.bytes_buffered = share.bytes;
                }
            }
        }
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
    /// Held by the reader through each [`SpoolReader::next_batch`] and by the
    /// writer while it carries records forward out of a segment it deletes:
    /// so a record is either read there or carried, never both. Taken before
    /// `index`, never after it.
    reading: Mutex<()>,
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

    fn reading(&self) -> MutexGuard<'_, ()> {
        self.reading.lock().unwrap_or_else(|e| e.into_inner())
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
            mark: 0,
        };
        let marked = AckState {
            mark: 1_795_000_000_000_000_000,
            ..state
        };
        for (state, len) in [(state, ACK_V2_LEN), (marked, ACK_V3_LEN)] {
            let bytes = encode_ack(state);
            assert_eq!(bytes.len(), len);
            assert_eq!(decode_ack(&bytes), Some(state));
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 1;
                assert_eq!(decode_ack(&bad), None, "flip at {i}");
            }
            assert_eq!(decode_ack(&bytes[..20]), None);
            assert_eq!(decode_ack(&bytes[..ACK_V1_LEN]), None);
        }
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
                in_flight: pos,
                mark: 0
            })
        );
        v1[27] ^= 1;
        assert_eq!(decode_ack(&v1), None);
    }

    fn pos(segment: u64, offset: u64) -> SpoolPosition {
        SpoolPosition { segment, offset }
    }

    fn state(acked: u64, in_flight: u64, mark: u64) -> AckState {
        AckState {
            acked: pos(3, acked),
            in_flight: pos(3, in_flight),
            mark,
        }
    }

    #[test]
    fn a_v4_slot_round_trips_and_rejects_damage() {
        let s = state(100, 200, 1_795_000_000_000_000_000);
        let slot = encode_slot(9, s);
        assert_eq!(decode_slot(&slot), Some((9, s)));
        for i in 0..ACK_SLOT_LEN - 4 {
            let mut bad = slot;
            bad[i] ^= 1;
            assert_eq!(decode_slot(&bad), None, "flip at {i}");
        }
        assert_eq!(decode_slot(&slot[..40]), None);
        assert_eq!(decode_slot(&[0u8; ACK_SLOT_LEN]), None);
    }

    #[test]
    fn the_newest_valid_slot_is_the_state_and_a_torn_one_leaves_the_other() {
        let (old, new) = (state(100, 200, 0), state(200, 300, 7));
        let mut file = [0u8; ACK_V4_LEN];
        file[..ACK_SLOT_LEN].copy_from_slice(&encode_slot(4, old));
        file[ACK_SLOT_LEN..].copy_from_slice(&encode_slot(5, new));
        assert_eq!(decode_slots(&file), Some((1, 5, new)));
        // The newer slot cut short (its second half never reached the disk).
        let mut torn = file;
        torn[ACK_SLOT_LEN + 32..].fill(0);
        assert_eq!(decode_slots(&torn), Some((0, 4, old)));
        // Slots taken in turn: the newest may be the first.
        let mut turned = file;
        turned[..ACK_SLOT_LEN].copy_from_slice(&encode_slot(6, state(300, 300, 0)));
        assert_eq!(decode_slots(&turned), Some((0, 6, state(300, 300, 0))));
        assert_eq!(decode_slots(&[0u8; ACK_V4_LEN]), None);
        assert_eq!(decode_slots(&file[..ACK_SLOT_LEN]), None);
    }

    #[test]
    fn the_ack_file_is_written_in_place_in_turn_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ack, found) = AckFile::open(dir.path());
        assert_eq!(found, None);
        let path = dir.path().join(ACK_FILE);
        ack.write(state(1, 2, 0)).unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
        for i in 2..6 {
            ack.write(state(i, i + 1, i % 2)).unwrap();
            let bytes = fs::read(&path).unwrap();
            assert_eq!(bytes.len(), ACK_V4_LEN);
            assert_eq!(
                decode_slots(&bytes).map(|(_, _, s)| s),
                Some(state(i, i + 1, i % 2))
            );
            let (_, again) = AckFile::open(dir.path());
            assert_eq!(again, Some(state(i, i + 1, i % 2)));
        }
        // Written in place: the same file all along, and no temporary one left.
        let now = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
        assert_eq!(inode, now);
        assert!(!dir.path().join(ACK_TMP_FILE).exists());
        // Opened again, it carries on from the newest slot.
        let (mut ack, found) = AckFile::open(dir.path());
        assert_eq!(found, Some(state(5, 6, 1)));
        ack.write(state(6, 6, 0)).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(
            decode_slots(&bytes).map(|(_, _, s)| s),
            Some(state(6, 6, 0))
        );
        let older = decode_slot(&bytes[..ACK_SLOT_LEN]).or(decode_slot(&bytes[ACK_SLOT_LEN..]));
        assert!(older.is_some());
    }

    #[test]
    fn a_v3_ack_file_is_read_and_replaced_by_a_v4_one_at_the_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ACK_FILE);
        let marked = state(10, 20, 99);
        fs::write(&path, encode_ack(marked)).unwrap();
        let (mut ack, found) = AckFile::open(dir.path());
        assert_eq!(found, Some(marked));
        assert_eq!(
            fs::read(&path).unwrap().len(),
            ACK_V3_LEN,
            "unchanged until written"
        );
        ack.write(state(20, 30, 0)).unwrap();
        assert_eq!(fs::read(&path).unwrap().len(), ACK_V4_LEN);
        assert_eq!(AckFile::open(dir.path()).1, Some(state(20, 30, 0)));
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
