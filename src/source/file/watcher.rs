//! File events: one inotify instance for the whole agent, watching the folders
//! the walk ([`super::walk`]) entered, each on its own (never recursively).
//!
//! Promises:
//! - a watch is only ever on a folder a glob can still match in (or, while a
//!   pattern's root is missing, the nearest folder above it), never added
//!   through a symlink: the walk hands over the descriptor it listed the folder
//!   through, and the watch is added on that descriptor (`/proc/self/fd/N`), so
//!   a folder swapped for a link meanwhile is not what gets watched;
//! - at most [`WATCH_BUDGET`] watches; folders past it are found by the poll
//!   alone. The shallowest folders are watched first (a user's thousands of
//!   folders deep in a shared tree do not take the watches of everyone's log
//!   folders), and the kernel's own limit (`fs.inotify.max_user_watches`) is
//!   treated as the budget's end;
//! - a watch goes when its folder does (the kernel's `IN_IGNORED`), and at the
//!   end of each sweep for the folders the sweep no longer reached: the table
//!   never holds more than the budget;
//! - events only wake the tailer and say where to look ([`Woken`]): a name a
//!   glob cannot match there wakes nothing, a write to a file a glob matches
//!   wakes the reading, anything else (a file or folder that came, went or
//!   moved) asks for a near walk there; a lost event (queue overflow) asks for
//!   a sweep. The poll finds everything events would, including writes inotify
//!   never reports (virtiofs, 9p, sshfs), so events stay an optimisation;
//! - each watch knows whether its folder is on a local filesystem (ext4, xfs,
//!   btrfs, tmpfs, …), where inotify reports every change made on the machine:
//!   the tailer polls slowly only where every folder it depends on is one
//!   ([`Watches::covers`]); a network or shared filesystem (NFS, SMB, 9p,
//!   FUSE, virtiofs) keeps the poll at `poll_interval`.
//!
//! One instance for the agent, because the default limit is 128 inotify
//! instances per user; read on a thread of its own, which sleeps in `poll`
//! until an event comes or the watcher goes (an eventfd wakes it then: no
//! timeout, so an idle agent's thread never wakes) and hands the tailer's
//! task what the events ask for.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::fs::{Mode, OFlags, CWD};
use rustix::io::Errno;

use super::globs::{Globs, States};
use super::TailCounters;

/// inotify watches the agent holds, at most.
pub(super) const WATCH_BUDGET: usize = 1024;
/// Events taken per wake, at most (more wait for the next turn).
const EVENTS_PER_WAKE: usize = 4096;

/// A folder: device and inode.
pub(super) type DirId = (u64, u64);

/// Where file events asked to look: a watched folder, and the name an event
/// named in it (`None`: the folder itself).
#[derive(Clone, Debug)]
pub(super) struct Target {
    pub dir: PathBuf,
    pub id: DirId,
    pub depth: usize,
    pub states: States,
    pub name: Option<OsString>,
}

impl Target {
    /// The path whose followed files this look covers.
    pub(super) fn scope(&self) -> PathBuf {
        match &self.name {
            Some(n) => self.dir.join(n),
            None => self.dir.clone(),
        }
    }
}

/// A watched folder.
#[derive(Debug)]
struct Watched {
    path: PathBuf,
    id: DirId,
    depth: usize,
    /// What its entries may match; `None`: unknown (the folder above a
    /// missing root, or one reached by two ways): any event asks for a sweep.
    states: Option<States>,
    /// The sweep that last reached it.
    sweep: u64,
    /// On a filesystem where inotify reports every local change ([`local_fs`]).
    local: bool,
}

/// Whether the folder open as `dir` is on a filesystem whose changes inotify
/// reports in full: the disk and memory filesystems, where every write goes
/// through this kernel. Not network or shared ones (NFS, SMB, 9p, FUSE such
/// as sshfs and virtiofs, vboxsf…), whose files another machine writes; an
/// unknown type counts as not local.
fn local_fs(dir: BorrowedFd<'_>) -> bool {
    // statfs(2) magic numbers (linux/magic.h).
    const LOCAL: [u64; 9] = [
        0xEF53,      // ext2, ext3, ext4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0xF2F5_2010, // f2fs
        0x2FC1_2FC1, // zfs
        0x794C_7630, // overlayfs (containers' root)
        0x5265_4973, // reiserfs
        0x3153_464A, // jfs
    ];
    rustix::fs::fstatfs(dir)
        .map(|st| LOCAL.contains(&(st.f_type as u64 & 0xFFFF_FFFF)))
        .unwrap_or(false)
}

/// The watches: which folder each watch descriptor is, and the budget.
pub(super) struct Watches {
    fd: Arc<OwnedFd>,
    budget: usize,
    by_wd: HashMap<i32, Watched>,
    by_path: HashMap<PathBuf, i32>,
    sweep: u64,
    counters: Arc<TailCounters>,
}

fn mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::EXCL_UNLINK
}

impl Watches {
    fn new(fd: Arc<OwnedFd>, budget: usize, counters: Arc<TailCounters>) -> Self {
        Self {
            fd,
            budget,
            by_wd: HashMap::new(),
            by_path: HashMap::new(),
            sweep: 0,
            counters,
        }
    }

    pub(super) fn budget(&self) -> usize {
        self.budget
    }

    /// Whether every watched folder is on a local filesystem.
    pub(super) fn all_local(&self) -> bool {
        self.by_wd.values().all(|w| w.local)
    }

    /// Whether events report every change to the entries of the folder `dir`:
    /// it is watched, and on a local filesystem.
    pub(super) fn covers(&self, dir: &Path) -> bool {
        self.by_path
            .get(dir)
            .and_then(|wd| self.by_wd.get(wd))
            .is_some_and(|w| w.local)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_wd.len()
    }

    fn publish(&self) {
        self.counters
            .watches
            .store(self.by_wd.len() as u64, Ordering::Relaxed);
    }

    /// The walk entered the folder `dir` (open as `fd`) at `path`: keeps its
    /// watch, or adds one if there is room. False: no room.
    pub(super) fn offer(
        &mut self,
        dir: BorrowedFd<'_>,
        path: &Path,
        id: DirId,
        depth: usize,
        states: Option<&States>,
    ) -> bool {
        if let Some(&wd) = self.by_path.get(path) {
            if let Some(w) = self.by_wd.get_mut(&wd) {
                if w.id == id {
                    w.sweep = self.sweep;
                    // Reached by another way too: which names matter there is
                    // not known any more.
                    w.states = if w.path == path {
                        states.cloned()
                    } else {
                        None
                    };
                    return true;
                }
            }
            // Another folder at that path now.
            self.remove(wd);
        }
        if self.by_wd.len() >= self.budget {
            return false;
        }
        self.add(dir, path, id, depth, states)
    }

    /// After a walk: `path` found no room when the walk entered it; it takes
    /// the place of the deepest watched folder if that one is deeper.
    pub(super) fn place(&mut self, path: &Path, id: DirId, depth: usize, states: &States) -> bool {
        if self.by_path.contains_key(path) {
            return true;
        }
        if self.by_wd.len() >= self.budget {
            let deepest = self
                .by_wd
                .iter()
                .max_by_key(|(_, w)| w.depth)
                .map(|(wd, w)| (*wd, w.depth));
            match deepest {
                Some((wd, d)) if d > depth => self.remove(wd),
                _ => return false,
            }
        }
        // Opened again by its path: the watch is added only if that is still
        // the folder the walk listed.
        let shown = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::openat(CWD, shown, flags, Mode::empty()) else {
            return false;
        };
        match rustix::fs::fstat(&fd) {
            Ok(st) if (st.st_dev, st.st_ino) == id => {}
            _ => return false,
        }
        self.add(fd.as_fd(), path, id, depth, Some(states))
    }

    fn add(
        &mut self,
        dir: BorrowedFd<'_>,
        path: &Path,
        id: DirId,
        depth: usize,
        states: Option<&States>,
    ) -> bool {
        let by_fd = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let wd = match inotify::add_watch(&*self.fd, by_fd.as_str(), mask()) {
            Ok(wd) => wd,
            // No /proc: by path, not through a symlink at its end.
            Err(Errno::NOENT) => match inotify::add_watch(
                &*self.fd,
                if path.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    path
                },
                mask() | WatchFlags::DONT_FOLLOW,
            ) {
                Ok(wd) => wd,
                Err(_) => return false,
            },
            // ENOSPC: the system's limit of watches, which is the budget's end.
            Err(_) => return false,
        };
        let local = local_fs(dir);
        if let Some(w) = self.by_wd.get_mut(&wd) {
            // The same folder by another way (a followed link, a bind mount):
            // where an event there matters is not known any more.
            w.states = None;
            w.sweep = self.sweep;
        } else {
            self.by_wd.insert(
                wd,
                Watched {
                    path: path.to_path_buf(),
                    id,
                    depth,
                    states: states.cloned(),
                    sweep: self.sweep,
                    local,
                },
            );
        }
        self.by_path.insert(path.to_path_buf(), wd);
        self.publish();
        true
    }

    fn remove(&mut self, wd: i32) {
        // Fails when the kernel removed it already (its folder went): fine.
        let _ = inotify::remove_watch(&*self.fd, wd);
        self.forget(wd);
    }

    /// The kernel dropped watch `wd` (`IN_IGNORED`: its folder is gone).
    fn forget(&mut self, wd: i32) {
        if self.by_wd.remove(&wd).is_some() {
            self.by_path.retain(|_, w| *w != wd);
            self.publish();
        }
    }

    pub(super) fn begin_sweep(&mut self) {
        self.sweep += 1;
    }

    /// A sweep ended: watches on folders it did not reach go.
    pub(super) fn end_sweep(&mut self) {
        let stale: Vec<i32> = self
            .by_wd
            .iter()
            .filter(|(_, w)| w.sweep != self.sweep)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in stale {
            self.remove(wd);
        }
        if self.by_wd.capacity() > 4 * self.by_wd.len().max(16) {
            self.by_wd.shrink_to_fit();
            self.by_path.shrink_to_fit();
        }
    }
}

/// What file events ask of the tailer.
#[derive(Debug, Default)]
pub(super) struct Woken {
    /// A file a glob matches was written to: read.
    pub data: bool,
    /// Events were lost, or came from a folder whose patterns are unknown.
    pub sweep: bool,
    /// Where to look.
    pub near: Vec<Target>,
}

/// The agent's inotify instance, or none when events are off or unavailable.
/// Its events are read on a thread of its own, which turns them into
/// [`Woken`]s for the tailer's task: the descriptor is only ever polled and
/// read there (no `unsafe` registration with tokio's reactor).
pub(super) struct DirWatcher {
    woken: Option<tokio::sync::mpsc::Receiver<Woken>>,
    watches: Option<Arc<Mutex<Watches>>>,
    /// What [`DirWatcher::next`]'s `modified` says, for the reading thread.
    modified: Arc<AtomicBool>,
    /// Written to when the watcher goes: wakes the reading thread, which ends.
    stop: Option<Arc<OwnedFd>>,
}

/// [`Woken`]s waiting for the tailer, at most; the reading thread waits
/// behind them (the kernel queues further events, and says when it lost some).
const WOKEN_QUEUE: usize = 16;

impl Drop for DirWatcher {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            // Fails only if the counter is full, which wakes the thread too.
            let _ = rustix::io::write(&**stop, &1u64.to_ne_bytes());
        }
    }
}

impl DirWatcher {
    /// Creates the instance and its reading thread; when it cannot be
    /// (inotify limits, no thread), logs why and runs on polling alone.
    pub(super) fn new(enabled: bool, globs: Arc<Globs>, counters: Arc<TailCounters>) -> Self {
        let mut watcher = Self {
            woken: None,
            watches: None,
            modified: Arc::default(),
            stop: None,
        };
        if !enabled {
            return watcher;
        }
        // The eventfd that ends the reading thread, and the inotify descriptor.
        let opened = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .and_then(|stop| {
            let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
            Ok((Arc::new(stop), Arc::new(fd)))
        });
        let (stop, fd) = match opened {
            Ok(both) => both,
            Err(e) => {
                tracing::warn!(
                    "cannot watch files for changes ({}); following them by polling alone",
                    std::io::Error::from(e)
                );
                return watcher;
            }
        };
        let watches = Arc::new(Mutex::new(Watches::new(fd.clone(), WATCH_BUDGET, counters)));
        let (tx, rx) = tokio::sync::mpsc::channel(WOKEN_QUEUE);
        let reading = Reading {
            fd,
            watches: watches.clone(),
            globs,
            modified: watcher.modified.clone(),
            stop: stop.clone(),
            tx,
        };
        match std::thread::Builder::new()
            .name("file-events".into())
            .spawn(move || reading.run())
        {
            Ok(_) => {
                watcher.woken = Some(rx);
                watcher.watches = Some(watches);
                watcher.stop = Some(stop);
            }
            Err(e) => tracing::warn!(
                "cannot watch files for changes ({e}); following them by polling alone"
            ),
        }
        watcher
    }

    /// The table the walk adds watches to (none without events).
    pub(super) fn watches(&self) -> Option<Arc<Mutex<Watches>>> {
        self.watches.clone()
    }

    /// Waits for file events and says what they ask for (pending forever
    /// without events). `modified`: a write also asks for a near walk of the
    /// file written to (a new file is waiting to be told from a copy).
    pub(super) async fn next(&mut self, modified: bool) -> Woken {
        self.modified.store(modified, Ordering::Relaxed);
        match self.woken.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(woken) => woken,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

/// The reading thread's share of the watcher.
struct Reading {
    fd: Arc<OwnedFd>,
    watches: Arc<Mutex<Watches>>,
    globs: Arc<Globs>,
    modified: Arc<AtomicBool>,
    /// Readable once the watcher is gone.
    stop: Arc<OwnedFd>,
    tx: tokio::sync::mpsc::Sender<Woken>,
}

impl Reading {
    /// Polls the instance, reads what it has, hands on what it asks for;
    /// until the watcher goes.
    fn run(self) {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut buf = vec![MaybeUninit::uninit(); 16 * 1024];
        loop {
            let mut fds = [
                PollFd::new(&*self.fd, PollFlags::IN),
                PollFd::new(&*self.stop, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(0) | Err(Errno::INTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        "cannot read file events ({}); following files by polling alone",
                        std::io::Error::from(e)
                    );
                    return;
                }
            }
            if !fds[1].revents().is_empty() {
                return;
            }
            let woken = self.drain(&mut buf);
            if (woken.data || woken.sweep || !woken.near.is_empty())
                && self.tx.blocking_send(woken).is_err()
            {
                return;
            }
        }
    }

    /// Everything the instance has now, as one [`Woken`].
    fn drain(&self, buf: &mut [MaybeUninit<u8>]) -> Woken {
        let mut woken = Woken::default();
        let modified = self.modified.load(Ordering::Relaxed);
        let mut table = self
            .watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut reader = inotify::Reader::new(self.fd.as_fd(), buf);
        let mut taken = 0usize;
        loop {
            match reader.next() {
                Ok(event) => take(&self.globs, &mut table, &event, modified, &mut woken),
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(_) => {
                    // Nothing sensible left to read: look everywhere.
                    woken.sweep = true;
                    break;
                }
            }
            taken += 1;
            if taken >= EVENTS_PER_WAKE && reader.is_buffer_empty() {
                break;
            }
        }
        woken
    }
}

/// What one event asks for, added to `woken`.
fn take(
    globs: &Globs,
    table: &mut Watches,
    ev: &inotify::Event<'_>,
    modified: bool,
    woken: &mut Woken,
) {
    let flags = ev.events();
    if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
        woken.sweep = true;
        return;
    }
    if flags.contains(ReadFlags::IGNORED) {
        table.forget(ev.wd());
        return;
    }
    let Some(w) = table.by_wd.get(&ev.wd()) else {
        return;
    };
    let near = |name: Option<&OsStr>, states: &States| Target {
        dir: w.path.clone(),
        id: w.id,
        depth: w.depth,
        states: states.clone(),
        name: name.map(OsStr::to_os_string),
    };
    let Some(states) = &w.states else {
        woken.sweep = true;
        return;
    };
    let name = ev.file_name().map(|n| OsStr::from_bytes(n.to_bytes()));
    let Some(name) = name else {
        // The folder itself moved, went or changed (its mode): look again.
        woken.near.push(near(None, states));
        return;
    };
    let step = globs.step(states, name);
    if step.is_empty() {
        return;
    }
    if flags == ReadFlags::MODIFY {
        if !step.matches.is_empty() {
            woken.data = true;
            if modified {
                woken.near.push(near(Some(name), states));
            }
        }
        return;
    }
    woken.near.push(near(Some(name), states));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(budget: usize) -> Watches {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).unwrap();
        Watches::new(Arc::new(fd), budget, Arc::default())
    }

    fn open_dir(p: &Path) -> OwnedFd {
        rustix::fs::openat(CWD, p, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    fn id(fd: &OwnedFd) -> DirId {
        let st = rustix::fs::fstat(fd).unwrap();
        (st.st_dev, st.st_ino)
    }

    /// `inotify wd:` lines of the instance's fdinfo: the kernel's own count.
    fn kernel_watches(t: &Watches) -> usize {
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", t.fd.as_raw_fd())).unwrap();
        info.lines()
            .filter(|l| l.starts_with("inotify wd:"))
            .count()
    }

    #[test]
    fn the_budget_holds_and_shallow_folders_take_the_place_of_deep_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(2);
        let states: States = Vec::new().into();
        let mut deep = Vec::new();
        for name in ["a/b/c", "d/e/f", "g/h/i"] {
            let p = dir.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            let fd = open_dir(&p);
            let ok = t.offer(fd.as_fd(), &p, id(&fd), 9, Some(&states));
            deep.push((p, ok));
        }
        assert_eq!(deep.iter().filter(|(_, ok)| *ok).count(), 2);
        assert_eq!((t.len(), kernel_watches(&t)), (2, 2));
        // A shallower folder takes a deep one's place; a deeper one does not.
        let shallow = dir.path().join("a");
        let fd = open_dir(&shallow);
        assert!(t.place(&shallow, id(&fd), 1, &states));
        let (p, _) = &deep[2];
        let fd = open_dir(p);
        assert!(!t.place(p, id(&fd), 9, &states));
        assert_eq!((t.len(), kernel_watches(&t)), (2, 2));
    }

    #[test]
    fn a_folder_removed_or_not_reached_by_a_sweep_gives_its_watch_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(10);
        let states: States = Vec::new().into();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        t.begin_sweep();
        for p in [&a, &b] {
            let fd = open_dir(p);
            assert!(t.offer(fd.as_fd(), p, id(&fd), 2, Some(&states)));
        }
        t.end_sweep();
        assert_eq!((t.len(), kernel_watches(&t)), (2, 2));
        // Removed: the kernel says IN_IGNORED.
        std::fs::remove_dir(&a).unwrap();
        let mut buf = vec![MaybeUninit::uninit(); 4096];
        let mut reader = inotify::Reader::new(t.fd.clone(), &mut buf);
        let mut ignored = Vec::new();
        while let Ok(ev) = reader.next() {
            if ev.events().contains(ReadFlags::IGNORED) {
                ignored.push(ev.wd());
            }
        }
        drop(reader);
        for wd in ignored {
            t.forget(wd);
        }
        assert_eq!((t.len(), kernel_watches(&t)), (1, 1));
        // Not reached by the next sweep: removed at its end.
        t.begin_sweep();
        t.end_sweep();
        assert_eq!((t.len(), kernel_watches(&t)), (0, 0));
    }
}
