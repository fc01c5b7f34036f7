//! A second, unprivileged local user for the tests of what one user of a
//! shared VM can do to another's data: `wisp-test-intruder`, created when the
//! tests run as root, its commands run through `setpriv`. Tests that need it
//! are skipped (with a message) when not root.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The second user's name.
pub const INTRUDER: &str = "wisp-test-intruder";

/// Whether the tests run as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `(uid, gid)` of [`INTRUDER`], creating the user if needed (idempotent:
/// another test may create it at the same moment, and the user exists either
/// way); `None`, after printing `skipped: needs root`, when not root.
pub fn intruder() -> Option<(u32, u32)> {
    if !is_root() {
        println!("skipped: needs root");
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, INTRUDER]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u").is_none() {
        let _ = Command::new("useradd")
            .args(["--system", "--no-create-home", INTRUDER])
            .status();
    }
    Some((
        id("-u").expect("cannot create the test user"),
        id("-g").expect("no gid for the test user"),
    ))
}

/// `program` run as `who` (`(uid, gid)`, no supplementary groups), with the
/// agent's environment variables cleared.
pub fn command_as(who: (u32, u32), program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", who.0))
        .arg(format!("--regid={}", who.1))
        .arg("--clear-groups")
        .arg(program);
    super::clear_agent_env(&mut cmd);
    cmd
}

/// Lets other users reach and read what a root test made under `dir` (a temp
/// dir is 0700): `dir` 0755, `files` 0644.
pub fn open_up(dir: &Path, files: &[&Path]) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in files {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// A copy of the agent binary in `dir` that any user may run (the build's
/// target dir may be out of their reach).
pub fn shared_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("wisp-agent");
    if !bin.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_wisp-agent"), &bin).unwrap();
    }
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A home for `who` under `dir` (its outbox goes there), owned by it.
pub fn home_of(dir: &Path, who: (u32, u32)) -> PathBuf {
    let home = dir.join(format!("home-{}", who.0));
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(who.0), Some(who.1)).unwrap();
    home
}

/// Runs `sh -c script` as the intruder, in `dir`, and waits for it to succeed.
pub fn as_intruder(who: (u32, u32), dir: &Path, script: &str) {
    let status = command_as(who, "sh")
        .args(["-c", script])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "as {INTRUDER}: {script}");
}

/// Starts `sh -c script` as the intruder, in `dir`.
pub fn spawn_as_intruder(who: (u32, u32), dir: &Path, script: &str) -> std::process::Child {
    command_as(who, "sh")
        .args(["-c", script])
        .current_dir(dir)
        .spawn()
        .unwrap()
}

/// Gives `path` to the intruder.
pub fn give(who: (u32, u32), path: &Path) {
    std::os::unix::fs::chown(path, Some(who.0), Some(who.1)).unwrap();
}
