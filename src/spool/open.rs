//! Opening a spool: recovering every segment frame by frame, cutting torn
//! tails, and finding where the reader resumes.

use super::*;

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
        // The buffer holds every user's lines: its folder is 0700 and its
        // files 0600, whatever the umask (an older version's are made so too).
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
                .map_err(|e| SpoolError::io("create spool directory", &dir, e))?;
        }
        let counters = Arc::new(SpoolCounters::default());

        let (ack_file, ack_state) = AckFile::open(&dir);
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
        let mut shares: BTreeMap<u64, BTreeMap<Owner, Share>> = BTreeMap::new();
        let mut superseded = Vec::new();
        let mut reader = None;
        let mut state = ResumeState::new();
        // Files to delete once the new segment holds the resume points: an empty
        // segment may hold the only copy of them.
        let mut doomed = Vec::new();
        for id in ids {
            let path = dir.join(segment::file_name(id));
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
            }
            if acked.is_some_and(|a| id < a.segment) {
                // Acknowledged before the last stop; its deletion did not happen.
                // (A later segment starts with a snapshot of its resume points.)
                doomed.push(path);
                continue;
            }
            let ack_offset = acked.filter(|a| a.segment == id).map(|a| a.offset);
            let scan = segment::scan_segment(&path, ack_offset, &mut state)
                .map_err(|e| SpoolError::io("read spool segment", &path, e))?;
            superseded.extend_from_slice(&scan.superseded);
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
            shares.insert(
                id,
                scan.owners
                    .iter()
                    .map(|(&o, &(records, bytes))| (Owner::from_bits(o), Share { records, bytes }))
                    .collect(),
            );
        }
        // A segment whose unread records a later commit carried forward was
        // being deleted when the agent stopped: its records are read from the
        // copies only.
        for id in superseded {
            if segments.remove(&id).is_some() {
                shares.remove(&id);
                warn!(segment = %dir.join(segment::file_name(id)).display(),
                    "deleting a spool segment whose records were carried forward before a stop");
                doomed.push(dir.join(segment::file_name(id)));
                if reader.is_some_and(|r: ReaderMark| r.segment == id) {
                    reader = None;
                }
            }
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
        let mut owners: BTreeMap<Owner, Share> = BTreeMap::new();
        for (owner, share) in shares.values().flatten() {
            let t = owners.entry(*owner).or_default();
            t.records += share.records;
            t.bytes += share.bytes;
        }
        let index = Index {
            segments,
            active,
            total_bytes,
            reader,
            acked: acked.unwrap_or_default(),
            shares,
            owners,
        };
        index.update_gauges(&counters);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            index: Mutex::new(index),
            reading: Mutex::new(()),
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
            carry_buf: Vec::new(),
            encode_cache: R::Cache::default(),
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
            ack_file,
            in_flight_at_open: ack_state
                .map(|a| a.in_flight)
                .filter(|&end| end > acked.unwrap_or_default()),
            mark: ack_state
                .filter(|a| a.in_flight > acked.unwrap_or_default())
                .map_or(0, |a| a.mark),
            payload: Vec::new(),
            cache: R::Cache::default(),
        };
        Ok((writer, reader))
    }
}

pub(super) fn remove_file_logged(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %e, "cannot delete spool file");
        }
    }
}
