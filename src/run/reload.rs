//! SIGHUP: the configuration read again, as `run` first read it (the same
//! file, the process's environment), and judged: invalid (logged once at
//! ERROR as `config check` says it, the configuration in effect kept),
//! unchanged (the same sha256 of the file's bytes: logged, nothing restarted)
//! or new (the daemon restarts its pipelines on it, [`super::daemon`]). What
//! only a restart can change (`agent.state_dir`: the state directory stays
//! locked; `agent.log_format`: the log is set up once) is logged naming the key
//! and kept.
//!
//! Promises: the families here ([`FAMILIES`]) say which configuration is in
//! effect (`wisp_config_hash{sha256}`), when it was read, whether the last
//! reload took, and how many did; `/status` is built from them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::config::{self, ConfigOrigin, Loaded, ProcessEnv};
use crate::metric::{by, counter, encode, gauge, labelled, names, one, single, Family, Registry};

/// What a reload came to, as `wisp_config_reloads_total{result}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    /// A new configuration is in effect.
    Ok,
    /// It could not be read, or was invalid, or the pipelines could not start
    /// on it: the one in effect was kept.
    Failed,
    /// The file's bytes are those in effect.
    Unchanged,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// The configuration in effect and the reloads so far, shared with the
/// metric readers; lives as long as `run`.
#[derive(Debug)]
pub(crate) struct ConfigState {
    /// The sha256 of the configuration in effect and when it was read (seconds
    /// since the Unix epoch).
    applied: Mutex<(String, f64)>,
    last_ok: AtomicBool,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
}

impl ConfigState {
    /// The configuration `run` started with.
    pub(super) fn new(loaded: &Loaded) -> Arc<Self> {
        Self::with(&loaded.sha256, loaded.loaded_at)
    }

    /// A configuration of that sha256 read at `loaded_at`, no reload yet.
    pub(crate) fn with(sha256: &str, loaded_at: SystemTime) -> Arc<Self> {
        let reloads = [Outcome::Ok, Outcome::Failed, Outcome::Unchanged]
            .into_iter()
            .map(|o| (o.label(), 0))
            .collect();
        Arc::new(Self {
            applied: Mutex::new((sha256.to_string(), unix_secs(loaded_at))),
            last_ok: AtomicBool::new(true),
            reloads: Mutex::new(reloads),
        })
    }

    /// Counts a reload; with `Ok` or `Unchanged`, `loaded` is what is in effect
    /// from now on, read at its `loaded_at`.
    pub(crate) fn count(&self, outcome: Outcome, loaded: Option<&Loaded>) {
        if let Ok(mut r) = self.reloads.lock() {
            *r.entry(outcome.label()).or_default() += 1;
        }
        self.last_ok
            .store(outcome != Outcome::Failed, Ordering::Relaxed);
        if let (Some(loaded), Outcome::Ok | Outcome::Unchanged) = (loaded, outcome) {
            if let Ok(mut a) = self.applied.lock() {
                *a = (loaded.sha256.clone(), unix_secs(loaded.loaded_at));
            }
        }
    }

    /// Registers [`FAMILIES`] (slot `config`).
    pub(crate) fn register(self: &Arc<Self>, metrics: &mut Registry) {
        let state = self.clone();
        metrics.add("config", names(FAMILIES), move |out| {
            encode(out, FAMILIES, &single(state.as_ref()))
        });
    }

    fn applied(&self) -> (String, f64) {
        self.applied
            .lock()
            .map(|a| a.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

/// The configuration's families, as Prometheus and Alloy name theirs.
pub(crate) const FAMILIES: &[Family<ConfigState>] = &[
    gauge(
        "wisp_config_hash",
        "The configuration in effect: the sha256 of its file's bytes (of none for the built-in defaults), as a label; always 1.",
        |s| vec![labelled([("sha256", s.applied().0.into())], 1)],
    ),
    gauge(
        "wisp_config_last_reload_success_timestamp_seconds",
        "When the configuration in effect was read (at start, or by the last SIGHUP that read a valid one), in seconds since the Unix epoch.",
        |s| one(s.applied().1),
    ),
    gauge(
        "wisp_config_last_reload_successful",
        "1 when the last SIGHUP read a valid configuration (or none came), 0 when it was refused and the one before kept.",
        |s| one(u64::from(s.last_ok.load(Ordering::Relaxed))),
    ),
    counter(
        "wisp_config_reloads_total",
        "SIGHUPs handled, by result: ok (a new configuration in effect), unchanged (the same file), failed (unreadable, invalid, or its pipelines could not start: the one before kept).",
        |s| by("result", &s.reloads),
    ),
];

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Reads the configuration again, as `run` first found it: `Some` when it is
/// valid and differs from `current` (with what only a restart changes set back
/// to `current`'s, each logged); `None` when it is invalid (logged at ERROR)
/// or unchanged (logged), counted in `state`.
pub(super) fn read_again(current: &Loaded, state: &ConfigState) -> Option<Loaded> {
    let explicit = match &current.origin {
        ConfigOrigin::File(p) => Some(p.as_path()),
        ConfigOrigin::DefaultFile(_) | ConfigOrigin::BuiltIn => None,
    };
    let read = config::load(explicit, &ProcessEnv)
        .map_err(anyhow::Error::from)
        .and_then(|new| {
            new.config.check_sinks(&new.origin.to_string())?;
            clients(&new.config)?;
            Ok(new)
        });
    let mut new = match read {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(
                "SIGHUP: {e:#}; the configuration in effect (sha256 {}) is kept",
                short(&current.sha256)
            );
            state.count(Outcome::Failed, None);
            return None;
        }
    };
    if new.sha256 == current.sha256 && new.origin == current.origin {
        tracing::info!(
            "SIGHUP: {} is unchanged (sha256 {}); nothing to reload",
            new.origin,
            short(&new.sha256)
        );
        state.count(Outcome::Unchanged, Some(&new));
        return None;
    }
    keep_restart_only(current, &mut new);
    Some(new)
}

/// Makes the sinks' clients as the pipelines will, and drops them: what
/// validation does not read (a CA file, a client certificate) fails here,
/// before the pipelines in effect stop, not after.
fn clients(config: &config::Config) -> anyhow::Result<()> {
    if config.loki.enabled {
        crate::sink::loki::LokiClient::new(&config.loki)?;
    }
    if config.otlp.enabled {
        let settings = crate::sink::otlp::OtlpSinkSettings::from_config(&config.otlp);
        crate::sink::otlp::OtlpClient::new(&settings)?;
    }
    Ok(())
}

/// Sets back what only a restart changes, naming each key.
fn keep_restart_only(current: &Loaded, new: &mut Loaded) {
    let (was, now) = (&current.config.agent, &mut new.config.agent);
    if was.state_dir != now.state_dir {
        tracing::warn!(
            "SIGHUP: agent.state_dir changed to {} in {}; it takes effect at the next restart \
             (the state directory stays locked while the agent runs): {} is kept",
            now.state_dir.display(),
            new.origin,
            was.state_dir.display()
        );
        now.state_dir = was.state_dir.clone();
    }
    if was.log_format != now.log_format {
        tracing::warn!(
            "SIGHUP: agent.log_format changed in {}; it takes effect at the next restart",
            new.origin
        );
        now.log_format = was.log_format;
    }
}

/// What changed in `[[files]]`, for the log: entries added, removed, changed
/// (by name).
pub(super) fn files_changed(was: &config::Config, now: &config::Config) -> String {
    let find = |c: &config::Config, name: &str| c.files.iter().find(|f| f.name == name).cloned();
    let mut parts = Vec::new();
    for f in &now.files {
        match find(was, &f.name) {
            None => parts.push(format!("+{}", f.name)),
            Some(old) if old != *f => parts.push(format!("~{}", f.name)),
            Some(_) => {}
        }
    }
    for f in &was.files {
        if find(now, &f.name).is_none() {
            parts.push(format!("-{}", f.name));
        }
    }
    if parts.is_empty() {
        "[[files]] unchanged".to_string()
    } else {
        format!("[[files]] {}", parts.join(" "))
    }
}

/// The first 12 hex digits of a sha256, as the log shows it.
pub(super) fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}
