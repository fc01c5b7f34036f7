//! The one place that knows `/proc` file formats: host metrics
//! ([`crate::source::host_metrics`]), the admin endpoint's `process_*`
//! families ([`crate::admin`]) and the listeners' peer users
//! ([`crate::listen::Peer`], from `net/tcp`) read through it, and nothing else
//! parses `/proc`.
//!
//! Promises: every read is capped at [`MAX_FILE_BYTES`] (a larger file is an
//! error, never a half-read one parsed as if whole); parsers are pure
//! functions of a file's text, tested on captured files and on odd text, and
//! never panic. Our own parsers rather than `procfs-core`'s: that crate's
//! parsers want every field of a file (all of `/proc/self/limits`, every
//! `meminfo` key, `ctxt` and `processes` in `/proc/stat`, 37 fields of
//! `/proc/self/stat`), read load averages as `f32` and fail a whole `mounts`
//! or `net/dev` file on one odd line, where these read as far as a file goes
//! (docs/decisions/019-proc-is-read-by-hand.md).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

mod net;
mod process;
mod system;

pub(crate) use net::tcp_socket_uid;
pub(crate) use process::ProcessStats;
pub(crate) use system::*;

/// The most read of one `/proc` file: 1 MiB, some 8000 mounts or a few
/// thousand CPUs' lines in `/proc/stat`, far past what a VM has, and a bound
/// on a sample's memory whatever a file (or a test's fake `/proc`) holds.
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 20;

/// The first read of a `/proc` file.
const READ_START_BYTES: usize = 4096;

/// Reads `path` whole, or fails: an I/O error, text that is not UTF-8, or a
/// file over [`MAX_FILE_BYTES`] (an `InvalidData` error saying so).
pub(crate) fn read(path: &Path) -> io::Result<String> {
    // Room for the files a sample reads (1 to 4 KiB on a VM): `/proc` files
    // report no size, and from an empty string the read starts at 32 bytes
    // and doubles, 8 reads where 2 do.
    let mut text = String::with_capacity(READ_START_BYTES);
    File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "larger than {} KiB, the most read of a /proc file",
                MAX_FILE_BYTES / 1024
            ),
        ));
    }
    Ok(text)
}

/// Where the agent's own process figures come from: `/proc` in the daemon
/// ([`ProcFs`]), strings in tests.
pub(crate) trait Proc: std::fmt::Debug + Send + Sync {
    /// The text of the file at `path` (`/proc/self/status`, …), `None` when it
    /// cannot be read.
    fn read(&self, path: &str) -> Option<String>;
    /// The entries of `/proc/self/fd`.
    fn open_fds(&self) -> Option<u64>;
}

/// The real `/proc`, each read capped.
#[derive(Debug)]
pub(crate) struct ProcFs;

impl Proc for ProcFs {
    fn read(&self, path: &str) -> Option<String> {
        read(Path::new(path)).ok()
    }

    fn open_fds(&self) -> Option<u64> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_up_to_the_cap_is_read_and_a_larger_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let at_cap = dir.path().join("at_cap");
        std::fs::write(&at_cap, "x".repeat(MAX_FILE_BYTES as usize)).unwrap();
        assert_eq!(read(&at_cap).unwrap().len() as u64, MAX_FILE_BYTES);
        let over = dir.path().join("over");
        std::fs::write(&over, "x".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        let e = read(&over).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("1024 KiB"), "{e}");
        assert!(read(&dir.path().join("missing")).is_err());
    }
}
