//! Fair shares of a full spool: who loses records when `max_bytes` is reached.
//!
//! Each append's commit says whose its records are (runs of [`Owner`]s), so
//! the index knows each owner's bytes per segment. When an append would take
//! the spool past `max_bytes`, the owner with the most bytes loses first: the
//! oldest sealed segment where it holds at least half of the owned bytes (else
//! the one where it holds the most) is deleted, after the unread records of
//! every other owner in it were carried forward: their frames copied, bytes
//! unchanged, to the end of the active segment, ended by one commit that
//! counts them, names their owners and names the segment it replaces, and
//! fsynced before the segment is deleted. A crash before that commit leaves a
//! torn tail (cut at recovery) and the segment whole; after it, recovery
//! deletes the replaced segment if it is still there. So a record is never
//! lost for another owner's bytes, and never read twice.
//!
//! Records the reader already read stay where they are (they are in the
//! sink's hands, as with a segment deleted whole); the reader and this writer
//! take the spool's `reading` lock so a record is either read from the old
//! segment or carried, never both. Carried records come after newer ones of
//! their stream (Loki takes entries out of order within its window).
//!
//! Costs: nothing per line (the owners are counted per append); a carry reads
//! one segment's frame headers and copies only other owners' unread records.
//! When no owner's records can give room (a damaged segment), the oldest
//! segments go whole, as before owners were kept ([`SpoolWriter::trim`]).

use super::*;

/// At most this many owners are shown in the per-owner metrics (the users,
/// file entries and senders of one machine; past it a new owner is counted
/// in the spool's totals only).
pub(super) const MAX_OWNERS_SHOWN: usize = 1024;

/// An append's records waiting for their commit, at most; a segment with more
/// between two commits (damaged, or very old) is not carried.
const MAX_PENDING: usize = 1 << 16;

/// Copies are made through a buffer of at most this size.
const CARRY_CHUNK: usize = 256 * 1024;

/// One owner's part of a spool, as `/metrics` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerCounts {
    /// Frame bytes of its records in the buffer (a gauge).
    pub bytes_buffered: u64,
    /// Its records dropped unshipped for space, and their frame bytes.
    pub records_dropped: u64,
    pub bytes_dropped: u64,
}

/// `owner`'s counts, made if there is room ([`MAX_OWNERS_SHOWN`]; an owner
/// with nothing buffered and nothing lost gives its place).
pub(super) fn owner_entry(
    m: &mut BTreeMap<Owner, OwnerCounts>,
    owner: Owner,
) -> Option<&mut OwnerCounts> {
    if !m.contains_key(&owner) && m.len() >= MAX_OWNERS_SHOWN {
        let idle = m
            .iter()
            .find(|(_, c)| **c == OwnerCounts::default())
            .map(|(o, _)| *o)?;
        m.remove(&idle);
    }
    Some(m.entry(owner).or_default())
}

/// `v * part / whole`, `v` when `part` covers `whole`.
pub(super) fn scale(v: u64, part: u64, whole: u64) -> u64 {
    if whole == 0 || part >= whole {
        return v;
    }
    u64::try_from(u128::from(v) * u128::from(part) / u128::from(whole)).unwrap_or(v)
}

/// The segment to take room from and whose records go there: the owner with
/// the most bytes that has any in a sealed segment not `spent`; of its
/// segments, the oldest where it holds at least half of the owned bytes, else
/// the one where it holds the most.
fn pick(index: &Index, active: u64, spent: &[u64]) -> Option<(u64, Owner)> {
    let mut owners: Vec<(Owner, u64)> = index.owners.iter().map(|(o, s)| (*o, s.bytes)).collect();
    owners.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (owner, _) in owners {
        let mut most: Option<(u64, u64)> = None;
        for (&id, shares) in index.shares.range(..active) {
            if spent.contains(&id) {
                continue;
            }
            let Some(mine) = shares.get(&owner).filter(|s| s.bytes > 0) else {
                continue;
            };
            let all: u64 = shares.values().map(|s| s.bytes).sum();
            if mine.bytes.saturating_mul(2) >= all {
                return Some((id, owner));
            }
            if most.is_none_or(|(_, b)| mine.bytes > b) {
                most = Some((id, mine.bytes));
            }
        }
        if let Some((id, _)) = most {
            return Some((id, owner));
        }
    }
    None
}

/// Frames of other owners being copied: a run of adjacent ones is copied at
/// once.
#[derive(Default)]
struct Copies {
    /// The run not copied yet: `[start, end)` in the old segment.
    start: u64,
    end: u64,
    /// Bytes written to the active segment so far.
    written: u64,
    /// Whose the copied records are, in order.
    runs: Vec<(Owner, Share)>,
}

impl<R: SpoolRecord> SpoolWriter<R> {
    /// Deletes records, the largest owner's oldest first (see the module doc),
    /// until `incoming` more bytes fit in `max_bytes` or no owner's records
    /// can give more.
    pub(super) fn make_room(
        &mut self,
        incoming: u64,
        dropped: &mut Dropped,
    ) -> Result<(), SpoolError> {
        let mut spent: Vec<u64> = Vec::new();
        loop {
            let pick = {
                let index = self.shared.index();
                if index.total_bytes + incoming <= self.settings.max_bytes {
                    return Ok(());
                }
                pick(&index, self.active, &spent)
            };
            let Some((id, owner)) = pick else {
                return Ok(());
            };
            if !self.carry_forward(id, owner, dropped)? {
                spent.push(id);
            }
        }
    }

    /// Deletes sealed segment `id` after carrying the unread records of every
    /// owner but `loser` forward; returns whether it did (not when the segment
    /// is gone or damaged: nothing is carried out of one).
    fn carry_forward(
        &mut self,
        id: u64,
        loser: Owner,
        dropped: &mut Dropped,
    ) -> Result<bool, SpoolError> {
        let shared = self.shared.clone();
        let _reading = shared.reading();
        let (meta, from) = {
            let mut index = shared.index();
            let Some(meta) = index.segments.get(&id).copied() else {
                return Ok(false);
            };
            let r = index.reader;
            let alone = index
                .shares
                .get(&id)
                .is_none_or(|m| m.keys().all(|o| *o == loser));
            if alone {
                // Nothing of anyone else's to carry: the segment goes whole,
                // unread (no need to read it to know whose).
                let mine = index
                    .shares
                    .get(&id)
                    .and_then(|m| m.get(&loser))
                    .copied()
                    .unwrap_or_default();
                let unread = match id.cmp(&r.segment) {
                    std::cmp::Ordering::Greater => meta.records,
                    std::cmp::Ordering::Equal => meta.records.saturating_sub(r.records),
                    std::cmp::Ordering::Less => 0,
                };
                let lost = Share {
                    records: scale(mine.records, unread, meta.records),
                    bytes: scale(mine.bytes, unread, meta.records),
                };
                index.remove_segment(id);
                index.update_gauges(&shared.counters);
                drop(index);
                shared.remove_segments(&[id]);
                self.count_loss(loser, lost, dropped);
                return Ok(true);
            }
            // Records before `from` were read: they stay the sink's.
            let from = match id.cmp(&r.segment) {
                std::cmp::Ordering::Less => meta.len,
                std::cmp::Ordering::Equal => r.offset.max(HEADER_LEN),
                std::cmp::Ordering::Greater => HEADER_LEN,
            };
            (meta, from)
        };
        let path = shared.segment_path(id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(SpoolError::io("open spool segment", &path, e)),
        };
        let walked = self.walk_and_copy(file, &path, meta.len, from, loser);
        if self.carry_buf.capacity() > RETAINED_BUFFER_BYTES {
            self.carry_buf = Vec::new();
        }
        let (copies, lost) = match walked {
            Ok(Some(v)) => v,
            Ok(None) => {
                // Undo the copies: nothing was committed.
                let _ = self.file.set_len(self.len);
                warn!(segment = %path.display(),
                    "cannot tell whose the records of a damaged spool segment are; it is not carried forward");
                return Ok(false);
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                return Err(e);
            }
        };
        let carried: u64 = copies.runs.iter().map(|(_, s)| s.records).sum();
        let mut written = copies.written;
        if carried > 0 {
            // The commit that makes the copies count and names the segment
            // they replace; durable before that segment is deleted.
            let mut commit = Vec::new();
            let shares = Shares {
                owners: copies
                    .runs
                    .iter()
                    .map(|(o, s)| (o.to_bits(), s.records))
                    .collect(),
                superseded: vec![id],
            };
            segment::encode_commit(
                self.records + carried,
                false,
                std::iter::empty(),
                &shares,
                &mut commit,
            );
            let result = self.file.write_all(&commit).map_err(|e| {
                SpoolError::io("write spool segment", &shared.segment_path(self.active), e)
            });
            if let Err(e) = result {
                let _ = self.file.set_len(self.len);
                self.needs_rotation = true;
                return Err(e);
            }
            written += commit.len() as u64;
            self.unsynced = true;
            if let Err(e) = self.sync() {
                // Not durable, so the segment stays: cut the copies off.
                let _ = self.file.set_len(self.len);
                self.needs_rotation = true;
                return Err(e);
            }
            self.len += written;
            self.records += carried;
            SpoolCounters::add(&shared.counters.bytes_carried, copies.written);
        }
        {
            let mut index = shared.index();
            if carried > 0 {
                index.total_bytes += written;
                index.segments.insert(
                    self.active,
                    SegmentMeta {
                        len: self.len,
                        records: self.records,
                    },
                );
                for &(owner, share) in &copies.runs {
                    index.add_share(self.active, owner, share);
                }
            }
            index.remove_segment(id);
            index.update_gauges(&shared.counters);
        }
        shared.remove_segments(&[id]);
        self.count_loss(loser, lost, dropped);
        Ok(true)
    }

    fn count_loss(&self, loser: Owner, lost: Share, dropped: &mut Dropped) {
        dropped.segments += 1;
        if lost.records > 0 {
            dropped.records += lost.records;
            dropped.bytes += lost.bytes;
            dropped.owner(loser);
            self.shared
                .counters
                .owner_dropped(loser, lost.records, lost.bytes);
        }
    }

    /// Walks segment `file` up to `len`, appending to the active segment (not
    /// committed) the records at or after `from` whose owner is not `loser`;
    /// returns the copies and what `loser` loses, or `None` when the segment is
    /// damaged (a frame or commit that does not check out).
    fn walk_and_copy(
        &mut self,
        file: File,
        path: &Path,
        len: u64,
        from: u64,
        loser: Owner,
    ) -> Result<Option<(Copies, Share)>, SpoolError> {
        use std::io::{Seek, SeekFrom};
        let io_err = |e| SpoolError::io("read spool segment", path, e);
        let mut r = BufReader::with_capacity(64 * 1024, file);
        r.seek(SeekFrom::Start(HEADER_LEN)).map_err(io_err)?;
        let mut offset = HEADER_LEN;
        let mut pending: Vec<(u64, u64)> = Vec::new();
        let mut payload = Vec::new();
        let mut copies = Copies::default();
        let mut lost = Share::default();
        while offset < len {
            match segment::step(&mut r, len - offset, &mut payload).map_err(io_err)? {
                segment::Step::Record { size } => {
                    if pending.len() >= MAX_PENDING {
                        return Ok(None);
                    }
                    pending.push((offset, size));
                    offset += size;
                }
                segment::Step::Commit { size, commit } => {
                    offset += size;
                    let mut frames = pending.drain(..);
                    let runs = commit
                        .shares
                        .owners
                        .iter()
                        .map(|&(o, n)| (Owner::from_bits(o), n))
                        .chain(std::iter::once((Owner::UNKNOWN, u64::MAX)));
                    for (owner, n) in runs {
                        let n = usize::try_from(n).unwrap_or(usize::MAX);
                        for (at, size) in frames.by_ref().take(n) {
                            if at < from {
                                continue;
                            }
                            if owner == loser {
                                lost.records += 1;
                                lost.bytes += size;
                                continue;
                            }
                            if at != copies.end {
                                self.copy_run(r.get_ref(), path, &mut copies)?;
                                copies.start = at;
                            }
                            copies.end = at + size;
                            match copies.runs.last_mut() {
                                Some((o, s)) if *o == owner => {
                                    s.records += 1;
                                    s.bytes += size;
                                }
                                _ => copies.runs.push((
                                    owner,
                                    Share {
                                        records: 1,
                                        bytes: size,
                                    },
                                )),
                            }
                        }
                    }
                }
                segment::Step::Damaged => return Ok(None),
            }
        }
        self.copy_run(r.get_ref(), path, &mut copies)?;
        Ok(Some((copies, lost)))
    }

    /// Copies `copies`' pending run from `from` (the old segment) to the end
    /// of the active segment.
    fn copy_run(
        &mut self,
        from: &File,
        path: &Path,
        copies: &mut Copies,
    ) -> Result<(), SpoolError> {
        use std::os::unix::fs::FileExt;
        let mut at = copies.start;
        while at < copies.end {
            let n = usize::try_from(copies.end - at)
                .unwrap_or(CARRY_CHUNK)
                .min(CARRY_CHUNK);
            self.carry_buf.resize(n, 0);
            from.read_exact_at(&mut self.carry_buf[..n], at)
                .map_err(|e| SpoolError::io("read spool segment", path, e))?;
            if let Err(e) = self.file.write_all(&self.carry_buf[..n]) {
                let active = self.shared.segment_path(self.active);
                let _ = self.file.set_len(self.len);
                self.needs_rotation = true;
                return Err(SpoolError::io("write spool segment", &active, e));
            }
            copies.written += n as u64;
            at += n as u64;
        }
        copies.start = copies.end;
        Ok(())
    }
}
