//! The writer half: appends batches with their commit, rolls and trims
//! segments, fsyncs by policy.

use super::*;

/// Creates segment `id`: its header, then (when there are any) a snapshot of the
/// resume points, fsynced, so that older segments may go. Returns the file and
/// its length.
pub(super) fn create_segment(
    dir: &Path,
    id: u64,
    state: &ResumeState,
) -> Result<(File, u64), SpoolError> {
    let path = dir.join(segment::file_name(id));
    // 0600 whatever the umask: the buffer holds other users' lines. Never
    // through a symlink (create_new already refuses an existing name).
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
    }
    .map_err(|e| SpoolError::io("create spool segment", &path, e))?;
    let mut head = segment::header().to_vec();
    if !state.is_empty() {
        let points = state
            .iter()
            .map(|(k, v)| (k.as_slice(), Some(v.as_slice())));
        segment::encode_commit(0, true, points, &Shares::default(), &mut head);
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
pub(super) fn rewrite_header(path: &Path) -> Result<(), SpoolError> {
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
    pub(super) shared: Arc<Shared>,
    pub(super) settings: SpoolSettings,
    pub(super) segment_bytes: u64,
    pub(super) file: File,
    pub(super) active: u64,
    /// Bytes of whole frames in the active segment, header included.
    pub(super) len: u64,
    /// `len` of the active segment before its first append (header and snapshot).
    pub(super) base_len: u64,
    pub(super) records: u64,
    /// Every source's resume point as the appends so far stored them.
    pub(super) state: ResumeState,
    pub(super) unsynced: bool,
    pub(super) last_sync: Instant,
    /// Encoded frames of the batch being appended; reused between batches.
    pub(super) buf: Vec<u8>,
    /// A write failed in the active segment: start a new segment before writing again.
    pub(super) needs_rotation: bool,
    /// Scratch space for carrying records forward ([`share`]); released after use.
    pub(super) carry_buf: Vec<u8>,
    /// What the last record encoded (its label set), for the next one.
    pub(super) encode_cache: R::Cache,
    pub(super) _record: PhantomData<fn(&R)>,
}

/// What one append deleted to stay under `max_bytes`.
#[derive(Default)]
pub(super) struct Dropped {
    pub(super) segments: u64,
    pub(super) records: u64,
    pub(super) bytes: u64,
    /// Whose records were dropped (the largest first).
    pub(super) owners: Vec<Owner>,
}

impl Dropped {
    pub(super) fn owner(&mut self, owner: Owner) {
        if !self.owners.contains(&owner) {
            self.owners.push(owner);
        }
    }
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
        self.append_owned(records, resume, &[])
    }

    /// As [`SpoolWriter::append_with`]; `owners` says whose the records are,
    /// in order, as runs of (owner, how many); records past the runs are
    /// [`Owner::UNKNOWN`]'s. Stored in the commit: when the spool is full, the
    /// owner with the most bytes in it loses its oldest records first.
    pub fn append_owned(
        &mut self,
        records: &[R],
        resume: &[ResumePoint],
        owners: &[(Owner, usize)],
    ) -> Result<(), SpoolError> {
        if records.is_empty() && resume.is_empty() {
            return Ok(());
        }
        let mut dropped = Dropped::default();
        let result = self.append_inner(records, resume, owners, &mut dropped);
        if dropped.segments > 0 || dropped.records > 0 {
            let owners: Vec<String> = dropped.owners.iter().map(Owner::to_string).collect();
            warn!(dir = %self.shared.dir.display(), records = dropped.records, bytes = dropped.bytes,
                segments = dropped.segments, owners = %owners.join(","),
                "spool reached its max_bytes; dropped the oldest unshipped records of its largest owner");
        }
        self.shared.appended.notify_one();
        result
    }

    fn append_inner(
        &mut self,
        records: &[R],
        resume: &[ResumePoint],
        owners: &[(Owner, usize)],
        dropped: &mut Dropped,
    ) -> Result<(), SpoolError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut stored = 0u64;
        // Whose each stored record is, as runs (the commit's and the index's).
        let mut runs: Vec<(Owner, Share)> = Vec::with_capacity(owners.len().max(1));
        let mut run = 0usize;
        let mut left = owners.first().map_or(usize::MAX, |r| r.1);
        for record in records {
            while left == 0 {
                run += 1;
                left = owners.get(run).map_or(usize::MAX, |r| r.1);
            }
            left = left.saturating_sub(1);
            let owner = owners.get(run).map_or(Owner::UNKNOWN, |r| r.0);
            let start = buf.len();
            let frame_len =
                segment::encode_frame_cached(record, &mut buf, &mut self.encode_cache) as u64;
            if start == 0 {
                // Room for the group at the first frame's size, within the buffer
                // kept between appends: a buffer released at a pause is then grown
                // once, not doubled (and copied) a dozen times up to a group's size.
                // An eighth more and 1 KiB spare for longer lines and the commit,
                // which would otherwise copy the whole group once more at its end.
                let estimate = (frame_len as usize)
                    .saturating_mul(records.len())
                    .saturating_add((frame_len as usize).saturating_mul(records.len()) / 8)
                    .saturating_add(1024);
                buf.reserve(
                    estimate
                        .min(RETAINED_BUFFER_BYTES)
                        .saturating_sub(buf.len()),
                );
            }
            if frame_len > FRAME_HEADER_LEN + u64::from(segment::MAX_PAYLOAD) {
                buf.truncate(start);
                SpoolCounters::add(&self.shared.counters.records_oversize, 1);
                warn!(bytes = frame_len, "record too large for the spool; dropped");
                continue;
            }
            stored += 1;
            match runs.last_mut() {
                Some((o, share)) if *o == owner => {
                    share.records += 1;
                    share.bytes += frame_len;
                }
                _ => runs.push((
                    owner,
                    Share {
                        records: 1,
                        bytes: frame_len,
                    },
                )),
            }
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
            // Room by the owners' shares first, for an upper bound of what
            // the append writes (two varints of at most 10 bytes a resume
            // point and a run), so the oldest segments need not go whole in
            // `write_chunk` for the last few bytes.
            let resume_bytes: usize = resume
                .iter()
                .map(|p| p.key.len() + p.state.as_ref().map_or(0, Vec::len) + 20)
                .sum();
            let incoming = (buf.len() + resume_bytes + runs.len() * 20) as u64 + 64;
            result = self.make_room(incoming, dropped);
        }
        if result.is_ok() {
            // The commit ends the append: recovery keeps nothing of an append
            // without it, and takes its resume points with its records.
            let points = resume
                .iter()
                .map(|p| (p.key.as_slice(), p.state.as_deref()));
            let shares = Shares {
                owners: runs
                    .iter()
                    .map(|(o, share)| (o.to_bits(), share.records))
                    .collect(),
                superseded: Vec::new(),
            };
            segment::encode_commit(self.records + stored, false, points, &shares, &mut buf);
            result = self.write_chunk(&buf, stored, &runs, dropped);
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
        runs: &[(Owner, Share)],
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
        for &(owner, share) in runs {
            index.add_share(self.active, owner, share);
        }
        index.update_gauges(c);
        Ok(())
    }

    /// Deletes the oldest sealed segments until `incoming` more bytes fit in
    /// `max_bytes`: the last resort, once the owners' shares gave what they
    /// could ([`SpoolWriter::make_room`]).
    fn trim(&mut self, incoming: u64, dropped: &mut Dropped) {
        let mut doomed = Vec::new();
        {
            let mut index = self.shared.index();
            while index.total_bytes + incoming > self.settings.max_bytes {
                let Some(&id) = index.segments.keys().next() else {
                    break;
                };
                if id == self.active {
                    break;
                }
                // What the reader has not read yet is lost; what it has read is in
                // the sink's hands already. In the reader's segment the loss is
                // spread over the owners as their shares are.
                let r = index.reader;
                let shares = index.shares.get(&id).cloned().unwrap_or_default();
                let Some(meta) = index.remove_segment(id) else {
                    break;
                };
                let unread = match id.cmp(&r.segment) {
                    std::cmp::Ordering::Greater => meta.records,
                    std::cmp::Ordering::Equal => meta.records.saturating_sub(r.records),
                    std::cmp::Ordering::Less => 0,
                };
                dropped.segments += 1;
                for (owner, share) in shares {
                    let records = scale(share.records, unread, meta.records);
                    let bytes = scale(share.bytes, unread, meta.records);
                    if records > 0 {
                        dropped.records += records;
                        dropped.bytes += bytes;
                        dropped.owner(owner);
                        self.shared.counters.owner_dropped(owner, records, bytes);
                    }
                }
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
                    index.remove_segment(sealed);
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
        self.carry_buf = Vec::new();
    }

    /// The bytes its scratch buffers hold (what [`Self::release_memory`] gives back).
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity() + self.carry_buf.capacity()
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
