//! Discovery, the tailer's side: asking the walker ([`super::walk`]) for walks
//! when the poll or file events call for them, paced so that walking takes a
//! small share of the time whatever the tree; and taking what a walk found:
//! opening what is new through the symlink policy ([`super::open`]), and
//! noticing followed files that a rename or a deletion took away from their
//! path.
//!
//! Promises: a walk never holds the tailer (it runs on the walker's thread
//! while files are read); after a walk that took `d`, the next of its kind
//! (sweep, or near walk) waits `d × WALK_REST`, so walks take at most one
//! part in twenty of the time each; a bound a walk reached is counted
//! (`wisp_file_scans_bounded_total`) and logged once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use super::fingerprint::FileId;
use super::open;
use super::reader::FileState;
use super::walk::{Limits, Reached, Request, Scope, Walked, WalkerThread};
use super::watcher::{Target, Woken, WATCH_BUDGET};
use super::Tailer;
use crate::event::{Level, Repeated};

/// After a walk that took `d`, the next of its kind waits `d × WALK_REST`.
const WALK_REST: u32 = 19;
/// Near walks asked for and not started yet, at most: past it, a sweep.
const MAX_NEAR: usize = 256;
/// Files named in the log line that says what an entry tails, at most.
const NAMED_FILES: usize = 20;

/// The walks wanted, and when each kind may run next.
pub(super) struct Discovery {
    pub thread: WalkerThread,
    sweep_wanted: bool,
    /// By the path each covers.
    near: HashMap<PathBuf, Target>,
    /// Every walk since the last whole sweep entered every folder it should
    /// have, and each found a watch.
    complete: bool,
    next_sweep: Instant,
    next_near: Instant,
    /// The bounds a walk reached and the symlinks it did not follow: each
    /// logged once, counted each time.
    events: Repeated,
    /// Sweeps ended: a problem not reported again by a whole sweep is
    /// forgotten (and logged again if it comes back).
    sweeps: u64,
}

impl Discovery {
    pub(super) fn new(thread: WalkerThread) -> Self {
        let now = Instant::now();
        Self {
            thread,
            sweep_wanted: false,
            near: HashMap::new(),
            complete: false,
            next_sweep: now,
            next_near: now,
            events: Repeated::once(),
            sweeps: 0,
        }
    }

    /// When the next walk wanted may start, if one is wanted and none runs.
    pub(super) fn deadline(&self) -> Option<Instant> {
        if self.thread.busy() {
            return None;
        }
        let near = (!self.near.is_empty()).then_some(self.next_near);
        let sweep = self.sweep_wanted.then_some(self.next_sweep);
        near.into_iter().chain(sweep).min()
    }
}

impl Tailer {
    /// Asks for a sweep: every root, from where the last one stopped.
    pub(super) fn want_sweep(&mut self) {
        self.discovery.sweep_wanted = true;
    }

    /// Takes what file events ask for.
    pub(super) fn on_woken(&mut self, woken: Woken) {
        let d = &mut self.discovery;
        if woken.sweep {
            d.sweep_wanted = true;
        }
        for t in woken.near {
            d.near.entry(t.scope()).or_insert(t);
        }
        if d.near.len() > MAX_NEAR {
            d.near.clear();
            d.sweep_wanted = true;
        }
    }

    /// Starts the walk wanted, if its time came and none runs: near walks
    /// first (they are small and events wait on them).
    pub(super) fn start_walk(&mut self, now: Instant) {
        let d = &mut self.discovery;
        if d.thread.busy() {
            return;
        }
        if !d.near.is_empty() && now >= d.next_near {
            let targets: Vec<Target> = d.near.drain().map(|(_, t)| t).collect();
            d.thread.start(Request::Near(targets));
        } else if d.sweep_wanted && now >= d.next_sweep && d.thread.start(Request::Sweep) {
            d.sweep_wanted = false;
        }
    }

    /// Takes what a walk found: opens files not followed yet, and starts
    /// draining the followed files in its scope that no pattern matches any
    /// more (renamed away or deleted). A followed file the walk missed but
    /// whose path still names it, or cannot be checked for now (a folder the
    /// agent cannot search or list, no file descriptors left), is not taken
    /// for rotated: it is followed on through its descriptor and its
    /// checkpoint kept.
    pub(super) fn apply(&mut self, walked: Walked, startup: bool) {
        let now = Instant::now();
        let rest = walked.took.saturating_mul(WALK_REST);
        let r = walked.reached;
        let bounded = r.entries || r.time || r.watches;
        self.discovery.complete = match walked.scope {
            Scope::Sweep { done } => done && !bounded,
            Scope::Near(_) => self.discovery.complete && !bounded,
        };
        match walked.scope {
            Scope::Sweep { .. } => {
                self.discovery.next_sweep = now + rest;
                self.undecided = false;
            }
            Scope::Near(_) => self.discovery.next_near = now + rest,
        }
        self.counters.add_scan(walked.took);
        self.note_bounds(walked.reached, walked.link_not_followed.as_ref());
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        let mut problems = walked.problems;
        let mut candidates = walked.found;
        // As `glob` found them: entry by entry, in the order of the walk.
        candidates.sort_by_key(|f| f.entries.first().copied());
        for cand in candidates {
            let Some(&first) = cand.entries.first() else {
                continue;
            };
            if seen.contains(&cand.id) {
                continue;
            }
            if self.by_id.contains_key(&cand.id) {
                seen.insert(cand.id);
                found.push((first, cand.path, cand.id, None));
                continue;
            }
            // Opened here, through the symlink policy, so that a path the
            // policy refuses never claims the file for its entry (a link to a
            // file another entry tails must not hide it from that one).
            for &ei in &cand.entries {
                let Some(entry) = self.entries.get(ei) else {
                    continue;
                };
                match open::open_file(&cand.path, entry.config.follow_symlinks) {
                    Ok(opened) => {
                        // The path may have changed hands since the walk: the
                        // open descriptor is what counts.
                        let id = FileId::of(&opened.meta);
                        if seen.insert(id) {
                            found.push((ei, cand.path.clone(), id, Some(opened)));
                        }
                        break;
                    }
                    Err(r) => {
                        let msg = r.message(&cand.path);
                        problems.push((cand.path.clone(), msg));
                    }
                }
            }
        }
        let scopes = match &walked.scope {
            Scope::Sweep { .. } => None,
            Scope::Near(scopes) => Some(scopes.as_slice()),
        };
        let in_scope = |p: &Path| scopes.is_none_or(|s| s.iter().any(|s| p.starts_with(s)));
        self.note_problems(problems, &walked.scope);
        for t in self.files.values_mut() {
            if t.state != FileState::Following || seen.contains(&t.id) || !in_scope(&t.path) {
                continue;
            }
            let deleted = t.is_deleted();
            if !deleted {
                match std::fs::metadata(&t.path) {
                    // Still there: the walk missed it (a folder it could not
                    // list, or did not reach this time).
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
        // Files with a checkpoint first: one found truncated since tells a copy
        // of it (`copytruncate`) among the new ones, whatever their names.
        found.sort_by_key(|(_, _, id, _)| !self.store.knows(*id));
        for (ei, path, id, opened) in found {
            if let Some(t) = self.by_id.get(&id).and_then(|s| self.files.get_mut(s)) {
                if t.path != path {
                    // A new name for a followed file counts only if the old one
                    // no longer leads to it (a second name is not a rotation),
                    // and if the file could be opened there: a refused symlink
                    // to it is not a rotation either.
                    let follow = self
                        .entries
                        .get(ei)
                        .is_some_and(|e| e.config.follow_symlinks);
                    let still = std::fs::metadata(&t.path).is_ok_and(|m| FileId::of(&m) == id);
                    if !still
                        && open::open_file(&path, follow).is_ok_and(|o| FileId::of(&o.meta) == id)
                    {
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
            self.log_tailed();
        }
        self.quiet = self.events_cover(self.discovery.complete);
    }

    /// Logs each problem once (again if its message changes); forgets those a
    /// whole sweep (or a near walk over their path) no longer reports.
    fn note_problems(&mut self, problems: Vec<(PathBuf, String)>, scope: &Scope) {
        let sweep = self.discovery.sweeps;
        let reported: HashSet<PathBuf> = match scope {
            Scope::Near(_) => problems.iter().map(|(p, _)| p.clone()).collect(),
            Scope::Sweep { .. } => HashSet::new(),
        };
        if let Scope::Near(scopes) = scope {
            self.unreadable
                .retain(|p, _| reported.contains(p) || !scopes.iter().any(|s| p.starts_with(s)));
        }
        for (path, msg) in problems {
            match self.unreadable.get_mut(&path) {
                Some((known, at)) if *known == msg => *at = sweep,
                _ => {
                    tracing::warn!("{msg}");
                    self.unreadable.insert(path, (msg, sweep));
                }
            }
        }
        if let Scope::Sweep { done: true, .. } = scope {
            self.unreadable.retain(|_, (_, at)| *at == sweep);
            if self.unreadable.capacity() > 4 * self.unreadable.len().max(16) {
                // Thousands of FIFOs gone: so is the memory they took.
                self.unreadable.shrink_to_fit();
            }
            self.discovery.sweeps += 1;
        }
    }

    /// Counts the bounds a walk reached, and logs each the first time.
    fn note_bounds(&mut self, reached: Reached, link: Option<&(PathBuf, usize)>) {
        let c = &self.counters;
        let events = &self.discovery.events;
        let limits = Limits::DEFAULT;
        let bound =
            |hit: bool, cause: &'static str, counter: &AtomicU64, msg: &dyn Fn() -> String| {
                if hit {
                    events.counted(counter, cause, || {
                        format!(
                            "{} (logged once; counted in wisp_file_scans_bounded_total)",
                            msg()
                        )
                    });
                }
            };
        bound(
            reached.entries,
            "entries",
            &c.scans_bounded_entries,
            &|| {
                format!(
                "a scan for [[files]] stopped after {} directory entries; the next scan goes on \
                 from there, so files in a tree this large are found over several scans",
                limits.entries
            )
            },
        );
        bound(reached.time, "time", &c.scans_bounded_time, &|| {
            format!(
                "a scan for [[files]] stopped after {} ms; the next scan goes on from there, so \
                 files in a tree this slow are found over several scans",
                limits.time.as_millis()
            )
        });
        bound(reached.depth, "depth", &c.scans_bounded_depth, &|| {
            format!(
                "folders more than {} levels below a pattern's fixed folders are not looked into",
                limits.depth
            )
        });
        bound(
            reached.watches,
            "watches",
            &c.scans_bounded_watches,
            &|| {
                format!(
                    "more folders to watch than the {WATCH_BUDGET} file watches the agent allows \
                 itself (or the system's fs.inotify.max_user_watches): files in the others are \
                 found by the poll, every poll_interval"
                )
            },
        );
        if let Some((path, ei)) = link {
            let name = self.entries.get(*ei).map_or("", |e| e.config.name.as_str());
            events.log(Level::Info, "symlink", || {
                format!(
                    "not looking into {}: a symlink, and [[files]] {name:?} does not set \
                     follow_symlinks = true, so no symlink to a folder is followed below the \
                     pattern's fixed folders (further ones are not logged)",
                    path.display()
                )
            });
        }
    }

    /// Logs, per `[[files]]` entry, the files it tails after the first walk.
    fn log_tailed(&self) {
        for (ei, e) in self.entries.iter().enumerate() {
            let mut names: Vec<String> = self
                .files
                .values()
                .filter(|t| t.entry == ei)
                .map(|t| t.path.display().to_string())
                .collect();
            let n = names.len();
            names.sort();
            names.truncate(NAMED_FILES);
            let more = if n > NAMED_FILES {
                format!(" and {} more", n - NAMED_FILES)
            } else {
                String::new()
            };
            if n == 0 {
                // Once, after the first walk: a typo in a path looks like this.
                tracing::warn!(
                    "tailing {} ({}): nothing matches yet; files created later are picked \
                     up, but check the path if some should exist already",
                    e.config.name,
                    e.config.paths.join(", ")
                );
                continue;
            }
            tracing::info!(
                "tailing {} ({}): {n} file(s) match now: {}{more}",
                e.config.name,
                e.config.paths.join(", "),
                names.join(", ")
            );
        }
    }
}
