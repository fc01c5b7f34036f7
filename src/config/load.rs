//! Finding, reading and parsing the configuration file (validation: [`super::validate`]).

use std::path::{Path, PathBuf};

use super::{apply_env, Config, EnvSource};

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
    /// Environment variables the file's `${…}` read, by name.
    pub expanded: Vec<String>,
    /// The sha256 of the file's bytes as read (before `${…}` and the
    /// environment), lower-case hex; of no bytes for the built-in defaults.
    /// What `/status` shows, and how a reload tells an unchanged file.
    pub sha256: String,
    /// When it was read.
    pub loaded_at: std::time::SystemTime,
}

/// The sha256 of `bytes` in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
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
                match read_text(&p) {
                    Ok(t) => (ConfigOrigin::DefaultFile(p), Some(t)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        (ConfigOrigin::BuiltIn, None)
                    }
                    Err(error) => return Err(ConfigError::Read { path: p, error }),
                }
            }
        },
    };
    let loaded_at = std::time::SystemTime::now();
    let sha256 = sha256_hex(text.as_deref().unwrap_or_default().as_bytes());
    let (text, expanded) = match text {
        Some(t) => {
            let (t, names) = super::interpolate::expand(&t, &origin.to_string(), env)?;
            (Some(t.into_owned()), names)
        }
        None => (None, Vec::new()),
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
        expanded,
        sha256,
        loaded_at,
    })
}

fn read(p: &Path) -> Result<String, ConfigError> {
    read_text(p).map_err(|error| ConfigError::Read {
        path: p.to_path_buf(),
        error,
    })
}

/// Whether `meta` is `/dev/null`'s device (empty, never blocks).
fn is_dev_null(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device()
        && std::fs::metadata("/dev/null").is_ok_and(|null| null.rdev() == meta.rdev())
}

/// A configuration file is read up to this size: a real one is a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a configuration file: a regular file (a symlink to one is followed: it
/// is the admin's; `/dev/null` reads as empty), opened without blocking (a FIFO is refused, not waited
/// on), at most [`MAX_CONFIG_BYTES`] (`/dev/zero` is refused, not read), UTF-8.
fn read_text(p: &Path) -> std::io::Result<String> {
    use rustix::fs::{Mode, OFlags};
    use std::io::{Error, ErrorKind, Read};
    let fd = rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    if is_dev_null(&meta) {
        // `--config /dev/null`: the built-in defaults, on purpose.
        return Ok(String::new());
    }
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "it is a {}, not a regular file",
                crate::state_file::kind_of(&meta.file_type())
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("it is larger than {} KiB", MAX_CONFIG_BYTES / 1024),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|e| Error::new(ErrorKind::InvalidData, format!("it is not UTF-8 text: {e}")))
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
