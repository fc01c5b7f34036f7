//! Opening and reading the agent's own small state files (the tailer's
//! `positions.json`, exec's list of handed-over runs): opened like a tailed file
//! (never blocking, never a controlling terminal, never through a symlink, regular
//! files only) and read with a size cap, never whole.
//!
//! Shared by the sources that keep state, so that none imports another for it.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags, CWD};

/// How the file itself is opened: never blocking, never a controlling terminal,
/// never inherited by `exec` children, never through a symlink (links are
/// resolved by the tailer's walk, which checks them).
pub(crate) fn read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::NOFOLLOW
}

/// What a non-regular file is, for a message.
pub(crate) fn kind_of(t: &std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "special file"
    }
}

/// Creates the temporary file `tmp` to write a state file through: never
/// through a symlink or over a file someone planted (`O_CREAT|O_EXCL|
/// O_NOFOLLOW`), mode 0600 whatever the umask. A `tmp` left by a crash (or
/// planted) is removed first: unlinking a symlink removes the link, not what
/// it points at.
pub(crate) fn create_temp(tmp: &Path) -> io::Result<File> {
    let open = || {
        rustix::fs::open(
            tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
    };
    let fd = match open() {
        Err(rustix::io::Errno::EXIST) => {
            std::fs::remove_file(tmp)?;
            open()?
        }
        other => other?,
    };
    // The umask may have taken bits from the mode given; none may be added.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600))?;
    Ok(File::from(fd))
}

/// The lock a running daemon holds on its state directory: `lock` in it,
/// `flock`ed for as long as the returned file is open, holding the daemon's
/// pid. `Err(Some(pid))` (or `Err(None)` when the pid cannot be read) when
/// another process holds it: two daemons on one buffer would ship every line
/// twice and corrupt each other's checkpoints.
pub(crate) fn lock_dir(dir: &Path) -> io::Result<Result<File, Option<u32>>> {
    use std::io::{Seek, Write};
    let path = dir.join("lock");
    let fd = rustix::fs::open(
        &path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::from_raw_mode(0o600),
    )?;
    let mut file = File::from(fd);
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut text = String::new();
            let _ = (&file).take(32).read_to_string(&mut text);
            return Ok(Err(text.trim().parse().ok()));
        }
        Err(e) => return Err(e.into()),
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(Ok(file))
}

/// What [`read_capped`] found.
#[derive(Debug)]
pub(crate) enum Capped {
    Bytes(Vec<u8>),
    /// Larger than the cap (its size, or what was read before giving up).
    TooLarge(u64),
}

/// Reads a metadata file of at most `cap` bytes, opened like a tailed file (never
/// blocking, regular files only). A larger one is not read at all: a sparse
/// 1 GiB `positions.json` costs a `stat`, not a gigabyte of memory.
pub(crate) fn read_capped(path: &Path, cap: u64) -> io::Result<Capped> {
    let fd = rustix::fs::openat(CWD, path, read_flags(), Mode::empty())?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is a {}, not a regular file", kind_of(&meta.file_type())),
        ));
    }
    if meta.len() > cap {
        return Ok(Capped::TooLarge(meta.len()));
    }
    // The file may grow while it is read: take at most one byte past the cap.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Ok(Capped::TooLarge(bytes.len() as u64));
    }
    Ok(Capped::Bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_file_is_never_written_through_a_planted_symlink() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let tmp = dir.path().join("positions.json.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let mut f = create_temp(&tmp).unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&tmp).unwrap(), "new");
        let mode = std::fs::symlink_metadata(&tmp)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
    }

    #[test]
    fn a_file_over_the_cap_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::File::create(&p).unwrap().set_len(1 << 30).unwrap();
        assert!(matches!(
            read_capped(&p, 1 << 20).unwrap(),
            Capped::TooLarge(_)
        ));
        std::fs::write(&p, b"{}").unwrap();
        assert!(matches!(read_capped(&p, 1 << 20).unwrap(), Capped::Bytes(b) if b == b"{}"));
    }
}
