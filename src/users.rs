//! The system's users and groups, as `/etc/passwd` and `/etc/group` say (each
//! read with a size cap, a file that cannot be read taken as empty): a user's
//! name for the `user` label, the homes whose outboxes the daemon looks into,
//! and group membership for the tailer's hard-link rule.

use std::path::{Path, PathBuf};

/// Each file is read up to this size.
const MAX_BYTES: u64 = 4 << 20;

/// Entries read of each file, at most.
const MAX_ENTRIES: usize = 65_536;

fn read(path: &str) -> String {
    match crate::state_file::read_capped(Path::new(path), MAX_BYTES) {
        Ok(crate::state_file::Capped::Bytes(b)) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    }
}

/// `passwd` entries: (name, uid, gid, home).
fn passwd() -> Vec<(String, u32, u32, String)> {
    read("/etc/passwd")
        .lines()
        .take(MAX_ENTRIES)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
                f.get(5)?.to_string(),
            ))
        })
        .collect()
}

/// The name of `uid`, or the uid as text.
pub fn user_name(uid: u32) -> String {
    passwd()
        .into_iter()
        .find(|(name, id, _, _)| *id == uid && !name.is_empty())
        .map_or_else(|| uid.to_string(), |(name, ..)| name)
}

/// `(uid, home)` of each user with an absolute home other than `/`.
pub fn homes() -> Vec<(u32, PathBuf)> {
    passwd()
        .into_iter()
        .filter(|(_, _, _, home)| home.starts_with('/') && home != "/")
        .map(|(_, uid, _, home)| (uid, PathBuf::from(home)))
        .collect()
}

/// Whether `uid` is in group `gid`: as its primary group, or as a member
/// listed in `/etc/group`.
pub fn in_group(uid: u32, gid: u32) -> bool {
    let users = passwd();
    let Some((name, _, primary, _)) = users.iter().find(|(_, id, _, _)| *id == uid) else {
        return false;
    };
    if *primary == gid {
        return true;
    }
    read("/etc/group")
        .lines()
        .take(MAX_ENTRIES)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some((f.get(2)?.parse::<u32>().ok()?, f.get(3)?.to_string()))
        })
        .any(|(g, members)| g == gid && members.split(',').any(|m| m == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_named_and_in_its_group() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "4000000000");
        assert!(in_group(0, 0));
        assert!(!in_group(4_000_000_000, 0));
    }
}
