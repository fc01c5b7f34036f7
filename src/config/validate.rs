//! Validation: the semantic checks serde cannot express, each error naming the
//! key, its line where the text is at hand, and what was expected; and the check
//! that the state directory is usable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::load::{user_state_home, ConfigError};
use super::{Config, EnvSource, FileConfig, DEFAULT_STATE_DIR};

/// The line where `key = ` first appears under the given table, for errors found
/// after parsing (semantic checks).
fn find_line(text: Option<&str>, table: &str, key: &str) -> Option<usize> {
    let text = text?;
    let mut current = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            current = name.trim().to_string();
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            current = name.trim().to_string();
        } else if current == table {
            let k = t.split('=').next().unwrap_or("").trim().trim_matches('"');
            if k == key && t.contains('=') {
                return Some(i + 1);
            }
        }
    }
    None
}

impl Config {
    /// Semantic checks that serde cannot express.
    pub fn validate(&self, origin: &str, text: Option<&str>) -> Result<(), ConfigError> {
        let err = |table: &str, key: &str, shown: String, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            line: find_line(text, table, key),
            key: shown,
            message,
        };
        for name in self.agent.labels.keys() {
            if !super::is_valid_label_name(name) {
                return Err(err(
                    "agent",
                    "labels",
                    format!("agent.labels.{name}"),
                    "a label name must match [a-zA-Z_][a-zA-Z0-9_]*".into(),
                ));
            }
        }
        if self.agent.max_label_values == 0 {
            return Err(err(
                "agent",
                "max_label_values",
                "agent.max_label_values".into(),
                "expected a number of at least 1".into(),
            ));
        }
        let status = self.agent.status_interval.get();
        if !status.is_zero() && status < Duration::from_millis(100) {
            return Err(err(
                "agent",
                "status_interval",
                "agent.status_interval".into(),
                "expected \"0s\" (off) or a duration of at least \"100ms\" (the default is \"5m\")"
                    .into(),
            ));
        }
        // Durations a loop waits for: zero would spin (a warning thousands of
        // times a second, a request failing as fast as it is made).
        let spans = [
            (
                "host",
                "rediscover_interval",
                self.host.rediscover_interval.get(),
                Duration::from_secs(1),
                "60s",
            ),
            (
                "host",
                "probe_timeout",
                self.host.probe_timeout.get(),
                Duration::from_millis(10),
                "1s",
            ),
            (
                "loki",
                "timeout",
                self.loki.timeout.get(),
                Duration::from_millis(10),
                "10s",
            ),
            (
                "loki",
                "max_backoff",
                self.loki.max_backoff.get(),
                Duration::from_millis(10),
                "30s",
            ),
            (
                "otlp",
                "timeout",
                self.otlp.timeout.get(),
                Duration::from_millis(10),
                "10s",
            ),
            (
                "otlp",
                "max_backoff",
                self.otlp.max_backoff.get(),
                Duration::from_millis(10),
                "30s",
            ),
            (
                "buffer",
                "fsync_interval",
                self.buffer.fsync_interval.get(),
                Duration::from_millis(1),
                "1s",
            ),
        ];
        for (table, key, value, min, default) in spans {
            if value < min {
                return Err(err(
                    table,
                    key,
                    format!("{table}.{key}"),
                    format!(
                        "expected a duration of at least \"{}\" (the default is \"{default}\")",
                        humantime::format_duration(min)
                    ),
                ));
            }
        }
        if self.host.address.trim().is_empty() {
            return Err(err(
                "host",
                "address",
                "host.address".into(),
                "expected \"auto\" or a host name or IP address".into(),
            ));
        }
        if self.loki.enabled {
            check_url(&self.loki.url).map_err(|m| err("loki", "url", "loki.url".into(), m))?;
            if self.loki.batch_max_bytes.bytes() < 1024 {
                return Err(err(
                    "loki",
                    "batch_max_bytes",
                    "loki.batch_max_bytes".into(),
                    "expected at least \"1KiB\"".into(),
                ));
            }
        }
        if self.otlp.enabled {
            check_url(&self.otlp.endpoint)
                .map_err(|m| err("otlp", "endpoint", "otlp.endpoint".into(), m))?;
            if let Some(listen) = self.own_receiver_for(&self.otlp.endpoint) {
                return Err(err(
                    "otlp",
                    "endpoint",
                    "otlp.endpoint".into(),
                    format!(
                        "{} is the agent's own OTLP receiver ({listen}): exporting to it would loop; \
                         point it at the host's collector, e.g. \"http://{{host}}:4317\"",
                        self.otlp.endpoint
                    ),
                ));
            }
        }
        for (key, value) in [("grpc", &self.receiver.grpc), ("http", &self.receiver.http)] {
            if !value.is_empty() && value.parse::<std::net::SocketAddr>().is_err() {
                return Err(err(
                    "receiver",
                    key,
                    format!("receiver.{key}"),
                    format!("expected an address such as \"127.0.0.1:4317\" or \"\" to disable, found {value:?}"),
                ));
            }
        }
        if !self.admin.listen.is_empty()
            && self.admin.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(err(
                "admin",
                "listen",
                "admin.listen".into(),
                format!(
                    "expected an address such as \"127.0.0.1:9465\" or \"\" to disable, found {:?}",
                    self.admin.listen
                ),
            ));
        }
        if (self.host_metrics.enabled || self.host_metrics.agent_metrics)
            && self.host_metrics.interval.get() < Duration::from_millis(100)
        {
            return Err(err(
                "host_metrics",
                "interval",
                "host_metrics.interval".into(),
                "expected a duration of at least \"100ms\" (the default is \"15s\")".into(),
            ));
        }
        if self.buffer.max_bytes.bytes() < 1 << 20 {
            return Err(err(
                "buffer",
                "max_bytes",
                "buffer.max_bytes".into(),
                "expected at least \"1MiB\"".into(),
            ));
        }
        for (i, f) in self.files.iter().enumerate() {
            validate_file(i, f).map_err(|(key, message)| ConfigError::Invalid {
                origin: origin.to_string(),
                line: find_line(text, "files", key),
                key: format!("files[{i}].{key}"),
                message,
            })?;
        }
        Ok(())
    }

    /// The local receiver an OTLP endpoint would point at, if it is a loop.
    fn own_receiver_for(&self, endpoint: &str) -> Option<String> {
        let authority = endpoint.split("://").nth(1)?.split('/').next()?;
        let (host, port) = authority.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let host = host.trim_matches(|c| c == '[' || c == ']');
        let local = matches!(host, "localhost" | "127.0.0.1" | "::1" | "0.0.0.0");
        [&self.receiver.grpc, &self.receiver.http]
            .into_iter()
            .filter_map(|l| l.parse::<std::net::SocketAddr>().ok())
            .find(|a| {
                a.port() == port
                    && (local && (a.ip().is_loopback() || a.ip().is_unspecified())
                        || a.ip().to_string() == host)
            })
            .map(|a| a.to_string())
    }

    /// The state directory to use: the configured one, or, when that is the default
    /// and cannot be written (not root), `$XDG_STATE_HOME/wisp-agent` or
    /// `~/.local/state/wisp-agent`. The note says why a fallback was taken.
    pub fn resolve_state_dir(&self, env: &dyn EnvSource) -> (PathBuf, Option<String>) {
        let dir = &self.agent.state_dir;
        if dir != Path::new(DEFAULT_STATE_DIR) || is_writable_dir(dir) {
            return (dir.clone(), None);
        }
        let fallback = user_state_home(env).map(|base| base.join("wisp-agent"));
        match fallback {
            Some(f) => {
                let note = format!(
                    "{} is not writable (not root?); using {} instead (set agent.state_dir to choose)",
                    dir.display(),
                    f.display()
                );
                (f, Some(note))
            }
            None => (dir.clone(), None),
        }
    }
}

impl Config {
    /// Whether log records the local OTLP receivers take also go to Loki:
    /// `otlp.logs_to_loki` with both `[loki]` and `[otlp]` enabled (without
    /// `[otlp]` the receivers do not listen).
    pub fn logs_to_loki(&self) -> bool {
        self.otlp.logs_to_loki && self.otlp.enabled && self.loki.enabled
    }

    /// `loki` and `otlp` both disabled: `run` would ship nothing. A configuration
    /// error for `run`, `probe` and `config check` (a dry run ships nothing anyway).
    pub fn check_sinks(&self, origin: &str) -> Result<(), ConfigError> {
        if self.loki.enabled || self.otlp.enabled {
            return Ok(());
        }
        Err(ConfigError::invalid(
            origin,
            "loki.enabled",
            "loki.enabled = false and otlp.enabled = false: nothing would be shipped; \
             set loki.enabled = true (file logs to Loki) or otlp.enabled = true (the local \
             OTLP relay), or use `run --dry-run`",
        ))
    }
}

/// Whether `dir` can be the state directory: a directory the agent can write, or
/// a path that can be created as one. With `create` the directory is created and
/// a file written in it (what `run` does). Without, nothing is left behind
/// (`config check`, `probe`): a file is written and removed in the directory, or,
/// where it does not exist yet, a directory is made and removed in its nearest
/// existing ancestor. Trying beats access(2), which root always passes even
/// where a read-only mount would refuse.
pub fn check_state_dir(dir: &Path, origin: &str, create: bool) -> Result<(), ConfigError> {
    let fail = |message: String| {
        ConfigError::invalid(
            origin,
            "agent.state_dir",
            format!(
                "{message}; set agent.state_dir to a directory the agent can write \
                 (the systemd unit's StateDirectory= is /var/lib/wisp-agent)"
            ),
        )
    };
    let probe_name = format!(".wisp-agent-probe-{}", std::process::id());
    let write_probe = |d: &Path| -> Result<(), ConfigError> {
        let probe = d.join(&probe_name);
        std::fs::write(&probe, b"")
            .map_err(|e| fail(format!("cannot write in {}: {e}", d.display())))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    };
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => break,
            Ok(_) if at == dir => {
                return Err(fail(format!("{} is not a directory", dir.display())))
            }
            Ok(_) => {
                return Err(fail(format!(
                    "cannot create {}: {} is not a directory",
                    dir.display(),
                    at.display()
                )))
            }
            // Missing, or beneath a file: look further up.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match at.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                    // A relative path whose every part is missing: made in the
                    // working directory.
                    _ => {
                        at = Path::new(".");
                        break;
                    }
                }
            }
            Err(e) => return Err(fail(format!("cannot inspect {}: {e}", at.display()))),
        }
    }
    if let Some(why) = others_may_write(dir, at, create) {
        return Err(fail(why));
    }
    if at == dir {
        return write_probe(dir);
    }
    if create {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        return write_probe(dir);
    }
    let probe = at.join(&probe_name);
    std::fs::create_dir(&probe).map_err(|e| {
        fail(format!(
            "cannot create {}: cannot make a directory in {}: {e}",
            dir.display(),
            at.display()
        ))
    })?;
    let _ = std::fs::remove_dir(&probe);
    Ok(())
}

/// Why another user could change what the agent keeps in `dir` (its
/// checkpoints, its buffer), if one could: `dir` (when it exists, `at` is it)
/// writable by its group or by anyone, or, with `check_owner`, owned by
/// someone else (root aside); or the folder it is made in writable by others
/// without the sticky bit (they could rename it away and put their own in its
/// place). `at` is `dir` or, while `dir` does not exist yet, the nearest folder
/// above it that does. The owner is checked by `run` only: `config check` and
/// `probe` are often run by root against a daemon running as another user (the
/// unit's `User=wisp-agent` owns its `StateDirectory=`).
fn others_may_write(dir: &Path, at: &Path, check_owner: bool) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    if at == dir {
        let m = std::fs::metadata(dir).ok()?;
        if m.mode() & 0o022 != 0 {
            return Some(format!(
                "{} is writable by other users (mode {:o}); make it 0700: chmod 700 {0}",
                dir.display(),
                m.mode() & 0o7777
            ));
        }
        if check_owner && m.uid() != me && m.uid() != 0 {
            return Some(format!(
                "{} belongs to uid {}, not to the agent's user (uid {me}); chown it or choose another",
                dir.display(),
                m.uid()
            ));
        }
    }
    let parent = if at == dir { dir.parent()? } else { at };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let m = std::fs::metadata(parent).ok()?;
    let sticky = m.mode() & 0o1000 != 0;
    if m.mode() & 0o022 != 0 && !sticky {
        return Some(format!(
            "{} is inside {}, which other users may write to (mode {:o}, no sticky bit): \
             they could replace it",
            dir.display(),
            parent.display(),
            m.mode() & 0o7777
        ));
    }
    None
}

pub(super) fn is_writable_dir(dir: &Path) -> bool {
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!(".wisp-agent-probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn check_url(url: &str) -> Result<(), String> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.split("://").nth(1).is_some_and(|r| !r.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected an http:// or https:// URL (with {{host}} for the discovered host), found {url:?}"
        ))
    }
}

fn validate_file(_i: usize, f: &FileConfig) -> Result<(), (&'static str, String)> {
    if f.name.trim().is_empty() {
        return Err((
            "name",
            "every [[files]] entry needs a name (it becomes the `job` label)".into(),
        ));
    }
    if f.paths.is_empty() || f.paths.iter().any(|p| p.trim().is_empty()) {
        return Err((
            "paths",
            "expected at least one glob pattern such as \"/var/log/app/*.log\"".into(),
        ));
    }
    for p in &f.paths {
        if let Err(e) = glob::Pattern::new(p) {
            return Err(("paths", format!("invalid glob pattern {p:?}: {e}")));
        }
    }
    for name in f.labels.keys() {
        if !super::is_valid_label_name(name) {
            return Err((
                "labels",
                format!("label name {name:?} must match [a-zA-Z_][a-zA-Z0-9_]*"),
            ));
        }
    }
    if f.max_line_bytes.bytes() < 256 {
        return Err(("max_line_bytes", "expected at least \"256B\"".into()));
    }
    if f.multiline_max_lines == 0 {
        return Err(("multiline_max_lines", "expected at least 1".into()));
    }
    if f.poll_interval.get().is_zero() {
        return Err(("poll_interval", "expected a duration above zero".into()));
    }
    Ok(())
}
