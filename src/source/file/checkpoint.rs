//! Checkpoints: how far each file has been handed on, persisted in
//! `<state_dir>/positions.json`, and the resume points the spool stores for them.
//!
//! One source of truth per start: when the tailer's lines go to a spool that
//! holds the point of any file, the spool's points (its commit frames, stored in
//! the same fsync as the lines) are the checkpoints, and `positions.json` only
//! adds when each file was last seen; without a spool (the dry run, the tailer
//! alone), or with one that holds no file's point yet (new, or left by an agent
//! that wrote none), `positions.json` is, and the tailer hands its points to
//! that spool in one batch at start ([`CheckpointStore::settle_start`]).
//!
//! Promises: an offset advances only when the batch that ends there is acknowledged
//! downstream, and only over an unbroken run of acknowledged batches (a dropped ack
//! holds the checkpoint back, so those lines are read again after a restart); the
//! file is written atomically (temp file, fsync, rename, fsync of the directory), so
//! a crash leaves the old or the new version, never a mix; a corrupt file is
//! reported, kept aside as `positions.json.corrupt`, and rebuilt, never fatal.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::fingerprint::{FileId, Fingerprint};
use crate::record::ResumePoint;
use crate::spool::ResumeState;

mod commits;
pub(crate) use commits::{lock, AckTicket, Commits, SharedCommits};

/// The checkpoint file's name under `state_dir`.
pub const POSITIONS_FILE: &str = "positions.json";

/// A checkpoint file larger than this is treated as corrupt (kept aside, rebuilt)
/// without being read: a few hundred bytes per file, so this is tens of thousands
/// of files, and a sparse or runaway file cannot make the agent load gigabytes.
pub(crate) const MAX_POSITIONS_BYTES: u64 = 16 << 20;

/// The format version written; a file of another version is set aside and rebuilt.
const VERSION: u32 = 1;

/// Entries of files not seen for this long are forgotten (the file is gone or no
/// longer matched); until then a file that comes back resumes where it stopped.
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A live file's entry is rewritten at least this often, so that `seen` stays
/// within the retention period.
const REFRESH: Duration = Duration::from_secs(3600);

/// One file's checkpoint as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// Where the file was last seen (for the path fallback, and for people).
    pub path: PathBuf,
    pub dev: u64,
    pub inode: u64,
    pub fingerprint: Fingerprint,
    /// Bytes before this offset have been handed on and acknowledged.
    pub offset: u64,
    /// When the file was last seen, in seconds since the Unix epoch.
    pub seen: u64,
}

impl Checkpoint {
    fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            inode: self.inode,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PositionsFile {
    version: u32,
    files: Vec<Checkpoint>,
}

/// What the store knows about a file being opened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Known {
    /// Seen before with the same content at its start: resume here.
    Resume { offset: u64 },
    /// The same device and inode, but the first bytes differ: truncated while the
    /// agent was away, or the inode was reused. Read it from 0. What it was
    /// (its fingerprint and checkpoint) tells a copy of it (`copytruncate`).
    Changed { was: Fingerprint, offset: u64 },
    /// A new file at a path that was followed before: the old one was rotated
    /// while the agent was away, so all of this one was written since. Read it from
    /// 0, whatever `start_at` says.
    Replaced,
    /// Never seen.
    New,
}

/// The version byte of a file's resume point as the spool stores it.
const RESUME_VERSION: u8 = 1;

/// The spool's key for a file's resume point: device and inode.
fn resume_key(id: FileId) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&id.dev.to_le_bytes());
    key.extend_from_slice(&id.inode.to_le_bytes());
    key
}

/// A file's resume point, for the spool to store with the batch that ends at
/// `offset`: the version byte, the offset, the fingerprint (length, hash), then
/// the path's bytes.
pub(crate) fn resume_point(id: FileId, path: &Path, fp: Fingerprint, offset: u64) -> ResumePoint {
    use std::os::unix::ffi::OsStrExt;
    let path = path.as_os_str().as_bytes();
    let mut state = Vec::with_capacity(21 + path.len());
    state.push(RESUME_VERSION);
    state.extend_from_slice(&offset.to_le_bytes());
    state.extend_from_slice(&fp.len.to_le_bytes());
    state.extend_from_slice(&fp.hash.to_le_bytes());
    state.extend_from_slice(path);
    ResumePoint {
        key: resume_key(id),
        state: Some(state),
    }
}

/// Tells the spool to forget a file's resume point (the file's checkpoint is gone).
pub(crate) fn forget_point(id: FileId) -> ResumePoint {
    ResumePoint {
        key: resume_key(id),
        state: None,
    }
}

/// Decodes a resume point written by [`resume_point`]; `None` for another format.
fn decode_resume(key: &[u8], state: &[u8]) -> Option<(FileId, PathBuf, Fingerprint, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let u64_at =
        |b: &[u8], at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
    if key.len() != 16 || state.len() < 21 || state[0] != RESUME_VERSION {
        return None;
    }
    let id = FileId {
        dev: u64_at(key, 0)?,
        inode: u64_at(key, 8)?,
    };
    let offset = u64_at(state, 1)?;
    let fp = Fingerprint {
        len: u32::from_le_bytes(state.get(9..13)?.try_into().ok()?),
        hash: u64_at(state, 13)?,
    };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(&state[21..]));
    Some((id, path, fp, offset))
}

/// Whether the spool's resume state holds the point of any file (rather than
/// none, or only other sources' points).
pub(crate) fn holds_file_points(state: &ResumeState) -> bool {
    state
        .iter()
        .any(|(key, value)| decode_resume(key, value).is_some())
}

/// The checkpoints of every file known, live or not.
#[derive(Debug)]
pub(crate) struct CheckpointStore {
    path: PathBuf,
    entries: HashMap<FileId, Checkpoint>,
    /// The paths followed when the agent last stopped (as loaded, and as the
    /// spool's resume points say): a new file at one of them replaced the file
    /// followed there, however the files are met at startup.
    followed_paths: HashSet<PathBuf>,
}

/// Why the positions file could not be read; the store starts empty either way.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("cannot read checkpoint file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("checkpoint file {path} is corrupt ({reason}); kept as {kept} and rebuilt")]
    Corrupt {
        path: PathBuf,
        reason: String,
        kept: PathBuf,
    },
}

impl CheckpointStore {
    /// Loads `<state_dir>/positions.json`. A missing file is an empty store; an
    /// unreadable or corrupt one is an empty store plus the reason, for a warning.
    pub(crate) fn load(state_dir: &Path) -> (Self, Option<LoadError>) {
        let path = state_dir.join(POSITIONS_FILE);
        let mut store = Self {
            path: path.clone(),
            entries: HashMap::new(),
            followed_paths: HashSet::new(),
        };
        let parsed = match crate::state_file::read_capped(&path, MAX_POSITIONS_BYTES) {
            Ok(crate::state_file::Capped::Bytes(bytes)) => {
                serde_json::from_slice::<PositionsFile>(&bytes).map_err(|e| e.to_string())
            }
            Ok(crate::state_file::Capped::TooLarge(size)) => Err(format!(
                "{size} bytes, more than the {MAX_POSITIONS_BYTES} a checkpoint file may hold"
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (store, None),
            // Not a regular file either (a FIFO, a folder): unreadable, left in
            // place; saving fails until it is gone, and says so.
            Err(source) => return (store, Some(LoadError::Read { path, source })),
        };
        let reason = match parsed {
            Ok(f) if f.version == VERSION => {
                for c in f.files {
                    store.followed_paths.insert(c.path.clone());
                    store.entries.insert(c.id(), c);
                }
                return (store, None);
            }
            Ok(f) => format!("unknown version {}", f.version),
            Err(e) => e,
        };
        let kept = state_dir.join(format!("{POSITIONS_FILE}.corrupt"));
        // Best effort: if even the rename fails, the next save overwrites the file.
        let _ = fs::rename(&path, &kept);
        (store, Some(LoadError::Corrupt { path, reason, kept }))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Settles where files resume at start, from the spool's resume points
    /// (`None`: no spool, `positions.json` alone): see the module doc. Returns
    /// the points to hand to a spool that holds no file's point yet (empty
    /// otherwise), for one batch without lines.
    pub(crate) fn settle_start(&mut self, spool: Option<&ResumeState>) -> Vec<ResumePoint> {
        let Some(state) = spool else {
            return Vec::new();
        };
        if holds_file_points(state) {
            let moved = self.apply_resume(state);
            if moved > 0 {
                tracing::info!(
                    "{moved} file(s) resume where the buffer's last commit left them, past {}: \
                     lines buffered before a crash are not read again",
                    self.path.display()
                );
            }
            return Vec::new();
        }
        let points = self.points();
        if !points.is_empty() {
            tracing::info!(
                "the buffer holds no file's resume point: {} file(s) resume where {} says, \
                 and the buffer takes their points",
                points.len(),
                self.path.display()
            );
        }
        points
    }

    /// Makes the spool's resume points the checkpoints, when it holds any file's:
    /// they were stored in the same fsync as the lines, and `positions.json` is
    /// written after it (about once a second), so a crash leaves it behind them,
    /// never ahead. An entry the spool holds no point for is dropped (the spool
    /// was told to forget it); `positions.json` only adds when each file was last
    /// seen, which the spool does not keep. A spool that holds no file's point
    /// changes nothing: `positions.json` stands, and is handed to it
    /// ([`CheckpointStore::points`]). Returns how many checkpoints moved.
    pub(crate) fn apply_resume(&mut self, state: &ResumeState) -> usize {
        let points: Vec<_> = state
            .iter()
            .filter_map(|(key, value)| decode_resume(key, value))
            .collect();
        if points.is_empty() {
            return 0;
        }
        let mut was = std::mem::take(&mut self.entries);
        self.followed_paths.clear();
        let mut moved = 0;
        for (id, path, fingerprint, offset) in points {
            self.followed_paths.insert(path.clone());
            let seen = match was.remove(&id) {
                Some(c) if c.offset == offset && c.fingerprint == fingerprint => c.seen,
                // When last seen stays as it was, so the entry is still pruned
                // in time.
                Some(c) => {
                    moved += 1;
                    c.seen
                }
                None => {
                    moved += 1;
                    unix_secs(SystemTime::now())
                }
            };
            self.entries.insert(
                id,
                Checkpoint {
                    path,
                    dev: id.dev,
                    inode: id.inode,
                    fingerprint,
                    offset,
                    seen,
                },
            );
        }
        moved
    }

    /// The resume point of every checkpoint kept: what a spool that holds none
    /// is handed at start, in one batch (one commit), so that from then on it
    /// holds them all.
    pub(crate) fn points(&self) -> Vec<ResumePoint> {
        self.entries
            .values()
            .map(|c| resume_point(c.id(), &c.path, c.fingerprint, c.offset))
            .collect()
    }

    /// What is known of the file `id`, now open as `file` under `path`. Matches by
    /// device + inode confirmed by the fingerprint; failing that, by the same path
    /// and fingerprint on another device (device numbers of virtiofs, 9p and
    /// overlay mounts can change across a reboot). A path match is re-keyed to `id`.
    pub(crate) fn lookup(&mut self, id: FileId, path: &Path, file: &File) -> Known {
        if let Some(c) = self.entries.get(&id) {
            return match c.fingerprint.matches(file) {
                Ok(true) => Known::Resume { offset: c.offset },
                _ => Known::Changed {
                    was: c.fingerprint,
                    offset: c.offset,
                },
            };
        }
        // Not for another inode on the same device: that is a new file at the old
        // path (rotation), and one that starts like the old one must not inherit
        // its offset.
        let moved = self.entries.iter().find_map(|(k, c)| {
            (c.path == path
                && (c.dev != id.dev || c.inode == id.inode)
                && c.fingerprint.len > 0
                && c.fingerprint.matches(file).ok()?)
            .then_some(*k)
        });
        match moved.and_then(|k| self.entries.remove(&k)) {
            Some(mut c) => {
                let offset = c.offset;
                c.dev = id.dev;
                c.inode = id.inode;
                self.entries.insert(id, c);
                Known::Resume { offset }
            }
            None if self.followed_paths.contains(path)
                || self.entries.values().any(|c| c.path == path) =>
            {
                Known::Replaced
            }
            None => Known::New,
        }
    }

    /// Records a file's current state if it changed (or was last recorded long
    /// ago, to keep it from being pruned); returns whether it did.
    pub(crate) fn update(
        &mut self,
        id: FileId,
        path: &Path,
        fingerprint: Fingerprint,
        offset: u64,
    ) -> bool {
        let fresh = unix_secs(SystemTime::now()).saturating_sub(REFRESH.as_secs());
        match self.entries.get(&id) {
            Some(c)
                if c.offset == offset
                    && c.fingerprint == fingerprint
                    && c.path == path
                    && c.seen >= fresh =>
            {
                false
            }
            _ => {
                self.put(id, path, fingerprint, offset);
                true
            }
        }
    }

    /// Records a file's current state.
    pub(crate) fn put(&mut self, id: FileId, path: &Path, fingerprint: Fingerprint, offset: u64) {
        self.entries.insert(
            id,
            Checkpoint {
                path: path.to_path_buf(),
                dev: id.dev,
                inode: id.inode,
                fingerprint,
                offset,
                seen: unix_secs(SystemTime::now()),
            },
        );
    }

    /// Whether a checkpoint of the file `id` is kept.
    pub(crate) fn knows(&self, id: FileId) -> bool {
        self.entries.contains_key(&id)
    }

    /// The fingerprint the checkpoint of `id` holds: the bytes the agent knew
    /// the file to start with.
    pub(crate) fn fingerprint(&self, id: FileId) -> Option<Fingerprint> {
        self.entries.get(&id).map(|c| c.fingerprint)
    }

    /// Where the file `id`, open as `file`, resumes: its checkpoint's offset,
    /// when it has one and still starts with the bytes it was checkpointed with.
    /// Unlike [`CheckpointStore::lookup`], changes nothing.
    pub(crate) fn resume_at(&self, id: FileId, file: &File) -> Option<u64> {
        let c = self.entries.get(&id)?;
        (c.fingerprint.len > 0 && c.fingerprint.matches(file).ok()?).then_some(c.offset)
    }

    /// The paths of every checkpoint kept.
    pub(crate) fn paths(&self) -> impl Iterator<Item = &Path> {
        self.entries.values().map(|c| c.path.as_path())
    }

    pub(crate) fn remove(&mut self, id: FileId) {
        self.entries.remove(&id);
    }

    /// Forgets entries of files not seen within the retention period; returns
    /// which.
    pub(crate) fn prune(&mut self, now: SystemTime) -> Vec<FileId> {
        let cutoff = unix_secs(now).saturating_sub(RETENTION.as_secs());
        let mut gone = Vec::new();
        self.entries.retain(|id, c| {
            let keep = c.seen >= cutoff;
            if !keep {
                gone.push(*id);
            }
            keep
        });
        gone
    }

    #[cfg(test)]
    pub(crate) fn get(&self, id: FileId) -> Option<&Checkpoint> {
        self.entries.get(&id)
    }

    /// Writes the positions file atomically: temp file, fsync, rename, fsync dir.
    pub(crate) fn save(&self) -> io::Result<()> {
        let mut files: Vec<Checkpoint> = self.entries.values().cloned().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path).then(a.inode.cmp(&b.inode)));
        let doc = PositionsFile {
            version: VERSION,
            files,
        };
        let bytes = serde_json::to_vec_pretty(&doc).map_err(io::Error::other)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{POSITIONS_FILE}.tmp"));
        {
            let mut f = crate::state_file::create_temp(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        // The rename is durable only once the directory entry is.
        File::open(dir)?.sync_all()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
