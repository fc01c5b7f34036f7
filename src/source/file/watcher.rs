//! File events: one `notify` watcher (inotify on Linux) for the whole agent.
//!
//! It watches directories, not files: the fixed prefix directory of each glob
//! (recursively where the pattern reaches below it), which also reports files
//! created later. Events only wake the tailer and say whether a rescan of the globs
//! is worth doing; the tailer then checks its files itself. That keeps events an
//! optimisation: the periodic poll finds everything they would, including writes
//! inotify never reports (host-side writes on virtiofs, 9p and sshfs). One instance
//! for the agent, because the default limit is 128 inotify instances per user.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::Notify;

/// What the watcher tells the tailer.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    pub notify: Notify,
    /// A file may have appeared, moved or gone: rescan the globs.
    pub rescan: AtomicBool,
}

/// The agent's one directory watcher, or none when events are off or unavailable.
pub(crate) struct DirWatcher {
    inner: Option<RecommendedWatcher>,
    /// Root directory of a pattern → the directory watched for it now (the root, or
    /// its nearest existing ancestor until the root is created).
    watched: HashMap<PathBuf, PathBuf>,
    pub wake: Arc<Wake>,
}

impl std::fmt::Debug for DirWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatcher")
            .field("active", &self.inner.is_some())
            .field("watched", &self.watched)
            .finish()
    }
}

impl DirWatcher {
    /// Creates the watcher; when it cannot be (inotify limits), logs why and runs
    /// on polling alone.
    pub(crate) fn new(enabled: bool) -> Self {
        let wake = Arc::new(Wake::default());
        let inner = if enabled {
            let w = wake.clone();
            let handler = move |res: notify::Result<notify::Event>| {
                match res {
                    Ok(ev) => match ev.kind {
                        // Opens, reads and closes, our own included: not news (a
                        // write is reported as a modification of its own).
                        EventKind::Access(_) => return,
                        EventKind::Modify(ModifyKind::Data(_)) => {}
                        _ => w.rescan.store(true, Ordering::Relaxed),
                    },
                    // A queue overflow or a watch error: something was missed.
                    Err(_) => w.rescan.store(true, Ordering::Relaxed),
                }
                w.notify.notify_one();
            };
            match notify::recommended_watcher(handler) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(
                        "cannot watch files for changes ({e}); following them by polling alone"
                    );
                    None
                }
            }
        } else {
            None
        };
        Self {
            inner,
            watched: HashMap::new(),
            wake,
        }
    }

    /// Makes sure each root (see [`root_of`]) is watched: the root itself once it
    /// exists, else its nearest existing ancestor, so that its creation is seen.
    pub(crate) fn watch_roots(&mut self, roots: &[(PathBuf, bool)]) {
        let Some(inner) = self.inner.as_mut() else {
            return;
        };
        for (root, recursive) in roots {
            let Some(target) = root.ancestors().find(|a| a.is_dir()) else {
                continue;
            };
            if self.watched.get(root).map(PathBuf::as_path) == Some(target) {
                continue;
            }
            let mode = if target == root.as_path() && *recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match inner.watch(target, mode) {
                Ok(()) => {
                    tracing::debug!("watching {} for {}", target.display(), root.display());
                    self.watched.insert(root.clone(), target.to_path_buf());
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot watch {} ({e}); files there are found by polling",
                        target.display()
                    );
                    // Remember it anyway so the warning is not repeated every poll.
                    self.watched.insert(root.clone(), target.to_path_buf());
                }
            }
        }
    }
}

/// The directory a glob pattern can match in: its components before the first one
/// with a glob character, and whether matches can lie deeper than directly in it.
pub(crate) fn root_of(pattern: &str) -> (PathBuf, bool) {
    let path = Path::new(pattern);
    let mut root = PathBuf::new();
    let mut rest = 0usize;
    let mut in_rest = false;
    for c in path.components() {
        let s = c.as_os_str().to_string_lossy();
        if !in_rest && !s.contains(['*', '?', '[']) {
            root.push(c);
        } else {
            in_rest = true;
            rest += 1;
            if s.contains("**") {
                rest += 1;
            }
        }
    }
    if rest == 0 {
        // A literal path: watch the directory that holds it.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        return (parent, false);
    }
    if root.components().all(|c| matches!(c, Component::CurDir)) {
        root = PathBuf::from(".");
    }
    (root, rest > 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_of_a_pattern_is_its_fixed_prefix() {
        assert_eq!(
            root_of("/tmp/alloy/logs/*.log"),
            (PathBuf::from("/tmp/alloy/logs"), false)
        );
        assert_eq!(
            root_of("/var/log/**/*.log"),
            (PathBuf::from("/var/log"), true)
        );
        assert_eq!(
            root_of("/srv/*/logs/app.log"),
            (PathBuf::from("/srv"), true)
        );
        assert_eq!(
            root_of("/var/log/syslog"),
            (PathBuf::from("/var/log"), false)
        );
        assert_eq!(root_of("*.log"), (PathBuf::from("."), false));
    }
}
