//! Configuration: the TOML schema of `docs/REFERENCE.md` as typed structs with
//! defaults.
//!
//! Loading order: `--config FILE`, else `$WISP_AGENT_CONFIG`, else
//! `/etc/wisp-agent/config.toml`, else built-in defaults; then the environment
//! overrides of [`env`]; then [`Config::validate`]. Every error names the key, the
//! line where there is one, and what was expected.
//!
//! This file holds the schema's types and defaults; [`load`] finds, reads and
//! parses the file, [`validate`] holds the semantic checks, [`redact`] keeps
//! secrets out of what is printed.

mod env;
mod interpolate;
mod load;
mod redact;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use env::{apply_env, EnvSource, ProcessEnv};
pub use load::{load, user_state_home, ConfigError, ConfigOrigin, Loaded, DEFAULT_CONFIG_PATH};
use redact::redacted_map;
pub use redact::{redact_text, redact_url};
pub use units::{Size, Span};
pub use validate::check_state_dir;

/// The default state directory; see [`AgentConfig::state_dir`].
pub const DEFAULT_STATE_DIR: &str = "/var/lib/wisp-agent";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub host: HostConfig,
    pub loki: LokiConfig,
    pub otlp: OtlpConfig,
    pub receiver: ReceiverConfig,
    pub buffer: BufferConfig,
    pub host_metrics: HostMetricsConfig,
    pub admin: AdminConfig,
    pub exec: ExecConfig,
    pub files: Vec<FileConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Positions and the buffer live here. When the default is not writable (not
    /// root) the agent falls back to `$XDG_STATE_HOME/wisp-agent`.
    pub state_dir: PathBuf,
    /// Static labels on every log stream.
    pub labels: BTreeMap<String, String>,
    /// The `host` label; empty means the VM's hostname.
    pub hostname: String,
    /// At most this many distinct values per promoted label; past it, `other`.
    pub max_label_values: usize,
    /// A line's own timestamp older than this falls back to the read time (Loki
    /// rejects entries too far behind).
    pub timestamp_max_age: Span,
    /// A line's own timestamp further ahead than this falls back to the read time.
    pub timestamp_max_ahead: Span,
    /// `run` logs a one-line status this often; zero turns it off.
    pub status_interval: Span,
    /// How `run` writes its own log on stderr: text lines, or one JSON object
    /// a line (for a log pipeline that reads JSON).
    pub log_format: AgentLogFormat,
}

/// `agent.log_format`: the agent's own log (not `[[files]].format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentLogFormat {
    /// `2026-12-07T09:00:00.000000Z  INFO message`, coloured at a terminal.
    #[default]
    Text,
    /// `{"timestamp":…,"level":"INFO","message":…}`, one object a line.
    Json,
}

impl AgentConfig {
    /// The `host` label and `host.name`: `agent.hostname`, or when empty the VM's
    /// hostname (`localhost` if even that cannot be read).
    pub fn effective_hostname(&self) -> String {
        if self.hostname.is_empty() {
            hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into())
        } else {
            self.hostname.clone()
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            labels: BTreeMap::new(),
            hostname: String::new(),
            max_label_values: 50,
            timestamp_max_age: Span::secs(7 * 24 * 3600),
            timestamp_max_ahead: Span::secs(600),
            status_interval: Span::secs(300),
            log_format: AgentLogFormat::Text,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// `"auto"` discovers; anything else is a name or IP used as it is.
    pub address: String,
    /// Tried in order; `"gateway"` is the default route.
    pub candidates: Vec<String>,
    pub rediscover_interval: Span,
    /// How long one candidate may take to answer.
    pub probe_timeout: Span,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            address: "auto".into(),
            // Lima's host name, Docker's (Colima, containers), the default route,
            // libvirt's NAT bridge, Lima's user-mode network.
            candidates: vec![
                "host.lima.internal".into(),
                "host.docker.internal".into(),
                "gateway".into(),
                "192.168.122.1".into(),
                "192.168.5.2".into(),
            ],
            rediscover_interval: Span::secs(60),
            probe_timeout: Span::secs(1),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LokiEncoding {
    #[default]
    Protobuf,
    Json,
}

/// What becomes of entries Loki refuses as too old or too far behind their
/// stream (`loki.refused_entries`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusedEntries {
    /// Sent again at the time Loki refused them, their own time kept in the
    /// structured metadata `original_timestamp`.
    #[default]
    Rewrite,
    /// Dropped (counted).
    Drop,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LokiConfig {
    pub enabled: bool,
    /// `{host}` is replaced by the discovered host.
    pub url: String,
    pub encoding: LokiEncoding,
    /// `X-Scope-OrgID` when not empty.
    pub tenant: String,
    pub batch_max_bytes: Size,
    pub batch_max_wait: Span,
    pub basic_auth: Option<BasicAuth>,
    pub bearer_token_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) for https URLs.
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    /// Per-request timeout.
    pub timeout: Span,
    /// Cap of the exponential retry backoff.
    pub max_backoff: Span,
    /// Entries Loki refuses for their time: sent again at a time it takes, or dropped.
    pub refused_entries: RefusedEntries,
}

impl Default for LokiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: "http://{host}:3100/loki/api/v1/push".into(),
            encoding: LokiEncoding::Protobuf,
            tenant: String::new(),
            batch_max_bytes: Size::mib(1),
            batch_max_wait: Span::secs(1),
            basic_auth: None,
            bearer_token_file: None,
            ca_file: None,
            insecure_skip_verify: false,
            timeout: Span::secs(10),
            max_backoff: Span::secs(30),
            refused_entries: RefusedEntries::Rewrite,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

/// The protocol as a person reads it (`gRPC`, `HTTP/protobuf`, `HTTP/JSON`),
/// for the log.
impl std::fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Grpc => "gRPC",
            Self::HttpProtobuf => "HTTP/protobuf",
            Self::HttpJson => "HTTP/JSON",
        })
    }
}

impl OtlpProtocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            "http/json" => Some(Self::HttpJson),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    pub enabled: bool,
    /// `{host}` is replaced by the discovered host.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`); values are secrets.
    #[serde(serialize_with = "redacted_map")]
    pub headers: BTreeMap<String, String>,
    /// `service.name` of what the agent itself sends (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// Extra resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: BTreeMap<String, String>,
    /// Per-export timeout.
    pub timeout: Span,
    /// The cap of the retry backoff.
    pub max_backoff: Span,
    /// Log records received by the local receivers also go to Loki (through the
    /// Loki spool), with `[loki] enabled`; their exports to the collector then
    /// carry `x-wisp-logs-in-loki: true`.
    pub logs_to_loki: bool,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            endpoint: "http://{host}:4317".into(),
            protocol: OtlpProtocol::Grpc,
            headers: BTreeMap::new(),
            service_name: "wisp-agent".into(),
            resource_attributes: BTreeMap::new(),
            timeout: Span::secs(10),
            max_backoff: Span::secs(30),
            logs_to_loki: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Local OTLP/gRPC listener; `""` disables.
    pub grpc: String,
    /// Local OTLP/HTTP listener; `""` disables.
    pub http: String,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            grpc: "127.0.0.1:4317".into(),
            http: "127.0.0.1:4318".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync after every appended batch, before its source checkpoint moves.
    #[default]
    Batch,
    /// fsync on a timer (`buffer.fsync_interval`): faster, may replay more.
    Interval,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    pub max_bytes: Size,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Span,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_bytes: Size::mib(512),
            fsync: FsyncPolicy::Batch,
            fsync_interval: Span::secs(1),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostMetricsConfig {
    pub enabled: bool,
    /// The agent's own metrics (every family of `/metrics`) pushed over OTLP
    /// at the same `interval`, whether `enabled` (the VM's `system.*`) is on
    /// or not; needs `[otlp] enabled`.
    pub agent_metrics: bool,
    pub interval: Span,
}

impl Default for HostMetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            agent_metrics: true,
            interval: Span::secs(15),
        }
    }
}

/// The default socket `wisp-agent exec` hands its runs to the daemon through.
pub const DEFAULT_EXEC_SOCKET: &str = "/run/wisp-agent/exec.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecConfig {
    /// The daemon's Unix socket for `wisp-agent exec` (mode 0666: any local user
    /// may connect, the kernel says who). When it is the default and the agent
    /// does not run as root, `$XDG_RUNTIME_DIR/wisp-agent/exec.sock` is used.
    pub socket: PathBuf,
    /// `exec` ships its command's output (the run's lines in Loki). `false`:
    /// only the run's span; a tailed capture of the terminal then ships the
    /// lines (with the file's labels).
    pub ship_output: bool,
    /// `exec` marks each line it passes to a terminal, invisibly, so a tailer
    /// reading that terminal's capture (tmux `pipe-pane`) leaves the line to
    /// `exec` and it reaches Loki once (see `source::terminal::mark`).
    pub terminal_marks: bool,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_EXEC_SOCKET),
            ship_output: true,
            terminal_marks: true,
        }
    }
}

impl ExecConfig {
    /// The sockets to try, best first: the configured one, then (when it is the
    /// default and `XDG_RUNTIME_DIR` is set) the unprivileged daemon's fallback.
    /// The daemon binds the first when it runs as root, else the last.
    pub fn socket_candidates(&self, env: &dyn EnvSource) -> Vec<PathBuf> {
        let mut out = vec![self.socket.clone()];
        if self.socket == std::path::Path::new(DEFAULT_EXEC_SOCKET) {
            if let Some(dir) = env.var("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
                out.push(PathBuf::from(dir).join("wisp-agent").join("exec.sock"));
            }
        }
        out
    }

    /// The socket the daemon listens on (see [`ExecConfig::socket_candidates`]).
    pub fn daemon_socket(&self, env: &dyn EnvSource) -> PathBuf {
        let candidates = self.socket_candidates(env);
        if rustix::process::geteuid().is_root() {
            candidates[0].clone()
        } else {
            candidates
                .last()
                .cloned()
                .unwrap_or_else(|| self.socket.clone())
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `GET /metrics` and `GET /healthz`; `""` disables.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9465".into(),
        }
    }
}

/// How a source's lines are parsed (`[[files]].format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Decide per line: a JSON object, `key=value` pairs, else text.
    #[default]
    Auto,
    Pino,
    Json,
    Logfmt,
    Text,
}

/// Where to start in a file the agent has never seen before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    #[default]
    End,
    Beginning,
}

/// How physical lines are joined into records.
#[derive(Clone, Debug, Default)]
pub enum Multiline {
    /// A line starting with a space or tab joins the record before it; a line
    /// starting with `{` always starts a record.
    #[default]
    Auto,
    /// Every line is a record.
    None,
    /// A record starts at a line matching the pattern.
    Start(regex::Regex),
}

impl PartialEq for Multiline {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Multiline::Auto, Multiline::Auto) | (Multiline::None, Multiline::None) => true,
            (Multiline::Start(a), Multiline::Start(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Multiline {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Start {
            start: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Start(Start),
        }
        let expected = "expected \"auto\", \"none\" or { start = \"REGEX\" }";
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom(expected))? {
            Raw::Word(w) if w == "auto" => Ok(Multiline::Auto),
            Raw::Word(w) if w == "none" => Ok(Multiline::None),
            Raw::Word(w) => Err(serde::de::Error::custom(format!("{expected}, found {w:?}"))),
            Raw::Start(s) => regex::Regex::new(&s.start)
                .map(Multiline::Start)
                .map_err(|e| serde::de::Error::custom(format!("invalid start pattern: {e}"))),
        }
    }
}

impl Serialize for Multiline {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Multiline::Auto => s.serialize_str("auto"),
            Multiline::None => s.serialize_str("none"),
            Multiline::Start(re) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("start", re.as_str())?;
                m.end()
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Becomes the `job` label.
    pub name: String,
    /// Glob patterns (`*`, `**`).
    pub paths: Vec<String>,
    pub format: LogFormat,
    pub start_at: StartAt,
    /// stat fallback where file events do not fire (shared folders).
    pub poll_interval: Span,
    /// Longer lines are cut, and counted.
    pub max_line_bytes: Size,
    /// A last line without its newline is shipped after this silence.
    pub partial_line_timeout: Span,
    pub multiline: Multiline,
    /// A pending multi-line record is shipped after this silence.
    pub multiline_timeout: Span,
    pub multiline_max_lines: usize,
    /// Static labels of this entry's streams.
    pub labels: BTreeMap<String, String>,
    /// JSON fields promoted to labels (bounded by `agent.max_label_values`).
    pub label_fields: Vec<String>,
    /// Follow a symlink (in the matched path, or the file itself) whose owner does
    /// not own what it points at, and look for files through symlinks to folders
    /// below the pattern's fixed folders. Off by default: a root agent would
    /// otherwise ship any file a local user links into a folder they own
    /// (`evil.log -> /etc/shadow`), and walk wherever their links lead (`u ->
    /// /usr`). Links to a file owned by root or by the file's owner, and such
    /// links to a folder in the pattern's fixed folders, are followed either way.
    pub follow_symlinks: bool,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            paths: Vec::new(),
            format: LogFormat::Auto,
            start_at: StartAt::End,
            poll_interval: Span::secs(1),
            max_line_bytes: Size::kib(256),
            partial_line_timeout: Span::secs(5),
            multiline: Multiline::Auto,
            multiline_timeout: Span::secs(1),
            multiline_max_lines: 500,
            labels: BTreeMap::new(),
            label_fields: Vec::new(),
            follow_symlinks: false,
        }
    }
}

/// Is `name` a valid Loki label name (`[a-zA-Z_][a-zA-Z0-9_]*`)?
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces `{host}` in a URL template with the chosen host (bracketed when IPv6).
pub fn fill_host(template: &str, host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        template.replace("{host}", &format!("[{host}]"))
    } else {
        template.replace("{host}", host)
    }
}

#[cfg(test)]
mod tests;
