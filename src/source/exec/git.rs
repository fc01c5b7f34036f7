//! The commit of HEAD of the git work tree `exec` runs in (its working
//! directory), read before the command starts and after it ends, so the run's
//! span says what the iteration committed.
//!
//! `git rev-parse --verify HEAD`, its stdin and stderr closed, killed after
//! [`GIT_TIMEOUT`]: no git binary, no work tree, a repository without commits,
//! one git refuses (`safe.directory`) or a git that hangs give nothing, silently,
//! and delay the command by at most the bound.

use std::process::Stdio;
use std::time::Duration;

/// How long `git rev-parse` may take (it takes milliseconds).
pub const GIT_TIMEOUT: Duration = Duration::from_millis(500);

/// A commit hash as git prints it: 40 (SHA-1) or 64 (SHA-256) lowercase hex.
pub fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// HEAD's commit in the current directory's work tree, if there is one.
pub async fn head() -> Option<String> {
    let mut git = tokio::process::Command::new("git");
    git.args(["rev-parse", "--verify", "--quiet", "HEAD"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(GIT_TIMEOUT, git.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let commit = text.trim();
    is_commit(commit).then(|| commit.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_commit_hashes_are_commits() {
        assert!(is_commit(&"a".repeat(40)));
        assert!(is_commit(&"0123456789abcdef".repeat(4)));
        for s in [
            "",
            "HEAD",
            &"A".repeat(40),
            &"a".repeat(39),
            &"g".repeat(40),
        ] {
            assert!(!is_commit(s), "{s}");
        }
    }
}
