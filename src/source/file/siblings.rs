//! Files beside a followed one that the globs miss: the copy a `copytruncate`
//! made (`paths = ["/var/log/app.log"]` does not match `app.log.1`), and a file
//! renamed out of the globs before it was read to its end.
//!
//! Promises:
//! - when a followed file is found truncated (while the agent runs, or at start
//!   against its checkpoint), its folder is searched for its copy: a regular file
//!   (never through a symlink; a FIFO is never waited on) whose name starts with
//!   the file's name and goes on (`app.log.1`, `app.log-20261207`; not a
//!   compressed one, `app.log.2.gz`), that the agent has no checkpoint of,
//!   owned by the file's owner or root (any owner with `follow_symlinks =
//!   true`), longer than where the file was read up to (or, when a glob matches
//!   it, at least as long), and starting with the bytes the agent knew the file
//!   to start with (its [`Fingerprint`]); of several, the last modified. It is
//!   read from there (to its end, then closed, when no glob matches it; else
//!   followed as the glob would), and its resume
//!   point goes to the spool in the same batch as the truncated file's new
//!   start, so a crash leaves both or neither: exactly once either way;
//! - at start, a file beside a followed one (or beside where one was) that the
//!   globs miss, whose checkpoint is short of its end (renamed away, or a copy
//!   half read, when the agent stopped), is read from its checkpoint to its end;
//! - bounded: at most [`MAX_FOLDER_ENTRIES`] entries of a folder looked at and
//!   [`MAX_FILES`] files opened per search, each with at most
//!   [`super::fingerprint::FINGERPRINT_BYTES`] read to tell it (16 KiB), one
//!   search per truncation and one per folder at start.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::time::Instant;

use crate::record::SourceBatch;

use super::fingerprint::{FileId, Fingerprint};
use super::open::{self, Opened};
use super::Tailer;

/// Entries of a folder looked at per search, at most.
pub(super) const MAX_FOLDER_ENTRIES: usize = 4096;
/// Files opened per search, at most (each is fingerprinted: 256 bytes read).
pub(super) const MAX_FILES: usize = 64;

/// Extensions of compressed files, which are never read as a copy.
const COMPRESSED: &[&str] = &[
    "gz", "bz2", "xz", "zst", "zstd", "lz4", "lz", "lzma", "lzo", "z", "zip", "7z", "br", "sz",
    "tgz", "tbz2", "txz",
];

/// Whether `name` may be a rotated or copied `base`: it starts with `base`,
/// goes on, and does not end in a compressed file's extension.
pub(super) fn is_sibling_name(base: &OsStr, name: &OsStr) -> bool {
    let (base, name) = (base.as_bytes(), name.as_bytes());
    let Some(rest) = name.strip_prefix(base).filter(|r| !r.is_empty()) else {
        return false;
    };
    match rest.iter().rposition(|&c| c == b'.') {
        Some(dot) => {
            let ext = &rest[dot + 1..];
            !COMPRESSED
                .iter()
                .any(|c| ext.eq_ignore_ascii_case(c.as_bytes()))
        }
        None => true,
    }
}

impl Tailer {
    /// After [`super::reader::Tailed::check_truncated`] found the file `seq`
    /// truncated (`before`: its fingerprint and where its unread part began):
    /// notes it, for a copy the globs match ([`Tailer::copy_of`]), and reads
    /// on from a copy beside it that they miss; hands the file's new start on,
    /// with the copy's.
    pub(super) fn on_truncation(&mut self, seq: u64, before: (Fingerprint, u64)) {
        Self::note_truncation(&mut self.truncated, seq, Some(before));
        let Some(t) = self.files.get(&seq) else {
            return;
        };
        let mut marker = t.resume_marker();
        if let Some(owner) = t.owner() {
            if let Some(copy) = self.read_copy(seq, before.0, before.1, owner) {
                marker.ack = marker.ack.and(copy.ack);
            }
        }
        self.out.push_back(marker);
    }

    /// Looks beside the followed file `seq` for its copy (see the module doc)
    /// holding what it held from `from` on, when it started with the bytes of
    /// `was` and was owned by `owner`; starts reading it there, to its end.
    /// Returns the batch that tells the spool where the copy resumes, for the
    /// caller to hand on with the original's.
    pub(super) fn read_copy(
        &mut self,
        seq: u64,
        was: Fingerprint,
        from: u64,
        owner: u32,
    ) -> Option<SourceBatch> {
        if was.len == 0 {
            // Nothing was known of the file's start: no copy can be told.
            return None;
        }
        let t = self.files.get(&seq)?;
        let (path, ei) = (t.path.clone(), t.entry);
        let (dir, base) = (path.parent()?, path.file_name()?);
        let follow_any = self.entries[ei].config.follow_symlinks;
        let found =
            match open::open_in_folder(dir, follow_any, MAX_FOLDER_ENTRIES, MAX_FILES, |name| {
                is_sibling_name(base, name)
            }) {
                Ok(found) => found,
                Err(r) => {
                    tracing::warn!(
                        "{} was truncated; cannot look beside it for its copy: {}",
                        path.display(),
                        r.message(dir)
                    );
                    return None;
                }
            };
        // A copy the globs match is taken here too, even with nothing past
        // `from`: the scan would follow it a moment later in a batch of its
        // own, and a crash in between would leave the spool with the
        // original's new start and no point for the copy (read again from 0).
        let copy = found
            .into_iter()
            .filter(|(copy_path, o)| {
                let id = FileId::of(&o.meta);
                let uid = o.meta.uid();
                let globbed = self.globbed(copy_path);
                !self.by_id.contains_key(&id)
                    && !self.store.knows(id)
                    && (follow_any || uid == owner || uid == 0)
                    && (o.meta.len() > from || (globbed && o.meta.len() == from))
                    && was.matches(&o.file).unwrap_or(false)
            })
            .max_by_key(|(_, o)| o.meta.modified().ok());
        let Some((copy_path, Opened { file, meta })) = copy else {
            tracing::debug!(
                "{} was truncated; no copy beside it holds more than its first {from} byte(s)",
                path.display()
            );
            return None;
        };
        let fingerprint = match Fingerprint::of_file(&file) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}; skipping it", copy_path.display());
                return None;
            }
        };
        let globbed = self.entry_of(&copy_path);
        tracing::info!(
            "{} was truncated with {} byte(s) past byte {from} in its copy {}{}: reading them there",
            path.display(),
            meta.len() - from,
            copy_path.display(),
            if globbed.is_some() { "" } else { ", which no pattern matches" }
        );
        let copy_seq = self.next_seq;
        let marker = self.follow(
            globbed.unwrap_or(ei),
            copy_path,
            file,
            FileId::of(&meta),
            fingerprint,
            from,
            "where its original was read up to: its copy",
        );
        if globbed.is_none() {
            // Read to its end, then closed: no pattern would follow it on.
            if let Some(c) = self.files.get_mut(&copy_seq) {
                c.start_draining(Instant::now(), false);
            }
        }
        if let Some(original) = self.files.get_mut(&seq) {
            // The line it held unfinished is whole in the copy.
            original.discard_orphan();
        }
        // Found: no other new file is taken for this copy.
        self.truncated.retain(|(fp, ..)| *fp != was);
        Some(marker)
    }

    /// At start, after the first scan: reads the files beside followed ones
    /// (or beside where followed files were) that the globs miss and whose
    /// checkpoint is short of their end, from there to their end (see the
    /// module doc).
    pub(super) fn resume_rotated(&mut self) {
        // Folder → the names followed there, each with its entry.
        let mut folders: BTreeMap<PathBuf, Vec<(OsString, usize)>> = BTreeMap::new();
        let mut add = |path: &Path, ei: usize| {
            if let (Some(dir), Some(base)) = (path.parent(), path.file_name()) {
                let names = folders.entry(dir.to_path_buf()).or_default();
                if !names.iter().any(|(b, _)| b == base) {
                    names.push((base.to_os_string(), ei));
                }
            }
        };
        for t in self.files.values() {
            add(&t.path, t.entry);
        }
        for p in self.store.paths() {
            if let Some(ei) = self.entry_of(p) {
                add(p, ei);
            }
        }
        for (dir, names) in folders {
            let follow_any = names
                .iter()
                .all(|(_, ei)| self.entries[*ei].config.follow_symlinks);
            let found = match open::open_in_folder(
                &dir,
                follow_any,
                MAX_FOLDER_ENTRIES,
                MAX_FILES,
                |name| {
                    names.iter().any(|(b, _)| is_sibling_name(b, name))
                        && !self.globbed(&dir.join(name))
                },
            ) {
                Ok(found) => found,
                Err(r) => {
                    tracing::debug!("cannot look for rotated files: {}", r.message(&dir));
                    continue;
                }
            };
            for (path, Opened { file, meta }) in found {
                let id = FileId::of(&meta);
                if self.by_id.contains_key(&id) {
                    continue;
                }
                let Some(offset) = self.store.resume_at(id, &file) else {
                    continue;
                };
                if offset >= meta.len() {
                    continue;
                }
                let Some(ei) = path.file_name().and_then(|name| {
                    names
                        .iter()
                        .find(|(b, _)| is_sibling_name(b, name))
                        .map(|(_, ei)| *ei)
                }) else {
                    continue;
                };
                let fingerprint = match Fingerprint::of_file(&file) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!("cannot read {}: {e}; skipping it", path.display());
                        continue;
                    }
                };
                let seq = self.next_seq;
                let marker = self.follow(
                    ei,
                    path,
                    file,
                    id,
                    fingerprint,
                    offset,
                    "its checkpoint: it left the patterns before it was read to its end",
                );
                if let Some(t) = self.files.get_mut(&seq) {
                    t.start_draining(Instant::now(), false);
                }
                self.out.push_back(marker);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sibling_starts_with_the_name_goes_on_and_is_not_compressed() {
        let base = OsStr::new("app.log");
        for (name, ok) in [
            ("app.log.1", true),
            ("app.log.2", true),
            ("app.log-20261207", true),
            ("app.log.old", true),
            ("app.log", false),
            ("app.lo", false),
            ("other.log.1", false),
            ("xapp.log.1", false),
            ("app.log.2.gz", false),
            ("app.log.1.GZ", false),
            ("app.log-20261207.zst", false),
            ("app.log.xz", false),
            ("app.log.2.bz2", false),
        ] {
            assert_eq!(is_sibling_name(base, OsStr::new(name)), ok, "{name}");
        }
    }
}
