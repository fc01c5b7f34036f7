//! A private tmux server for tests of the pipe-pane case.

use std::path::Path;
use std::process::Command;

/// A private tmux server (its own socket), killed when dropped, also when the
/// test fails.
pub struct TmuxServer {
    socket: String,
}

impl TmuxServer {
    pub fn start(socket: &str, dir: &Path) -> Option<Self> {
        let ok = Command::new("tmux")
            .args([
                "-L",
                socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "pane",
            ])
            .args(["-x", "200", "-y", "50", "-c"])
            .arg(dir)
            .arg("sh")
            .env("PS1", "$ ")
            .status()
            .ok()?
            .success();
        ok.then(|| Self {
            socket: socket.to_string(),
        })
    }

    pub fn tmux(&self, args: &[&str]) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .status()
            .expect("tmux runs");
        assert!(status.success(), "tmux {args:?} failed");
    }
}

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}
