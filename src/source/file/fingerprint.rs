//! File identity: device + inode, confirmed by a fingerprint of the first bytes.
//!
//! The inode alone is not enough (a deleted file's inode is reused by the next file
//! created), and the first bytes alone are not either (log files that start alike
//! collide). Together they tell rename-and-create, copytruncate, truncation and
//! inode reuse apart. A file shorter than [`FINGERPRINT_BYTES`] is still tailed: its
//! fingerprint covers what exists and is extended as the file grows, so a new small
//! file is never left unread waiting for enough bytes.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

/// How many leading bytes the fingerprint covers, at most.
pub(crate) const FINGERPRINT_BYTES: usize = 256;

/// Device and inode: which file this is, whatever its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FileId {
    pub dev: u64,
    pub inode: u64,
}

impl FileId {
    pub(crate) fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            inode: meta.ino(),
        }
    }
}

/// A hash of the first `len` bytes of a file (`len` ≤ [`FINGERPRINT_BYTES`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Fingerprint {
    pub len: u32,
    pub hash: u64,
}

impl Fingerprint {
    /// Fingerprints the first bytes of `file` as they are now.
    pub(crate) fn of_file(file: &File) -> io::Result<Self> {
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let n = read_prefix(file, &mut buf)?;
        Ok(Self::of_bytes(&buf[..n]))
    }

    pub(crate) fn of_bytes(bytes: &[u8]) -> Self {
        Self {
            len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            hash: fnv1a(bytes),
        }
    }

    /// Whether it covers all the bytes it ever will.
    pub(crate) fn is_complete(&self) -> bool {
        self.len as usize >= FINGERPRINT_BYTES
    }

    /// Whether `file` still starts with the bytes this fingerprint was taken of. A
    /// file now shorter than the fingerprint does not (it was truncated or is another
    /// file).
    pub(crate) fn matches(&self, file: &File) -> io::Result<bool> {
        let len = (self.len as usize).min(FINGERPRINT_BYTES);
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let n = read_prefix(file, &mut buf[..len])?;
        Ok(n == len && fnv1a(&buf[..n]) == self.hash)
    }
}

/// Reads from offset 0 until `buf` is full or the file ends.
fn read_prefix(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// FNV-1a, 64 bit: stable across Rust versions and platforms, which the checkpoint
/// file needs (std's `DefaultHasher` promises neither).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_short_file_is_fingerprinted_by_what_exists_and_still_matches_as_it_grows() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"hello\n").unwrap();
        let fp = Fingerprint::of_file(&f).unwrap();
        assert_eq!(fp.len, 6);
        assert!(!fp.is_complete());
        f.write_all(&[b'x'; 1000]).unwrap();
        assert!(fp.matches(&f).unwrap());
        let full = Fingerprint::of_file(&f).unwrap();
        assert!(full.is_complete());
        assert!(full.matches(&f).unwrap());
    }

    #[test]
    fn a_truncated_file_no_longer_matches() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[b'a'; 300]).unwrap();
        let fp = Fingerprint::of_file(&f).unwrap();
        f.set_len(0).unwrap();
        assert!(!fp.matches(&f).unwrap());
        f.write_all_at(&[b'b'; 300], 0).unwrap();
        assert!(!fp.matches(&f).unwrap());
    }
}
