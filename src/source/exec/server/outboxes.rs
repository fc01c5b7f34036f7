//! The captures users' `exec` runs left in their outboxes while no daemon
//! listened: found when the daemon starts, so the last iteration of a loop is
//! not stranded until the user's next `exec`.
//!
//! Where: root's outbox (`<state_dir>/exec-outbox/`), the outbox of the user the
//! daemon runs as (its own `XDG_STATE_HOME`), and
//! `<home>/.local/state/wisp-agent/exec/` of every user in `/etc/passwd`
//! (an outbox moved elsewhere with `XDG_STATE_HOME` is not found: it waits for
//! that user's next `exec`).
//!
//! Trust: a capture is taken as its owner's, exactly as if that user had sent
//! it over the socket, and only when it is plainly theirs: every folder below
//! the home is opened without following a symlink, the outbox is owned by the
//! user and writable by no one else, the capture is a regular file owned by the
//! user with one link (no hard link to someone else's file). A capture whose
//! `exec` still runs (it holds its lock) is left to that `exec`. The daemon
//! writes nothing there: a capture it took is answered "complete" at the
//! user's next `exec`, which deletes it.
//!
//! Bounded: at most [`MAX_USERS`] users (the passwd read capped), at most
//! [`MAX_CAPTURES_PER_USER`] captures each, oldest first.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use tokio::sync::mpsc;

use super::super::outbox::{end_of_dead_run, CAPTURE_EXT};
use super::super::protocol::{read_frame, ClientFrame, Hello, Read1};

/// Users whose outboxes are looked at, at most.
pub const MAX_USERS: usize = 4096;
/// Captures taken from one outbox at one start, at most.
pub const MAX_CAPTURES_PER_USER: usize = 256;

/// One outbox found, with its captures (oldest first) and their runs' hellos.
pub(crate) struct Outbox {
    pub uid: u32,
    pub path: PathBuf,
    dir: OwnedFd,
    pub captures: Vec<(String, Hello)>,
}

/// Where a user's outbox is below their home.
const BELOW_HOME: &str = ".local/state/wisp-agent/exec";

/// A place an outbox may be: `base` (trusted as it is written), then the steps
/// of `below` (each opened without following a symlink).
struct Place {
    base: PathBuf,
    below: &'static str,
    uid: u32,
}

/// Looks into every outbox (see the module doc).
pub(crate) fn find(state_dir: &Path) -> Vec<Outbox> {
    let mut places = vec![Place {
        base: state_dir.join("exec-outbox"),
        below: "",
        uid: 0,
    }];
    let me = rustix::process::geteuid().as_raw();
    if me != 0 {
        if let Some(home) = crate::config::user_state_home(&crate::config::ProcessEnv) {
            places.push(Place {
                base: home.join("wisp-agent").join("exec"),
                below: "",
                uid: me,
            });
        }
    }
    places.extend(
        crate::users::homes()
            .into_iter()
            .take(MAX_USERS)
            .filter(|(uid, _)| *uid != 0)
            .map(|(uid, home)| Place {
                base: home,
                below: BELOW_HOME,
                uid,
            }),
    );
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for place in places {
        let path = place.base.join(place.below);
        if !seen.insert(path.clone()) {
            continue;
        }
        match open_outbox(&place) {
            Ok(Some(dir)) => {
                let captures = captures_in(&dir, place.uid);
                if !captures.is_empty() {
                    out.push(Outbox {
                        uid: place.uid,
                        path,
                        dir,
                        captures,
                    });
                }
            }
            Ok(None) => {}
            Err(why) => tracing::warn!("not taking the exec captures in {path:?}: {why}"),
        }
    }
    out
}

/// Opens the outbox of `place`: `Ok(None)` when there is none.
fn open_outbox(place: &Place) -> Result<Option<OwnedFd>, String> {
    let step_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let base_flags = if place.below.is_empty() {
        step_flags
    } else {
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
    };
    let mut fd = match rustix::fs::open(&place.base, base_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    for step in Path::new(place.below).iter() {
        fd = match rustix::fs::openat(&fd, step, step_flags, Mode::empty()) {
            Ok(next) => next,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(format!(
                    "{} is not a folder (a symlink?)",
                    step.to_string_lossy()
                ))
            }
            Err(e) => return Err(e.to_string()),
        };
    }
    let stat = rustix::fs::fstat(&fd).map_err(|e| e.to_string())?;
    if stat.st_uid != place.uid {
        return Err(format!(
            "it belongs to uid {}, not {}",
            stat.st_uid, place.uid
        ));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err("others may write into it".into());
    }
    Ok(Some(fd))
}

/// The captures in an outbox, oldest first, with their hellos.
fn captures_in(dir: &OwnedFd, uid: u32) -> Vec<(String, Hello)> {
    let Ok(listing) = rustix::fs::Dir::read_from(dir) else {
        return Vec::new();
    };
    let suffix = format!(".{CAPTURE_EXT}");
    let mut names: Vec<String> = listing
        .flatten()
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|n| n.ends_with(&suffix) && !n.starts_with('.'))
        .collect();
    names.sort();
    names.truncate(MAX_CAPTURES_PER_USER);
    names
        .into_iter()
        .filter_map(|name| {
            let mut file = open_capture(dir, &name, uid).ok()?;
            match read_frame::<ClientFrame>(&mut file) {
                Ok(Read1::Frame(ClientFrame::Hello(hello))) => Some((name, hello)),
                _ => None,
            }
        })
        .collect()
}

/// Opens a capture of `uid` in `dir` (see the module doc for the checks).
fn open_capture(dir: &impl AsFd, name: &str, uid: u32) -> Result<File, String> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| e.to_string())?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| e.to_string())?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err("not a regular file".into());
    }
    if stat.st_uid != uid || stat.st_nlink != 1 {
        return Err("not plainly the user's own file".into());
    }
    Ok(File::from(fd))
}

impl Outbox {
    /// Opens the capture `name` to take it: `None` when its `exec` still runs
    /// (it holds the lock), or it is no longer plainly the user's.
    pub(crate) fn take(&self, name: &str) -> Option<File> {
        let file = open_capture(&self.dir, name, self.uid).ok()?;
        rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared).ok()?;
        Some(file)
    }
}

/// Reads a capture's frames on a thread of its own into a channel (a capture
/// may be long; the daemon's tasks never block on a disk read), ending with
/// the capture's `end`, or, when its `exec` died before writing one, an end
/// without exit status at the capture's last write (as `exec --flush` does).
pub(crate) fn frames(mut file: File) -> mpsc::Receiver<std::io::Result<ClientFrame>> {
    let (tx, rx) = mpsc::channel(2);
    let spawned = std::thread::Builder::new()
        .name("exec-outbox".into())
        .spawn(move || loop {
            let frame = match read_frame::<ClientFrame>(&mut file) {
                Ok(Read1::Frame(f)) => Ok(f),
                Ok(Read1::Eof | Read1::Partial) => {
                    let _ = tx.blocking_send(Ok(end_of_dead_run(&file)));
                    return;
                }
                Err(e) => Err(e),
            };
            let last = frame.is_err() || matches!(frame, Ok(ClientFrame::End { .. }));
            if tx.blocking_send(frame).is_err() || last {
                return;
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot read exec captures: {e}");
    }
    rx
}
