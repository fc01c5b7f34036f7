//! Finding, reading and validating the configuration file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{apply_env, Config, EnvSource, FileConfig, DEFAULT_STATE_DIR};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/wisp-agent/config.toml";

/// A configuration error: names the key, the line where there is one, and what was
/// expected. Exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}", describe(.origin, *.line, .key, .message))]
    Invalid {
        /// The file, or the environment variable, the value came from.
        origin: String,
        line: Option<usize>,
        /// Dotted path of the key, e.g. `loki.batch_max_wait` or `files[0].name`.
        key: String,
        message: String,
    },
}

fn describe(origin: &str, line: Option<usize>, key: &str, message: &str) -> String {
    match line {
        Some(line) => {
            format!("invalid configuration: {origin} line {line}: key `{key}`: {message}")
        }
        None => format!("invalid configuration: {origin}: key `{key}`: {message}"),
    }
}

impl ConfigError {
    pub(crate) fn invalid(
        origin: &str,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            origin: origin.to_string(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Where the configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// `--config FILE` or `$WISP_AGENT_CONFIG`.
    File(PathBuf),
    /// `/etc/wisp-agent/config.toml`.
    DefaultFile(PathBuf),
    /// No file: built-in defaults.
    BuiltIn,
}

impl std::fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigOrigin::File(p) | ConfigOrigin::DefaultFile(p) => write!(f, "{}", p.display()),
            ConfigOrigin::BuiltIn => f.write_str("built-in defaults"),
        }
    }
}

/// A configuration ready to use, and what shaped it.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub origin: ConfigOrigin,
    /// Environment variables that overrode the file, by name.
    pub env_overrides: Vec<String>,
}

/// Finds and reads the configuration, applies the environment, validates.
pub fn load(explicit: Option<&Path>, env: &dyn EnvSource) -> Result<Loaded, ConfigError> {
    let (origin, text) = match explicit {
        Some(p) => (ConfigOrigin::File(p.to_path_buf()), Some(read(p)?)),
        None => match env.var("WISP_AGENT_CONFIG").filter(|v| !v.is_empty()) {
            Some(p) => {
                let p = PathBuf::from(p);
                (ConfigOrigin::File(p.clone()), Some(read(&p)?))
            }
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG_PATH);
                match std::fs::read_to_string(&p) {
                    Ok(t) => (ConfigOrigin::DefaultFile(p), Some(t)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        (ConfigOrigin::BuiltIn, None)
                    }
                    Err(error) => return Err(ConfigError::Read { path: p, error }),
                }
            }
        },
    };
    let mut config = match &text {
        Some(t) => parse_toml(t, &origin.to_string())?,
        None => Config::default(),
    };
    let env_overrides = apply_env(&mut config, env)?;
    config.validate(&origin.to_string(), text.as_deref())?;
    Ok(Loaded {
        config,
        origin,
        env_overrides,
    })
}

fn read(p: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(p).map_err(|error| ConfigError::Read {
        path: p.to_path_buf(),
        error,
    })
}

/// Parses TOML text, turning serde's error into one that names the key and line.
pub fn parse_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
    toml::from_str::<Config>(text).map_err(|e| {
        let span = e.span();
        let line = span.as_ref().map(|s| line_of(text, s.start));
        let key = span
            .as_ref()
            .map(|s| key_path_at(text, s.start))
            .unwrap_or_default();
        let message = e.message().trim().replace('\n', " ");
        let message = message
            .strip_prefix("unknown field")
            .map(|rest| format!("unknown key{rest}"))
            .unwrap_or(message);
        ConfigError::Invalid {
            origin: origin.to_string(),
            line,
            key: if key.is_empty() {
                "(document)".into()
            } else {
                key
            },
            message,
        }
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key at a byte offset: the nearest `[table]` header above it, plus the
/// key on that line (`files[1].poll_interval`).
fn key_path_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let mut table = String::new();
    let mut array_counts: std::collections::HashMap<String, usize> = Default::default();
    let mut array_index = None;
    for l in text[..line_start].lines() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = array_counts.entry(name.clone()).or_insert(0);
            array_index = Some(*n);
            *n += 1;
            table = name;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
            array_index = None;
        }
    }
    let prefix = match array_index {
        Some(i) => format!("{table}[{i}]"),
        None => table,
    };
    if line.starts_with('[') {
        // The error is about the table itself (an unknown section).
        let name = line.trim_matches(|c| c == '[' || c == ']').trim();
        return name.to_string();
    }
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"')
        .to_string();
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => prefix,
        (false, false) => format!("{prefix}.{key}"),
    }
}

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
        if self.host_metrics.enabled
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

fn is_writable_dir(dir: &Path) -> bool {
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

/// The calling user's state folder: `$XDG_STATE_HOME`, else `~/.local/state`;
/// `None` without either.
pub fn user_state_home(env: &dyn EnvSource) -> Option<PathBuf> {
    env.var("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env.var("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })
}

#[cfg(test)]
mod tests;
