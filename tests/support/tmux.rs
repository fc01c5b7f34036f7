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
        Self::start_with_env(socket, dir, &[])
    }

    /// As [`TmuxServer::start`], the pane's shell (and every command it runs)
    /// with `env` set and the agent's own variables ([`super::AGENT_ENV`])
    /// cleared: what the user's login would give it.
    pub fn start_with_env(socket: &str, dir: &Path, env: &[(&str, &str)]) -> Option<Self> {
        let mut cmd = Command::new("tmux");
        super::clear_agent_env(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let ok = cmd
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

    /// Types `line` and Enter into the pane once its shell shows a prompt. Typed
    /// before, the terminal would echo it ahead of the prompt, and the prompt
    /// would then begin the command's first line of output.
    pub fn type_line(&self, line: &str) {
        let deadline = std::time::Instant::now() + super::DEADLINE;
        loop {
            let screen = Command::new("tmux")
                .args(["-L", &self.socket, "capture-pane", "-p", "-t", "pane"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let last = screen.lines().rev().find(|l| !l.trim().is_empty());
            if last.is_some_and(|l| matches!(l.trim_end().chars().last(), Some('$' | '#'))) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the pane's shell never showed a prompt: {screen:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.tmux(&["send-keys", "-t", "pane", line, "Enter"]);
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
