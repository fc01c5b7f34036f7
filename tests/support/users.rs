//! A second local user for tests of a root agent on a shared VM: files and
//! trees made by someone the agent must not trust. Tests that need it are
//! skipped (with a message) when they do not run as root.

use std::path::Path;
use std::process::{Child, Command};

/// The unprivileged user the tests act as (created if missing).
pub const INTRUDER: &str = "wisp-test-intruder";

/// The intruder's uid and gid, creating the user if missing; `None` (the
/// test is skipped, and says so) when not root.
pub fn intruder() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: needs root (to act as a second user)");
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, INTRUDER]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u").is_none() {
        // Another test may be creating it at the same moment: the second
        // useradd fails, and the user exists either way.
        let _ = Command::new("useradd")
            .args(["--system", "--no-create-home", INTRUDER])
            .status();
    }
    Some((
        id("-u").expect("intruder user"),
        id("-g").expect("intruder group"),
    ))
}

fn command(who: (u32, u32), dir: &Path, script: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", who.0))
        .arg(format!("--regid={}", who.1))
        .arg("--clear-groups")
        .args(["sh", "-c", script])
        .current_dir(dir);
    cmd
}

/// Runs `sh -c script` as the intruder, in `dir`, and waits for it to succeed.
pub fn as_intruder(who: (u32, u32), dir: &Path, script: &str) {
    let status = command(who, dir, script).status().unwrap();
    assert!(status.success(), "as {INTRUDER}: {script}");
}

/// Starts `sh -c script` as the intruder, in `dir`.
pub fn spawn_as_intruder(who: (u32, u32), dir: &Path, script: &str) -> Child {
    command(who, dir, script).spawn().unwrap()
}

/// Gives `path` to the intruder.
pub fn give(who: (u32, u32), path: &Path) {
    rustix::fs::chown(
        path,
        Some(rustix::process::Uid::from_raw(who.0)),
        Some(rustix::process::Gid::from_raw(who.1)),
    )
    .unwrap();
}
