//! Discovery: matching the `[[files]]` globs, opening what is new through the
//! symlink policy ([`super::open`]), and noticing followed files that a rename or
//! a deletion took away from their path.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::fingerprint::FileId;
use super::open;
use super::reader::FileState;
use super::Tailer;

impl Tailer {
    /// Matches the globs: opens files not followed yet, and starts draining the
    /// followed files no pattern matches any more (renamed away or deleted). A
    /// followed file the globs miss but whose path still names it, or cannot be
    /// checked for now (a folder the agent cannot search or list, no file
    /// descriptors left), is not taken for rotated: it is followed on through its
    /// descriptor and its checkpoint kept.
    pub(super) fn scan(&mut self, startup: bool) {
        self.undecided = false;
        self.watcher.watch_roots(&self.roots);
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        let mut problems: Vec<(PathBuf, String)> = Vec::new();
        for (ei, entry) in self.entries.iter().enumerate() {
            for pattern in &entry.config.paths {
                let Ok(paths) = glob::glob(pattern) else {
                    continue;
                };
                for path in paths {
                    let path = match path {
                        Ok(p) => p,
                        Err(e) => {
                            let msg = format!(
                                "cannot list {} for {pattern:?}: {}; files there are not \
                                 found until it can",
                                e.path().display(),
                                open::describe(e.error())
                            );
                            problems.push((e.path().to_path_buf(), msg));
                            continue;
                        }
                    };
                    let meta = match std::fs::metadata(&path) {
                        Ok(m) => m,
                        Err(e) if open::is_gone(&e) => continue,
                        Err(e) => {
                            let msg = format!(
                                "cannot check {}: {}; skipping it for now",
                                path.display(),
                                open::describe(&e)
                            );
                            problems.push((path, msg));
                            continue;
                        }
                    };
                    if !meta.is_file() {
                        // `*` matching a folder is ordinary; anything else is noted.
                        if !meta.is_dir() {
                            let msg = open::Refused::NotRegular {
                                kind: crate::state_file::kind_of(&meta.file_type()),
                            }
                            .message(&path);
                            problems.push((path, msg));
                        }
                        continue;
                    }
                    let id = FileId::of(&meta);
                    if seen.contains(&id) {
                        continue;
                    }
                    if self.by_id.contains_key(&id) {
                        seen.insert(id);
                        found.push((ei, path, id, None));
                        continue;
                    }
                    // Opened here, through the symlink policy, so that a path the
                    // policy refuses never claims the file for its entry (a link
                    // to a file another entry tails must not hide it from that one).
                    match open::open_file(&path, entry.config.follow_symlinks) {
                        Ok(opened) => {
                            // The path may have changed hands since the stat: the
                            // open descriptor is what counts.
                            let id = FileId::of(&opened.meta);
                            if seen.insert(id) {
                                found.push((ei, path, id, Some(opened)));
                            }
                        }
                        Err(r) => {
                            let msg = r.message(&path);
                            problems.push((path, msg));
                        }
                    }
                }
            }
        }
        let current: HashSet<&PathBuf> = problems.iter().map(|(p, _)| p).collect();
        self.unreadable.retain(|p, _| current.contains(p));
        drop(current);
        for (path, msg) in problems {
            if self.unreadable.get(&path) != Some(&msg) {
                tracing::warn!("{msg}");
                self.unreadable.insert(path, msg);
            }
        }
        let now = Instant::now();
        for t in self.files.values_mut() {
            if t.state == FileState::Following && !seen.contains(&t.id) {
                let deleted = t.is_deleted();
                if !deleted {
                    match std::fs::metadata(&t.path) {
                        // Still there: the glob missed it (a folder it could not
                        // list).
                        Ok(m) if FileId::of(&m) == t.id => continue,
                        Err(e) if !open::is_gone(&e) => {
                            t.report_error(format!(
                                "cannot check {}: {}; still following it through its open \
                                 descriptor, its checkpoint kept",
                                t.path.display(),
                                open::describe(&e)
                            ));
                            continue;
                        }
                        _ => {}
                    }
                }
                if deleted {
                    tracing::info!("{} was deleted: reading it to its end", t.path.display());
                    self.counters.deletions.fetch_add(1, Ordering::Relaxed);
                } else {
                    tracing::info!(
                        "{} was rotated away: reading it to its end",
                        t.path.display()
                    );
                    self.counters.rotations.fetch_add(1, Ordering::Relaxed);
                }
                t.start_draining(now, deleted);
            }
        }
        // Files with a checkpoint first: one found truncated since tells a copy
        // of it (`copytruncate`) among the new ones, whatever their names.
        found.sort_by_key(|(_, _, id, _)| !self.store.knows(*id));
        for (ei, path, id, opened) in found {
            if let Some(t) = self.by_id.get(&id).and_then(|s| self.files.get_mut(s)) {
                if t.path != path {
                    // A new name for a followed file counts only if the file could
                    // be opened there: a refused symlink to it is not a rotation.
                    let follow = self.entries[ei].config.follow_symlinks;
                    if open::open_file(&path, follow).is_ok_and(|o| FileId::of(&o.meta) == id) {
                        tracing::info!(
                            "{} was rotated to {}: following it there",
                            t.path.display(),
                            path.display()
                        );
                        self.counters.rotations.fetch_add(1, Ordering::Relaxed);
                        t.path = path;
                    }
                }
                t.state = FileState::Following;
                continue;
            }
            if let Some(opened) = opened {
                self.open(ei, path, opened, startup);
            }
        }
        if startup {
            // Files rotated out of the globs while the agent was away, or
            // while it read them, are read to their end.
            self.resume_rotated();
        }
    }
}
