//! Where a file that appeared is read from: its checkpoint, `start_at`, or, for a
//! copy of a followed or just truncated file (`copytruncate`), where its original
//! was read up to; and the truncations noted for telling such copies.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::StartAt;
use crate::record::{Owner, SourceBatch, SourceInfo};

use super::checkpoint::Known;
use super::fingerprint::{FileId, Fingerprint};
use super::open::Opened;
use super::reader::ExecRuns;
use super::reader::{FileState, OpenFile, Tailed};
use super::Tailer;

/// A file appearing this long after another was truncated may be its copy.
pub(super) const COPY_WINDOW: Duration = Duration::from_secs(60);
/// How long a file whose copy appeared waits for its truncation before reading on.
const COPY_PAUSE: Duration = Duration::from_secs(5);

/// Whether a file that appeared is a copy of another (see [`Tailer::copy_of`]).
#[derive(Clone, Copy, Debug)]
pub(super) enum Copy {
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

impl Tailer {
    /// Starts following a file; where from, the checkpoint store decides, else
    /// `start_at` (at startup) or the file's start (a file that appeared later).
    pub(super) fn open(&mut self, ei: usize, path: PathBuf, opened: Opened, startup: bool) {
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
        // The file was truncated since its checkpoint (or changed under it):
        // what it held past the checkpoint may be in a copy beside it.
        let cut = match known {
            Known::Resume { offset } if offset > size => {
                self.store.fingerprint(id).map(|fp| (fp, offset))
            }
            Known::Changed { was, offset } => Some((was, offset)),
            _ => None,
        };
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
                    // Its entry was tailing before a reload: the file came
                    // while the pipelines restarted, or was not there before.
                    Known::New if startup && entry.continued => (
                        0,
                        "the start: a new file of an entry tailed before the reload",
                    ),
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
        let owner = {
            use std::os::unix::fs::MetadataExt;
            meta.uid()
        };
        let seq = self.next_seq;
        let mut marker = self.follow(ei, path, file, id, fingerprint, offset, why);
        if let Some((was, from)) = cut {
            // In the same batch as the file's new start: the spool never holds
            // that start without the copy's.
            if let Some(copy) = self.read_copy(seq, was, from, owner) {
                marker.ack = marker.ack.and(copy.ack);
            }
        }
        self.out.push_back(marker);
    }

    /// Starts reading the file `id`, open as `file` at `path`, from `offset`
    /// (`why` says why there, in the log) for the entry `ei`; returns the
    /// batch that tells the spool where it resumes, for the caller to hand on.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn follow(
        &mut self,
        ei: usize,
        path: PathBuf,
        file: std::fs::File,
        id: FileId,
        fingerprint: Fingerprint,
        offset: u64,
        why: &str,
    ) -> SourceBatch {
        let entry = &self.entries[ei];
        // The file's owner shares the buffer with the entry's other files'
        // owners as a separate owner (see `crate::spool`).
        let uid = {
            use std::os::unix::fs::MetadataExt;
            file.metadata().map_or(0, |m| m.uid())
        };
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
            owner: Owner::file(ei, uid),
        });
        let seq = self.next_seq;
        let exec_runs = self.known_runs.clone().and_then(|known| {
            use std::os::unix::fs::MetadataExt;
            let owner = file.metadata().ok()?.uid();
            Some(ExecRuns { known, owner })
        });
        let t = Tailed::open(OpenFile {
            id,
            entry: ei,
            path: path.clone(),
            file,
            exec_runs,
            fingerprint,
            offset,
            source,
            joiner: entry.joiner.clone(),
            limits: entry.limits,
        });
        tracing::info!("tailing {} from byte {offset} ({why})", path.display());
        self.store.put(id, &path, t.fingerprint, offset);
        let marker = t.resume_marker();
        self.next_seq += 1;
        self.by_id.insert(id, seq);
        self.files.insert(seq, t);
        self.counters.files_open.fetch_add(1, Ordering::Relaxed);
        marker
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
    pub(super) fn note_truncation(
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
}
