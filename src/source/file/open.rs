//! Opening what a glob matched without letting a local user turn a root agent
//! against the VM.
//!
//! Promises:
//! - only regular files are tailed: the last component is opened `O_NONBLOCK |
//!   O_NOCTTY | O_CLOEXEC | O_NOFOLLOW` and checked with `fstat` on the opened
//!   descriptor, so a FIFO never blocks the tailer (a non-blocking open of a FIFO
//!   for reading returns at once) and a FIFO, socket, device or directory swapped in
//!   after the glob's `stat` is still refused;
//! - every symlink on the path is checked, the literal part of the pattern and the
//!   part the glob expanded alike (a user who owns `/tmp/alloy` can replace
//!   `/tmp/alloy/logs` by a link as easily as add `evil.log`): the path is walked
//!   one component at a time with `openat(O_PATH | O_NOFOLLOW)` from the descriptor
//!   of the folder before it, and a symlink is followed only when root owns it, when
//!   its owner owns what it resolves to, or when the entry says `follow_symlinks =
//!   true`. Owners are read with `fstat` on descriptors, and each link is read
//!   through the descriptor that was checked (`readlinkat(fd, "")`), so swapping a
//!   link or a folder between the check and the open changes nothing: there is no
//!   window between them;
//! - a file in a folder of user U (not root) is tailed only if U owns it or may
//!   read it (the hard-link rule, beside the symlink owner rule): else a user
//!   could read in Loki a file they cannot read, through a hard link a root job
//!   made, or a root-only file left in their folder; `follow_symlinks = true`
//!   lifts it as it lifts the symlink rule;
//! - metadata files are read with a size cap ([`crate::state_file::read_capped`]),
//!   never whole.
//!
//! Cost: two system calls per path component, paid only when a path is opened (a
//! file not followed yet), not at every poll.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::state_file::{kind_of, read_flags};

/// Symlinks followed on one path, at most (the kernel's own limit).
const MAX_HOPS: u32 = 40;

/// How folders and links on the way are opened: a handle only, no read access
/// needed, the link itself rather than its target.
fn path_flags() -> OFlags {
    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// A regular file, open for reading.
#[derive(Debug)]
pub(crate) struct Opened {
    pub file: File,
    pub meta: Metadata,
}

/// Why a matched path is not tailed.
#[derive(Debug)]
pub(crate) enum Refused {
    /// A FIFO, socket, device or directory.
    NotRegular {
        kind: &'static str,
    },
    /// A symlink whose owner does not own its target.
    Symlink {
        link: PathBuf,
        link_uid: u32,
        target_uid: u32,
    },
    /// A file in a folder of a user who may not read it (a hard link to
    /// someone else's file, or a file another user put there).
    NotTheFoldersOwners {
        folder_uid: u32,
        file_uid: u32,
    },
    Io(io::Error),
}

impl From<Errno> for Refused {
    fn from(e: Errno) -> Self {
        Self::Io(e.into())
    }
}

impl Refused {
    /// The message logged (once) for `path`, with what would make it readable.
    pub(crate) fn message(&self, path: &Path) -> String {
        match self {
            Self::NotRegular { kind } => format!(
                "skipping {}: it is a {kind}, and only regular files are tailed",
                path.display()
            ),
            Self::Symlink {
                link,
                link_uid,
                target_uid,
            } => format!(
                "skipping {}: symlink {} is owned by uid {link_uid} but what it points at \
                 by uid {target_uid}, so it is not followed; set follow_symlinks = true in \
                 this [[files]] entry to follow it anyway",
                path.display(),
                link.display()
            ),
            Self::NotTheFoldersOwners {
                folder_uid,
                file_uid,
            } => format!(
                "skipping {}: it belongs to uid {file_uid} and lies in a folder of uid \
                 {folder_uid}, who may not read it (a hard link to another user's file?), so \
                 it is not shipped; set follow_symlinks = true in this [[files]] entry to \
                 tail it anyway",
                path.display()
            ),
            Self::Io(e) => format!(
                "cannot open {}: {}; skipping it",
                path.display(),
                describe(e)
            ),
        }
    }
}

/// An I/O error with its errno's name and what it usually means here.
pub(crate) fn describe(e: &io::Error) -> String {
    let hint = match e.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::ACCESS) => {
            "EACCES: the agent's user may not read it or search a folder above it"
        }
        Some(Errno::PERM) => "EPERM: refused by the kernel or a security module",
        Some(Errno::LOOP) => "ELOOP: too many symlinks, or a symlink where none is followed",
        Some(Errno::MFILE) => "EMFILE: the agent has too many open files; raise its LimitNOFILE",
        Some(Errno::NFILE) => "ENFILE: the system's open file table is full",
        Some(Errno::NXIO) => "ENXIO: a socket or a device without a driver",
        _ => return e.to_string(),
    };
    format!("{e} ({hint})")
}

/// Whether an error means the path is gone (rather than unreadable for now).
pub(crate) fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error())
}

/// Opens `path` for reading if it is a regular file reached through symlinks the
/// policy allows (see the module docs); `follow_any` is the entry's
/// `follow_symlinks`.
pub(crate) fn open_file(path: &Path, follow_any: bool) -> Result<Opened, Refused> {
    let start = rustix::fs::openat(CWD, ".", path_flags() | OFlags::DIRECTORY, Mode::empty())?;
    let mut walk = Walk {
        follow_any,
        hops: 0,
    };
    let fd = walk.resolve(start, PathBuf::new(), path, true)?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(Refused::Io)?;
    if !meta.is_file() {
        return Err(Refused::NotRegular {
            kind: kind_of(&meta.file_type()),
        });
    }
    Ok(Opened { file, meta })
}

/// Files of the folder `dir`, which is reached as [`open_file`] reaches a path
/// (every symlink on the way checked): the regular files among its first
/// `max_entries` entries whose names `wanted` accepts, at most `max_files` of
/// them, each opened for reading without following a symlink there (a link in
/// the folder is passed over, whoever owns it) and never blocking (a FIFO is
/// opened non-blocking and passed over, as are sockets, devices and folders).
/// The folder is listed and the files opened through one descriptor, so a
/// folder swapped for a link meanwhile changes nothing.
pub(crate) fn open_in_folder(
    dir: &Path,
    follow_any: bool,
    max_entries: usize,
    max_files: usize,
    mut wanted: impl FnMut(&OsStr) -> bool,
) -> Result<Vec<(PathBuf, Opened)>, Refused> {
    let start = rustix::fs::openat(CWD, ".", path_flags() | OFlags::DIRECTORY, Mode::empty())?;
    let mut walk = Walk {
        follow_any,
        hops: 0,
    };
    let dir_path = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let handle = walk.resolve(start, PathBuf::new(), dir_path, false)?;
    let listing = rustix::fs::openat(
        &handle,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let mut found = Vec::new();
    for entry in rustix::fs::Dir::new(listing)?.take(max_entries) {
        if found.len() >= max_files {
            break;
        }
        let Ok(entry) = entry else {
            // An entry that cannot be read: the rest of the listing may still be.
            continue;
        };
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        // The listing's type, where the file system gives one, spares an open;
        // the descriptor's `fstat` decides either way.
        let listed = entry.file_type();
        if !matches!(listed, FileType::RegularFile | FileType::Unknown) || !wanted(name) {
            continue;
        }
        // O_NOFOLLOW: a symlink fails with ELOOP and is passed over.
        let Ok(fd) = rustix::fs::openat(&handle, name, read_flags(), Mode::empty()) else {
            continue;
        };
        if !follow_any && folder_owner_may_read(&handle, &fd).is_err() {
            continue;
        }
        let file = File::from(fd);
        match file.metadata() {
            Ok(meta) if meta.is_file() => found.push((dir.join(name), Opened { file, meta })),
            _ => {}
        }
    }
    Ok(found)
}

/// The hard-link rule, beside the symlink owner rule: a file in a folder of
/// user U (not root) is tailed only if U owns it or may read it. Otherwise a
/// user could hard-link a file they cannot read (or root's 0600 file a root
/// job left there) into a folder the agent tails, and read it in Loki.
fn folder_owner_may_read(folder: &OwnedFd, file: &OwnedFd) -> Result<(), Refused> {
    let folder_uid = rustix::fs::fstat(folder)?.st_uid;
    let st = rustix::fs::fstat(file)?;
    if folder_uid == 0 || folder_uid == st.st_uid || st.st_mode & 0o004 != 0 {
        return Ok(());
    }
    if st.st_mode & 0o040 != 0 && crate::users::in_group(folder_uid, st.st_gid) {
        return Ok(());
    }
    Err(Refused::NotTheFoldersOwners {
        folder_uid,
        file_uid: st.st_uid,
    })
}

struct Walk {
    follow_any: bool,
    hops: u32,
}

impl Walk {
    /// Resolves `path` from the folder `dir` (shown as `at` in messages), checking
    /// every symlink on the way. The last component is opened for reading when
    /// `read_last`, else as a handle (a link's target that the walk goes on from).
    fn resolve(
        &mut self,
        mut dir: OwnedFd,
        mut at: PathBuf,
        path: &Path,
        read_last: bool,
    ) -> Result<OwnedFd, Refused> {
        let comps: Vec<Component<'_>> = path.components().collect();
        if comps.is_empty() {
            return Err(Errno::NOENT.into());
        }
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            let name: &OsStr = match c {
                Component::RootDir => {
                    dir = rustix::fs::openat(
                        CWD,
                        "/",
                        path_flags() | OFlags::DIRECTORY,
                        Mode::empty(),
                    )?;
                    at = PathBuf::from("/");
                    if !last {
                        continue;
                    }
                    OsStr::new(".")
                }
                Component::CurDir if !last => continue,
                Component::CurDir => OsStr::new("."),
                Component::ParentDir => OsStr::new(".."),
                Component::Normal(n) => n,
                Component::Prefix(_) => continue,
            };
            at.push(name);
            let fd = if last && read_last {
                match rustix::fs::openat(&dir, name, read_flags(), Mode::empty()) {
                    // O_NOFOLLOW: not a symlink, this is the file.
                    Ok(fd) => {
                        if !self.follow_any {
                            folder_owner_may_read(&dir, &fd)?;
                        }
                        return Ok(fd);
                    }
                    // A symlink: resolved and checked below.
                    Err(Errno::LOOP) => {
                        rustix::fs::openat(&dir, name, path_flags(), Mode::empty())?
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                rustix::fs::openat(&dir, name, path_flags(), Mode::empty())?
            };
            let st = rustix::fs::fstat(&fd)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                if last {
                    return Ok(fd);
                }
                dir = fd;
                continue;
            }
            self.hops += 1;
            if self.hops > MAX_HOPS {
                return Err(Errno::LOOP.into());
            }
            // Read through the descriptor just checked: the link that was fstat'ed
            // is the one followed, whatever happens to the path meanwhile.
            let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
            let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
            let mut from = at.clone();
            from.pop();
            let parent = dir.try_clone().map_err(Refused::Io)?;
            let resolved = self.resolve(parent, from, &target, last && read_last)?;
            let target_uid = rustix::fs::fstat(&resolved)?.st_uid;
            let link_uid = st.st_uid;
            if !(self.follow_any || link_uid == 0 || link_uid == target_uid) {
                return Err(Refused::Symlink {
                    link: at,
                    link_uid,
                    target_uid,
                });
            }
            if last {
                return Ok(resolved);
            }
            dir = resolved;
        }
        // The last component was a `..` or `.` handled above: unreachable, but
        // an error is a safe answer.
        Err(Errno::NOENT.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pipe.log");
        rustix::fs::mkfifoat(CWD, &p, Mode::from_raw_mode(0o600)).unwrap();
        match open_file(&p, false) {
            Err(Refused::NotRegular { kind }) => assert_eq!(kind, "FIFO"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn own_symlinks_to_files_and_folders_are_followed() {
        // Run as any user: the links and their targets share an owner.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/a.log"), b"x\n").unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("via")).unwrap();
        std::os::unix::fs::symlink("../real/a.log", dir.path().join("real/b.log")).unwrap();
        let a = open_file(&dir.path().join("via/a.log"), false).unwrap();
        let b = open_file(&dir.path().join("via/b.log"), false).unwrap();
        assert_eq!(a.meta.len(), 2);
        assert_eq!(b.meta.len(), 2);
        let rel = open_file(&dir.path().join("real/./../real/a.log"), false).unwrap();
        assert_eq!(rel.meta.len(), 2);
    }

    #[test]
    fn a_folder_lists_regular_files_only_without_following_links_or_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("app.log.1"), b"copy\n").unwrap();
        std::fs::write(d.join("other.log"), b"x\n").unwrap();
        std::fs::create_dir(d.join("app.log.d")).unwrap();
        rustix::fs::mkfifoat(CWD, d.join("app.log.pipe"), Mode::from_raw_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("app.log.1", d.join("app.log.link")).unwrap();
        let all = |_: &OsStr| true;
        let mut got: Vec<String> = open_in_folder(d, false, 100, 100, all)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        got.sort();
        assert_eq!(got, ["app.log.1", "other.log"]);
        let only = |n: &OsStr| n.as_bytes().starts_with(b"app.log");
        let got = open_in_folder(d, false, 100, 100, only).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, d.join("app.log.1"));
        assert_eq!(got[0].1.meta.len(), 5);
        // Bounded: the entries looked at and the files opened.
        assert!(open_in_folder(d, false, 100, 1, all).unwrap().len() == 1);
        assert!(open_in_folder(d, false, 0, 100, all).unwrap().is_empty());
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
        match open_file(&dir.path().join("a"), false) {
            Err(Refused::Io(e)) => assert_eq!(e.raw_os_error(), Some(Errno::LOOP.raw_os_error())),
            other => panic!("{other:?}"),
        }
    }
}
