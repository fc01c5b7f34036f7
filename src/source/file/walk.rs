//! The walk: finding the files the `[[files]]` globs match (replacing
//! `glob::glob`, which followed every symlink to a folder: `ln -s . a` under a
//! `**` made one file 40 paths, and two such links stopped all tailing).
//!
//! Promises:
//! - it starts at each pattern's root (the folders the pattern names before its
//!   first wildcard; symlinks there are the administrator's and are followed)
//!   and enters only folders a glob can still match in ([`Globs::step`]); a
//!   folder where every pattern wants a literal name is not listed, the names
//!   are looked up;
//! - below the root it never goes through a symlink to a folder unless the
//!   entry says `follow_symlinks = true`; a followed link that leads back to a
//!   folder above it (same device and inode) is not entered again. Folders are
//!   opened from the folder before them (`openat`, `O_NOFOLLOW`), never by a
//!   path a user could re-route meanwhile. A symlink to a *file* is reported
//!   as a match: [`super::open`]'s owner rules decide whether it is tailed;
//! - bounded per walk: [`Limits`] (entries looked at, depth below the root,
//!   time), checked before each folder is entered, and the cancel flag checked
//!   every folder and every 1024 entries, so a stop never waits on a walk. A
//!   sweep (a walk over every root) cut by a bound remembers where it stopped,
//!   and the next walk goes on from there, so every folder is reached in turn;
//!   each walk gets at least one folder further;
//! - a *near* walk looks only at what file events named (a new file, a new
//!   folder, a folder that changed), under the same bounds;
//! - every folder it enters is offered to the watch table ([`Watches`]);
//! - it runs on a thread of its own ([`WalkerThread`]), one walk at a time, so
//!   the tailer reads on while it walks.

use std::collections::BinaryHeap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;

use super::fingerprint::FileId;
use super::globs::{Globs, State, States, Step};
use super::open;
use super::watcher::{DirId, Target, Watches};

/// What one walk may do, at most.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Directory entries looked at (also: the most read of one folder).
    pub entries: usize,
    /// Folders below a root.
    pub depth: usize,
    pub time: Duration,
}

impl Limits {
    pub(super) const DEFAULT: Limits = Limits {
        entries: 100_000,
        depth: 32,
        time: Duration::from_millis(250),
    };
}

#[derive(Clone, Debug)]
pub(super) enum Request {
    /// Every root, from where the last sweep stopped.
    Sweep,
    Near(Vec<Target>),
}

/// A file a glob matched (a regular file, or a symlink to one).
#[derive(Debug)]
pub(super) struct Found {
    pub path: PathBuf,
    /// The entries whose patterns match it, ascending.
    pub entries: Vec<usize>,
    /// What the path leads to now.
    pub id: FileId,
}

/// The bounds a walk reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Reached {
    pub entries: bool,
    pub depth: bool,
    pub time: bool,
    /// Folders found no watch (the budget, or the system's limit).
    pub watches: bool,
}

/// What a walk covered.
#[derive(Debug)]
pub(super) enum Scope {
    /// Part of a sweep; `done` when it ended one.
    Sweep { done: bool },
    /// The paths near walks looked at.
    Near(Vec<PathBuf>),
}

/// What a walk found.
#[derive(Debug)]
pub(super) struct Walked {
    pub scope: Scope,
    pub found: Vec<Found>,
    /// Matched paths that cannot be tailed, and folders that cannot be listed,
    /// with the message for each.
    pub problems: Vec<(PathBuf, String)>,
    pub reached: Reached,
    /// The first symlink (by name) the walk did not go through
    /// (`follow_symlinks = false`), with its entry.
    pub link_not_followed: Option<(PathBuf, usize)>,
    pub took: Duration,
}

/// Where a cut sweep goes on: a root, and the names down to the folder next
/// to enter.
#[derive(Debug, Clone)]
struct Cursor {
    root: usize,
    names: Vec<OsString>,
}

/// The walker: the globs, the watch table, and where the sweep stopped.
pub(super) struct Walker {
    globs: Arc<Globs>,
    watches: Option<Arc<Mutex<Watches>>>,
    limits: Limits,
    cursor: Option<Cursor>,
}

/// Why a walk stopped early.
enum Stop {
    Cancelled,
    /// A bound: the names to go on from, below the root.
    Cut(Vec<OsString>),
}

/// A folder to enter.
struct Child {
    name: OsString,
    states: States,
    /// Through a symlink (only for entries with `follow_symlinks = true`).
    link: bool,
}

/// A folder being walked: its entries to enter, last first.
struct Frame {
    fd: OwnedFd,
    path: PathBuf,
    name: OsString,
    id: DirId,
    depth: usize,
    children: Vec<Child>,
    /// The sweep's cursor below this folder: the child it names, and the
    /// names below that.
    resume: Option<(OsString, Vec<OsString>)>,
}

/// A folder that found no watch, by how deep it is: the shallowest are
/// placed first.
struct Unwatched {
    depth: usize,
    path: PathBuf,
    id: DirId,
    states: States,
}

impl PartialEq for Unwatched {
    fn eq(&self, other: &Self) -> bool {
        self.depth == other.depth
    }
}
impl Eq for Unwatched {}
impl PartialOrd for Unwatched {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Unwatched {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.depth.cmp(&other.depth)
    }
}

/// One walk's working state.
struct Run<'a> {
    globs: &'a Globs,
    watches: Option<&'a Mutex<Watches>>,
    limits: Limits,
    cancel: &'a AtomicBool,
    started: Instant,
    entries: usize,
    /// Folders entered that are not on the way back to the cursor.
    progress: usize,
    found: Vec<Found>,
    problems: Vec<(PathBuf, String)>,
    reached: Reached,
    link_not_followed: Option<(PathBuf, usize)>,
    /// The shallowest folders that found no watch (at most the budget).
    unwatched: BinaryHeap<Unwatched>,
}

impl Walker {
    pub(super) fn new(
        globs: Arc<Globs>,
        watches: Option<Arc<Mutex<Watches>>>,
        limits: Limits,
    ) -> Self {
        Self {
            globs,
            watches,
            limits,
            cursor: None,
        }
    }

    /// Walks as `request` says; stops early (returning what it found so far)
    /// when `cancel` is set.
    pub(super) fn walk(&mut self, request: &Request, cancel: &AtomicBool) -> Walked {
        let mut run = Run {
            globs: &self.globs,
            watches: self.watches.as_deref(),
            limits: self.limits,
            cancel,
            started: Instant::now(),
            entries: 0,
            progress: 0,
            found: Vec::new(),
            problems: Vec::new(),
            reached: Reached::default(),
            link_not_followed: None,
            unwatched: BinaryHeap::new(),
        };
        let scope = match request {
            Request::Sweep => {
                let cursor = self.cursor.take();
                if cursor.is_none() {
                    if let Some(w) = run.watches {
                        lock(w).begin_sweep();
                    }
                }
                let (start, names) = cursor.map_or((0, Vec::new()), |c| (c.root, c.names));
                let mut done = true;
                for ri in start..self.globs.roots.len() {
                    let resume = if ri == start {
                        names.clone()
                    } else {
                        Vec::new()
                    };
                    match run.root(ri, resume) {
                        Ok(()) => {}
                        Err(Stop::Cut(names)) => {
                            self.cursor = Some(Cursor { root: ri, names });
                            done = false;
                            break;
                        }
                        Err(Stop::Cancelled) => {
                            // Started again from the top by the next walk.
                            done = false;
                            break;
                        }
                    }
                }
                if done {
                    if let Some(w) = run.watches {
                        lock(w).end_sweep();
                    }
                }
                Scope::Sweep { done }
            }
            Request::Near(targets) => {
                let mut scopes = Vec::new();
                for t in targets {
                    scopes.push(t.scope());
                    if run.near(t).is_err() {
                        break;
                    }
                }
                Scope::Near(scopes)
            }
        };
        run.place_unwatched();
        Walked {
            scope,
            found: run.found,
            problems: run.problems,
            reached: run.reached,
            link_not_followed: run.link_not_followed,
            took: run.started.elapsed(),
        }
    }
}

fn lock(w: &Mutex<Watches>) -> std::sync::MutexGuard<'_, Watches> {
    // The table holds no invariant a panic elsewhere could break halfway.
    w.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether an error means the path is not there (any more).
fn gone(e: Errno) -> bool {
    matches!(e, Errno::NOENT | Errno::NOTDIR)
}

fn dir_id(st: &Stat) -> DirId {
    (st.st_dev, st.st_ino)
}

/// What a non-regular file is, for a message (as [`crate::state_file::kind_of`]).
fn kind(t: FileType) -> &'static str {
    match t {
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::BlockDevice | FileType::CharacterDevice => "device",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        _ => "special file",
    }
}

impl Run<'_> {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Walks root `ri`, from `resume` (names below it) on.
    fn root(&mut self, ri: usize, resume: Vec<OsString>) -> Result<(), Stop> {
        if self.cancelled() {
            return Err(Stop::Cancelled);
        }
        let globs = self.globs;
        let Some(root) = globs.roots.get(ri) else {
            return Ok(());
        };
        let shown = if root.path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            root.path.as_path()
        };
        let states = root.states.clone();
        let fd = match rustix::fs::openat(CWD, shown, list_flags(&states, globs), Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if gone(e) => {
                // Not there yet: watch the nearest folder that is, to see it come.
                self.watch_ancestor(&root.path);
                return Ok(());
            }
            Err(e) => {
                self.cannot_list(shown, &states, e);
                return Ok(());
            }
        };
        let Ok(st) = rustix::fs::fstat(&fd) else {
            return Ok(());
        };
        let id = dir_id(&st);
        if resume.is_empty() {
            self.progress += 1;
        }
        let depth = depth_of(&root.path);
        self.offer(fd.as_fd(), &root.path, id, depth, &states);
        let mut resume = resume.into_iter();
        let resume = resume
            .next()
            .map(|first| (first, resume.collect::<Vec<_>>()));
        let children = self.list(
            fd.as_fd(),
            &root.path,
            &states,
            resume.as_ref().map(|r| &r.0),
        )?;
        let frame = Frame {
            fd,
            path: root.path.clone(),
            name: OsString::new(),
            id,
            depth: 0,
            children,
            resume,
        };
        self.descend(vec![frame])
    }

    /// A near walk: the target's folder (if it is still the one watched), or
    /// the one name in it.
    fn near(&mut self, t: &Target) -> Result<(), Stop> {
        if self.cancelled() {
            return Err(Stop::Cancelled);
        }
        let shown = if t.dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            t.dir.as_path()
        };
        let listing = t.name.is_none() && self.globs.names_only(&t.states).is_none();
        let flags = if listing {
            OFlags::RDONLY | OFlags::NONBLOCK
        } else {
            OFlags::PATH
        } | OFlags::DIRECTORY
            | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::openat(CWD, shown, flags, Mode::empty()) else {
            return Ok(());
        };
        match rustix::fs::fstat(&fd) {
            // Another folder there now: the next sweep finds what it holds.
            Ok(st) if dir_id(&st) == t.id => {}
            _ => return Ok(()),
        }
        self.progress += 1;
        let children = match &t.name {
            None => self.list(fd.as_fd(), &t.dir, &t.states, None)?,
            Some(name) => {
                self.entries += 1;
                let step = self.globs.step(&t.states, name);
                let mut children = Vec::new();
                let mut found = Vec::new();
                if !step.is_empty() {
                    if let Ok(st) =
                        rustix::fs::statat(&fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    {
                        let ft = FileType::from_raw_mode(st.st_mode);
                        self.classify(
                            fd.as_fd(),
                            &t.dir,
                            name,
                            ft,
                            Some(st),
                            step,
                            &mut children,
                            &mut found,
                        );
                    }
                }
                self.found.append(&mut found);
                children
            }
        };
        let frame = Frame {
            fd,
            path: t.dir.clone(),
            name: OsString::new(),
            id: t.id,
            depth: t.depth,
            children,
            resume: None,
        };
        match self.descend(vec![frame]) {
            // No cursor for near walks: the sweep covers what they leave.
            Err(Stop::Cut(_)) => Err(Stop::Cut(Vec::new())),
            other => other,
        }
    }

    /// Enters the children of the frames on `stack`, depth first, in name order.
    fn descend(&mut self, mut stack: Vec<Frame>) -> Result<(), Stop> {
        while let Some(top) = stack.last_mut() {
            let Some(child) = top.children.pop() else {
                stack.pop();
                continue;
            };
            let below = match top.resume.take() {
                Some((first, rest)) if first == child.name && !rest.is_empty() => Some(rest),
                _ => None,
            };
            if self.cancelled() {
                return Err(Stop::Cancelled);
            }
            let over_entries = self.entries >= self.limits.entries;
            let over_time = self.started.elapsed() >= self.limits.time;
            if self.progress > 0 && (over_entries || over_time) {
                self.reached.entries |= over_entries;
                self.reached.time |= over_time && !over_entries;
                let mut names: Vec<OsString> =
                    stack.iter().skip(1).map(|f| f.name.clone()).collect();
                names.push(child.name);
                names.extend(below.unwrap_or_default());
                return Err(Stop::Cut(names));
            }
            let depth = top.depth + 1;
            if depth > self.limits.depth {
                self.reached.depth = true;
                continue;
            }
            let path = top.path.join(&child.name);
            let mut flags = list_flags(&child.states, self.globs);
            if !child.link {
                flags |= OFlags::NOFOLLOW;
            }
            let fd = match rustix::fs::openat(&top.fd, child.name.as_os_str(), flags, Mode::empty())
            {
                Ok(fd) => fd,
                // Gone, or swapped for a file or a symlink since it was listed.
                Err(e) if gone(e) || e == Errno::LOOP => continue,
                Err(e) => {
                    self.cannot_list(&path, &child.states, e);
                    continue;
                }
            };
            let Ok(st) = rustix::fs::fstat(&fd) else {
                continue;
            };
            let id = dir_id(&st);
            if stack.iter().any(|f| f.id == id) {
                // A loop, through a followed link (or a bind mount).
                continue;
            }
            if below.is_none() {
                self.progress += 1;
            }
            self.offer(fd.as_fd(), &path, id, depth_of(&path), &child.states);
            let mut below = below.unwrap_or_default().into_iter();
            let resume = below.next().map(|first| (first, below.collect::<Vec<_>>()));
            let children = self.list(
                fd.as_fd(),
                &path,
                &child.states,
                resume.as_ref().map(|r| &r.0),
            )?;
            stack.push(Frame {
                fd,
                path,
                name: child.name,
                id,
                depth,
                children,
                resume,
            });
        }
        Ok(())
    }

    /// Reads the folder `fd` (at `path`): reports its matches, and returns the
    /// folders to enter, last name first. Names before `from` are passed over
    /// (the sweep went past them).
    fn list(
        &mut self,
        fd: BorrowedFd<'_>,
        path: &Path,
        states: &States,
        from: Option<&OsString>,
    ) -> Result<Vec<Child>, Stop> {
        let globs = self.globs;
        let mut children = Vec::new();
        let mut found = Vec::new();
        let before = |name: &OsStr| from.is_some_and(|f| name < f.as_os_str());
        if let Some(names) = globs.names_only(states) {
            for name in names {
                self.entries += 1;
                if before(name) {
                    continue;
                }
                let step = globs.step(states, name);
                match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => {
                        let ft = FileType::from_raw_mode(st.st_mode);
                        self.classify(
                            fd,
                            path,
                            name,
                            ft,
                            Some(st),
                            step,
                            &mut children,
                            &mut found,
                        );
                    }
                    Err(e) if gone(e) => {}
                    Err(e) if !step.matches.is_empty() => {
                        self.cannot_check(&path.join(name), states, e)
                    }
                    Err(_) => {}
                }
            }
        } else {
            let listing = match fd
                .try_clone_to_owned()
                .map_err(|e| Errno::from_io_error(&e))
            {
                Ok(fd) => Dir::new(fd).map_err(Some),
                Err(e) => Err(e),
            };
            let dir = match listing {
                Ok(dir) => dir,
                Err(e) => {
                    self.cannot_list(path, states, e.unwrap_or(Errno::IO));
                    return Ok(children);
                }
            };
            let mut n = 0usize;
            for entry in dir {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        self.cannot_list(path, states, e);
                        break;
                    }
                };
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                if name == "." || name == ".." {
                    continue;
                }
                n += 1;
                self.entries += 1;
                if n > self.limits.entries {
                    // One folder larger than a whole walk: the rest of it is
                    // never looked at.
                    self.reached.entries = true;
                    break;
                }
                if n.is_multiple_of(1024) && self.cancelled() {
                    return Err(Stop::Cancelled);
                }
                if before(name) {
                    continue;
                }
                let step = globs.step(states, name);
                if step.is_empty() {
                    continue;
                }
                self.classify(
                    fd,
                    path,
                    name,
                    entry.file_type(),
                    None,
                    step,
                    &mut children,
                    &mut found,
                );
            }
        }
        found.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        self.found.append(&mut found);
        children.sort_unstable_by(|a, b| b.name.cmp(&a.name));
        Ok(children)
    }

    /// Decides what the entry `name` of the folder `fd` is to the walk: a
    /// match (`found`), a folder to enter (`children`), a problem, or nothing.
    /// `st`: its `lstat`, when known.
    #[allow(clippy::too_many_arguments)]
    fn classify(
        &mut self,
        fd: BorrowedFd<'_>,
        dir: &Path,
        name: &OsStr,
        ft: FileType,
        st: Option<Stat>,
        step: Step,
        children: &mut Vec<Child>,
        found: &mut Vec<Found>,
    ) {
        let wanted = !step.matches.is_empty();
        match ft {
            FileType::Directory => {
                if let Some(states) = step.inside {
                    children.push(Child {
                        name: name.to_os_string(),
                        states,
                        link: false,
                    });
                }
            }
            FileType::RegularFile if wanted => {
                let st = match st.map_or_else(
                    || rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW),
                    Ok,
                ) {
                    Ok(st) => st,
                    Err(e) if gone(e) => return,
                    Err(e) => return self.cannot_check_step(&dir.join(name), &step, e),
                };
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::RegularFile => found.push(Found {
                        path: dir.join(name),
                        entries: step.matches,
                        id: file_id(&st),
                    }),
                    // Replaced since it was listed: as what it is now.
                    FileType::Unknown => {}
                    other => self.classify(fd, dir, name, other, Some(st), step, children, found),
                }
            }
            FileType::Symlink => {
                let follow = step.inside.as_ref().and_then(|s| self.globs.following(s));
                if !wanted && follow.is_none() {
                    if let Some(states) = &step.inside {
                        self.note_link(dir.join(name), states);
                    }
                    return;
                }
                let st = match rustix::fs::statat(fd, name, AtFlags::empty()) {
                    Ok(st) => st,
                    Err(e) if gone(e) => return,
                    Err(e) => {
                        if wanted {
                            self.cannot_check_step(&dir.join(name), &step, e);
                        }
                        return;
                    }
                };
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::RegularFile if wanted => found.push(Found {
                        path: dir.join(name),
                        entries: step.matches,
                        id: file_id(&st),
                    }),
                    FileType::Directory => match follow {
                        Some(states) => children.push(Child {
                            name: name.to_os_string(),
                            states,
                            link: true,
                        }),
                        None => {
                            if let Some(states) = &step.inside {
                                self.note_link(dir.join(name), states);
                            }
                        }
                    },
                    FileType::RegularFile => {}
                    other if wanted => {
                        let msg = open::Refused::NotRegular { kind: kind(other) }
                            .message(&dir.join(name));
                        self.problems.push((dir.join(name), msg));
                    }
                    _ => {}
                }
            }
            FileType::Unknown => {
                // The file system does not say in its listing: ask.
                match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => {
                        let ft = FileType::from_raw_mode(st.st_mode);
                        if ft != FileType::Unknown {
                            self.classify(fd, dir, name, ft, Some(st), step, children, found);
                        }
                    }
                    Err(e) if gone(e) => {}
                    Err(e) if wanted => self.cannot_check_step(&dir.join(name), &step, e),
                    Err(_) => {}
                }
            }
            FileType::RegularFile => {}
            other if wanted => {
                let path = dir.join(name);
                let msg = open::Refused::NotRegular { kind: kind(other) }.message(&path);
                self.problems.push((path, msg));
            }
            _ => {}
        }
    }

    /// Keeps the first link not followed, by name (listings come unsorted).
    fn note_link(&mut self, path: PathBuf, states: &[State]) {
        if self
            .link_not_followed
            .as_ref()
            .is_none_or(|(first, _)| path < *first)
        {
            if let Some(entry) = self.globs.entry_of(states) {
                self.link_not_followed = Some((path, entry));
            }
        }
    }

    fn cannot_list(&mut self, path: &Path, states: &[State], e: Errno) {
        let msg = format!(
            "cannot list {} for {:?}: {}; files there are not found until it can",
            path.display(),
            self.globs.text_of(states),
            open::describe(&e.into())
        );
        self.problems.push((path.to_path_buf(), msg));
    }

    fn cannot_check(&mut self, path: &Path, states: &[State], e: Errno) {
        let msg = format!(
            "cannot check {} for {:?}: {}; skipping it for now",
            path.display(),
            self.globs.text_of(states),
            open::describe(&e.into())
        );
        self.problems.push((path.to_path_buf(), msg));
    }

    fn cannot_check_step(&mut self, path: &Path, step: &Step, e: Errno) {
        let pattern = step
            .matches
            .first()
            .and_then(|entry| self.globs.globs.iter().find(|g| g.entry == *entry))
            .map_or("", |g| g.text.as_str());
        let msg = format!(
            "cannot check {} for {pattern:?}: {}; skipping it for now",
            path.display(),
            open::describe(&e.into())
        );
        self.problems.push((path.to_path_buf(), msg));
    }

    /// Offers the folder `fd` to the watch table; one that finds no room is
    /// kept (the shallowest, at most the budget) to take a deeper one's place
    /// after the walk.
    fn offer(&mut self, fd: BorrowedFd<'_>, path: &Path, id: DirId, depth: usize, states: &States) {
        let Some(w) = self.watches else {
            return;
        };
        let mut table = lock(w);
        if table.offer(fd, path, id, depth, Some(states)) {
            return;
        }
        let budget = table.budget();
        drop(table);
        self.reached.watches = true;
        self.unwatched.push(Unwatched {
            depth,
            path: path.to_path_buf(),
            id,
            states: states.clone(),
        });
        if self.unwatched.len() > budget {
            self.unwatched.pop();
        }
    }

    /// Watches the nearest existing folder above a root that is missing.
    fn watch_ancestor(&mut self, root: &Path) {
        let Some(w) = self.watches else {
            return;
        };
        for dir in root.ancestors().skip(1) {
            let shown = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let Ok(fd) = rustix::fs::openat(CWD, shown, flags, Mode::empty()) else {
                continue;
            };
            let Ok(st) = rustix::fs::fstat(&fd) else {
                return;
            };
            if !lock(w).offer(fd.as_fd(), dir, dir_id(&st), depth_of(dir), None) {
                self.reached.watches = true;
            }
            return;
        }
    }

    /// After the walk: the shallowest folders that found no watch take the
    /// place of deeper ones.
    fn place_unwatched(&mut self) {
        let Some(w) = self.watches else {
            return;
        };
        if self.unwatched.is_empty() {
            return;
        }
        let mut shallow = std::mem::take(&mut self.unwatched).into_sorted_vec();
        let mut table = lock(w);
        shallow.retain(|u| !table.place(&u.path, u.id, u.depth, &u.states));
        self.reached.watches = !shallow.is_empty();
    }
}

/// How a folder is opened: listed (read), or only looked into by name.
fn list_flags(states: &States, globs: &Globs) -> OFlags {
    let base = OFlags::DIRECTORY | OFlags::CLOEXEC;
    if globs.names_only(states).is_some() {
        base | OFlags::PATH
    } else {
        base | OFlags::RDONLY | OFlags::NONBLOCK
    }
}

fn file_id(st: &Stat) -> FileId {
    FileId {
        dev: st.st_dev,
        inode: st.st_ino,
    }
}

/// How deep a folder is from `/`: shallower ones are watched first.
pub(super) fn depth_of(path: &Path) -> usize {
    path.components().count()
}

/// The walker's thread: takes one request at a time, hands back what it
/// found. Dropping it (or [`WalkerThread::stop`]) ends a walk in progress at
/// its next check and the thread after it; nobody waits for it.
pub(super) struct WalkerThread {
    requests: std::sync::mpsc::SyncSender<Request>,
    results: tokio::sync::mpsc::Receiver<Walked>,
    cancel: Arc<AtomicBool>,
    busy: bool,
}

impl WalkerThread {
    pub(super) fn spawn(mut walker: Walker) -> std::io::Result<Self> {
        let (requests, inbox) = std::sync::mpsc::sync_channel::<Request>(1);
        let (outbox, results) = tokio::sync::mpsc::channel(1);
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        std::thread::Builder::new()
            .name("wisp-walk".into())
            .spawn(move || {
                while let Ok(request) = inbox.recv() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let walked = walker.walk(&request, &stop);
                    if outbox.blocking_send(walked).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            requests,
            results,
            cancel,
            busy: false,
        })
    }

    pub(super) fn busy(&self) -> bool {
        self.busy
    }

    /// Starts a walk unless one runs.
    pub(super) fn start(&mut self, request: Request) -> bool {
        if self.busy {
            return false;
        }
        self.busy = self.requests.try_send(request).is_ok();
        self.busy
    }

    /// What the walk in progress found, once it is done (pending forever when
    /// none runs, or the thread is gone).
    pub(super) async fn done(&mut self) -> Walked {
        if self.busy {
            match self.results.recv().await {
                Some(w) => {
                    self.busy = false;
                    return w;
                }
                None => self.busy = false,
            }
        }
        std::future::pending().await
    }

    pub(super) fn stop(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for WalkerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
