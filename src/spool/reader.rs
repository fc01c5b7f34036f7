//! The reader half: reads records in append order, acknowledges, and records
//! the push in flight.

use super::*;

/// The reading half: one consumer reads records in append order and acknowledges
/// them once shipped. Its calls block on file I/O, except [`SpoolReader::wait`].
pub struct SpoolReader<R: SpoolRecord = LogRecord> {
    pub(super) shared: Arc<Shared>,
    /// The next record to read.
    pub(super) cursor: SpoolPosition,
    pub(super) records_in_segment: u64,
    /// The cursor's segment, open at `cursor.offset`.
    pub(super) file: Option<BufReader<File>>,
    pub(super) acked: SpoolPosition,
    /// The end recorded by the last [`SpoolReader::begin_push`] (or found at open).
    pub(super) in_flight: SpoolPosition,
    /// The in-flight end found at open, when it was beyond the acknowledged position.
    pub(super) in_flight_at_open: Option<SpoolPosition>,
    /// The sink's mark on the push in flight, as the `ack` file holds it (0: none).
    pub(super) mark: u64,
    /// `acked` moved past what the `ack` file says ([`SpoolReader::ack_later`]).
    pub(super) ack_unsaved: bool,
    /// Where acknowledgements and the push in flight are recorded.
    pub(super) ack_file: AckFile,
    pub(super) payload: Vec<u8>,
    pub(super) cache: R::Cache,
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
        // The writer does not carry records forward out of a segment while
        // this reads it (see `share.rs`).
        let _reading = shared.reading();
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
            if records.is_empty() {
                // Room for what is left of the segment at 128 bytes a frame (a
                // line of a few dozen bytes with its labels), up to the batch's
                // bound: the batch is not grown, copying its records, as it fills.
                let left = usize::try_from(limit - self.cursor.offset).unwrap_or(usize::MAX);
                records.reserve((left / 128).min(max_records));
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
        let Some(meta) = index.remove_segment(id) else {
            return true;
        };
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
    /// covers and persists the position (in the `ack` file's older slot, synced). A position at or before the last acknowledged one is ignored.
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
                if index.remove_segment(id).is_some() {
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
        let in_flight = self.in_flight.max(self.acked);
        let state = AckState {
            acked: self.acked,
            in_flight,
            // Nothing in flight any more: the mark went with it.
            mark: if in_flight > self.acked { self.mark } else { 0 },
        };
        self.ack_file.write(state)?;
        self.in_flight = state.in_flight;
        self.mark = state.mark;
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
        // A mark stays while the push it was put on is not acknowledged (that
        // push read again after a restart may end a little further: the start
        // of the next segment); a push after it starts without one.
        let mark = if self.acked >= self.in_flight {
            0
        } else {
            self.mark
        };
        let state = AckState {
            acked: self.acked,
            in_flight: end,
            mark,
        };
        self.ack_file.write(state)?;
        self.in_flight = end;
        self.mark = mark;
        self.ack_unsaved = false;
        Ok(())
    }

    /// Records durably, with the push in flight, a number its sink needs should
    /// the agent stop before the push is acknowledged (the Loki sink: the
    /// earliest time at which it sent records of it again in another form). Of
    /// two marks on one push the smaller is kept; a push begun after it was
    /// acknowledged starts without one.
    /// 0, or a mark not smaller than the one recorded, writes nothing.
    pub fn mark_in_flight(&mut self, mark: u64) -> Result<(), SpoolError> {
        if mark == 0 || (self.mark != 0 && mark >= self.mark) {
            return Ok(());
        }
        let state = AckState {
            acked: self.acked,
            in_flight: self.in_flight.max(self.acked),
            mark,
        };
        self.ack_file.write(state)?;
        self.in_flight = state.in_flight;
        self.mark = mark;
        self.ack_unsaved = false;
        Ok(())
    }

    /// The mark on the push in flight ([`SpoolReader::mark_in_flight`]), found
    /// at open or recorded since; `None` without one.
    pub fn in_flight_mark(&self) -> Option<u64> {
        (self.mark != 0).then_some(self.mark)
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
