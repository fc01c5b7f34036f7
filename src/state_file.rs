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
