//! A user's exec outbox: the folder where `wisp-agent exec` keeps each run's
//! capture (the frames it sends the daemon, see [`super::protocol`]) until the
//! daemon has acknowledged all of it.
//!
//! The outbox is the caller's own: `$XDG_STATE_HOME/wisp-agent/exec/` (or
//! `~/.local/state/wisp-agent/exec/`), and for root `<state_dir>/exec-outbox/`;
//! mode 0700, owned by the caller, never followed through a symlink. Captures are
//! created with `O_CREAT|O_EXCL|O_NOFOLLOW` (mode 0600) and opened for sending
//! with `O_NOFOLLOW|O_NONBLOCK`; only regular files owned by the caller are read,
//! so a symlink or a FIFO planted there is skipped, not followed or waited on.
//! The daemon never reads any of it: captures reach it over the socket, as the
//! user who owns them.
//!
//! The `exec` writing a capture holds an exclusive `flock` on it; a flush skips a
//! capture it cannot lock (its run goes on), so a capture is never sent by two
//! processes at once.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::config::{Config, EnvSource};

/// A capture's file name ends so.
pub const CAPTURE_EXT: &str = "cap";

/// The outbox of the calling user (see the module doc); `None` when there is no
/// home to put it in.
pub fn outbox_dir(config: &Config, env: &dyn EnvSource) -> Option<PathBuf> {
    if rustix::process::geteuid().is_root() {
        return Some(config.agent.state_dir.join("exec-outbox"));
    }
    crate::config::user_state_home(env).map(|base| base.join("wisp-agent").join("exec"))
}

/// Creates the outbox (0700) if needed and checks it is a directory of ours,
/// reached without a symlink at its last step.
pub fn prepare(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory (a symlink?); remove it",
            dir.display()
        )));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(io::Error::other(format!(
            "{} belongs to uid {}, not to you; remove it or set XDG_STATE_HOME",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates a new capture at `path`, locked for writing (see the module doc).
pub fn create(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)?;
    Ok(File::from(fd))
}

/// Opens the capture at `path` for sending it: `Ok(None)` when its run is still
/// being written (locked), an error when it is not a regular file of ours.
pub fn open_finished(path: &Path) -> io::Result<Option<File>> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&fd)?;
    let file_type = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    if file_type != rustix::fs::FileType::RegularFile {
        return Err(io::Error::other("not a regular file; skipped"));
    }
    if stat.st_uid != rustix::process::geteuid().as_raw() {
        return Err(io::Error::other(format!(
            "owned by uid {}, not by you; skipped",
            stat.st_uid
        )));
    }
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(File::from(fd))),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The end of a capture whose `exec` died before writing one (its last frame
/// read, no `end`): no exit status, ended at the capture's last write, the best
/// end there is.
pub fn end_of_dead_run(capture: &File) -> super::protocol::ClientFrame {
    let ended_ms = capture
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    super::protocol::ClientFrame::End {
        exit: None,
        ended_ms,
        git_head: None,
    }
}

/// The file in an outbox that says `exec` told its user no daemon answers.
const AWAY_FLAG: &str = "daemon-away";

/// No daemon answered a run of this outbox's: true the first time since one
/// last did (the caller then says so, once).
pub fn daemon_away(dir: &Path) -> bool {
    rustix::fs::open(
        dir.join(AWAY_FLAG),
        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .is_ok()
}

/// A daemon took a run of this outbox's: the next time none answers is said again.
pub fn daemon_answered(dir: &Path) {
    let _ = fs::remove_file(dir.join(AWAY_FLAG));
}

/// The captures in `dir`, oldest first (their names start with the start time).
pub fn pending(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(CAPTURE_EXT))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_is_never_created_through_a_symlink_and_a_fifo_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "keep").unwrap();
        let link = dir.path().join("1-1.cap");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create(&link).is_err());
        assert!(open_finished(&link).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        let fifo = dir.path().join("2-2.cap");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(open_finished(&fifo).is_err(), "a FIFO is refused at once");
    }

    #[test]
    fn a_capture_being_written_is_not_taken_by_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1-1.cap");
        let writer = create(&path).unwrap();
        assert!(open_finished(&path).unwrap().is_none());
        drop(writer);
        assert!(open_finished(&path).unwrap().is_some());
    }
}
