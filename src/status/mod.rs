//! The running daemon's status: what `GET /status` serves (JSON, [`Status`],
//! `"version": 1`), what `wisp-agent status` prints from it
//! ([`crate::command::status`]), and the one line `run` logs every
//! `agent.status_interval` ([`periodic`]).
//!
//! Promises: a status is built from the same [`Reading`]s `/metrics` renders
//! ([`build`]), so it never says something the metrics do not (exec runs
//! included, whatever stage declares them), plus what no family holds: the
//! health `/healthz` reports and each sink's last error (redacted: no URL
//! userinfo).
//! The summary and the periodic line are rendered by the same code
//! ([`render`]) from the same [`Status`]. The JSON keys are stable within a
//! `version`; a field may be added, none renamed or dropped. Every struct
//! reads with defaults, so a `status` of another version still prints what it
//! knows.

pub mod periodic;
pub mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::metric::{Reading, Sample};

/// The version of the `/status` document.
pub const VERSION: u32 = 1;

/// The whole `/status` document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub version: u32,
    pub agent: AgentStatus,
    /// The configuration in effect; `null` from a daemon that predates it.
    pub config: Option<ConfigStatus>,
    pub health: Health,
    pub host: HostStatus,
    /// The tailer; `null` with `loki.enabled = false` (files are not tailed).
    pub files: Option<FilesStatus>,
    /// The Loki sink; `null` with `loki.enabled = false`.
    pub loki: Option<LokiStatus>,
    /// The OTLP relay; `null` with `otlp.enabled = false`.
    pub otlp: Option<OtlpStatus>,
    pub exec: ExecStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStatus {
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started; `null` when `/proc` could not say.
    pub uptime_seconds: Option<f64>,
}

/// The configuration in effect (the `wisp_config_*` families).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigStatus {
    /// The sha256 of its file's bytes, lower-case hex (of no bytes for the
    /// built-in defaults).
    pub sha256: String,
    /// When it was read (at start, or by the last SIGHUP that read a valid
    /// one), in seconds since the Unix epoch.
    pub loaded_at: f64,
    /// Seconds since then.
    pub loaded_seconds_ago: f64,
    /// Whether the last SIGHUP read a valid configuration (`true` when none
    /// came).
    pub last_reload_ok: bool,
    /// SIGHUPs handled, by result (`ok`, `unchanged`, `failed`).
    pub reloads: BTreeMap<String, u64>,
}

/// `/healthz`'s verdict.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    pub ok: bool,
    /// Why not, as `/healthz` says it (a buffer that cannot append).
    pub problem: Option<String>,
}

/// The host discovery chose; both `null` while no candidate answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostStatus {
    /// The candidate as configured (`host.lima.internal`, `gateway`, an IP).
    pub candidate: Option<String>,
    /// Its address.
    pub address: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesStatus {
    /// Files tailed now.
    pub open: u64,
    pub lines_read: u64,
    pub bytes_read: u64,
}

/// One buffer (spool): what waits in it, its bound, what it dropped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BufferStatus {
    /// Bytes not yet acknowledged by the sink.
    pub bytes: u64,
    /// Its bound (its share of `buffer.max_bytes`).
    pub max_bytes: u64,
    /// Records dropped unshipped because it reached its bound.
    pub records_dropped: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LokiStatus {
    /// Log entries Loki took.
    pub records_shipped: u64,
    pub bytes_shipped: u64,
    pub buffer: BufferStatus,
    /// Seconds since Loki last took a push; `null` before the first.
    pub last_push_seconds_ago: Option<f64>,
    pub retries: u64,
    /// Log entries Loki rejected for good (4xx), dropped.
    pub records_rejected: u64,
    /// Log entries Loki refused one by one (all causes, each refusal).
    pub records_refused: u64,
    /// Of those, sent again changed (a new time, a cut line).
    pub records_rewritten: u64,
    pub records_possibly_duplicated: u64,
    /// The last failed try or rejection, redacted; `null` before the first.
    pub last_error: Option<String>,
    /// Seconds since `last_error`; `null` before the first.
    pub last_error_seconds_ago: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OtlpStatus {
    /// OTLP requests the local receivers took (all signals).
    pub requests_received: u64,
    /// Received requests the collector took.
    pub requests_shipped: u64,
    pub bytes_shipped: u64,
    pub buffer: BufferStatus,
    /// Seconds since the collector last took an export; `null` before the first.
    pub last_export_seconds_ago: Option<f64>,
    pub retries: u64,
    /// Requests the collector refused for good, dropped.
    pub requests_rejected: u64,
    /// The last failed try or refusal, redacted; `null` before the first.
    pub last_error: Option<String>,
    /// Seconds since `last_error`; `null` before the first.
    pub last_error_seconds_ago: Option<f64>,
}

/// `wisp-agent exec` runs the daemon took (the `wisp_exec_*` families).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecStatus {
    pub runs: u64,
    /// Per `--name`, in name order; empty before the first run.
    pub jobs: Vec<ExecJob>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecJob {
    pub job: String,
    pub runs: u64,
    /// Runs by exit status (`"0"`, `"1"`, `"137"`, `"unknown"`).
    pub exit_codes: BTreeMap<String, u64>,
    /// Wall time of the ended runs.
    pub run_seconds: f64,
    /// The cost the runs' commands reported.
    pub cost_usd: f64,
}

/// What a status needs beyond the readings (no family holds it).
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// `/healthz`'s problem, if any.
    pub problem: Option<String>,
    pub loki_last_error: Option<String>,
    /// When it happened, in seconds since the Unix epoch.
    pub loki_last_error_at: Option<f64>,
    pub otlp_last_error: Option<String>,
    pub otlp_last_error_at: Option<f64>,
    /// Whether the file-log pipeline (Loki) and the relay (OTLP) run.
    pub logs: bool,
    pub relay: bool,
}

/// Builds the status from a reading of the agent's metrics (what `/metrics`
/// serves), the extras, and the time now.
pub fn build(readings: &[Reading], extras: &Extras, now: SystemTime) -> Status {
    let metrics = Readings(readings);
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let ago = |at: Option<f64>| at.filter(|&t| t > 0.0).map(|t| (now - t).max(0.0));
    let redact = |e: &Option<String>| e.as_deref().map(crate::config::redact_text);
    let spool = |name: &str| {
        let of = [("spool", name)];
        BufferStatus {
            bytes: metrics.value("wisp_spool_bytes_buffered", &of) as u64,
            max_bytes: metrics.value("wisp_spool_max_bytes", &of) as u64,
            records_dropped: metrics.value("wisp_spool_records_dropped_total", &of) as u64,
        }
    };
    let host = metrics.samples("wisp_host_info").next();
    Status {
        version: VERSION,
        agent: AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: metrics
                .get("process_start_time_seconds", &[])
                .map(|start| (now - start).max(0.0)),
        },
        config: config_status(&metrics, now),
        health: Health {
            ok: extras.problem.is_none(),
            problem: extras.problem.clone(),
        },
        host: HostStatus {
            candidate: host.and_then(|s| label(s, "candidate")).map(str::to_string),
            address: host.and_then(|s| label(s, "host")).map(str::to_string),
        },
        files: extras.logs.then(|| FilesStatus {
            open: metrics.value("wisp_file_files_open", &[]) as u64,
            lines_read: metrics.value("wisp_file_lines_read_total", &[]) as u64,
            bytes_read: metrics.value("wisp_file_bytes_read_total", &[]) as u64,
        }),
        loki: extras.logs.then(|| LokiStatus {
            records_shipped: metrics.value("wisp_loki_records_shipped_total", &[]) as u64,
            bytes_shipped: metrics.value("wisp_loki_bytes_shipped_total", &[]) as u64,
            buffer: spool("loki"),
            last_push_seconds_ago: ago(metrics.get("wisp_loki_last_push_timestamp_seconds", &[])),
            retries: metrics.value("wisp_loki_retries_total", &[]) as u64,
            records_rejected: metrics.sum("wisp_loki_records_dropped_total", &[]) as u64,
            records_refused: metrics.sum("wisp_loki_records_refused_total", &[]) as u64,
            records_rewritten: metrics.sum("wisp_loki_records_rewritten_total", &[]) as u64,
            records_possibly_duplicated: metrics
                .value("wisp_loki_records_possibly_duplicated_total", &[])
                as u64,
            last_error: redact(&extras.loki_last_error),
            last_error_seconds_ago: extras
                .loki_last_error
                .as_ref()
                .and_then(|_| ago(extras.loki_last_error_at)),
        }),
        otlp: extras.relay.then(|| OtlpStatus {
            requests_received: metrics.sum("wisp_otlp_receiver_requests_total", &[]) as u64,
            requests_shipped: metrics.value("wisp_otlp_requests_shipped_total", &[]) as u64,
            bytes_shipped: metrics.value("wisp_otlp_bytes_shipped_total", &[]) as u64,
            buffer: spool("otlp"),
            last_export_seconds_ago: ago(
                metrics.get("wisp_otlp_last_export_timestamp_seconds", &[])
            ),
            retries: metrics.value("wisp_otlp_retries_total", &[]) as u64,
            requests_rejected: metrics.sum("wisp_otlp_requests_dropped_total", &[]) as u64,
            last_error: redact(&extras.otlp_last_error),
            last_error_seconds_ago: extras
                .otlp_last_error
                .as_ref()
                .and_then(|_| ago(extras.otlp_last_error_at)),
        }),
        exec: exec_status(&metrics),
    }
}

/// The configuration in effect, from the `wisp_config_*` families; `None`
/// without them.
fn config_status(metrics: &Readings, now: f64) -> Option<ConfigStatus> {
    let sha256 = metrics
        .samples("wisp_config_hash")
        .find_map(|s| label(s, "sha256"))?
        .to_string();
    let loaded_at = metrics.value("wisp_config_last_reload_success_timestamp_seconds", &[]);
    Some(ConfigStatus {
        sha256,
        loaded_at,
        loaded_seconds_ago: (now - loaded_at).max(0.0),
        last_reload_ok: metrics.get("wisp_config_last_reload_successful", &[]) != Some(0.0),
        reloads: metrics
            .samples("wisp_config_reloads_total")
            .filter_map(|s| Some((label(s, "result")?.to_string(), s.value.as_u64())))
            .collect(),
    })
}

/// The exec runs, per job, from `wisp_exec_runs_total{job,exit_code}`,
/// `wisp_exec_run_seconds_total{job}` and `wisp_exec_cost_usd_total{job}`.
fn exec_status(metrics: &Readings) -> ExecStatus {
    let mut jobs: BTreeMap<String, ExecJob> = BTreeMap::new();
    fn job<'a>(jobs: &'a mut BTreeMap<String, ExecJob>, s: &Sample) -> &'a mut ExecJob {
        let name = label(s, "job").unwrap_or("exec");
        jobs.entry(name.to_string()).or_insert_with(|| ExecJob {
            job: name.to_string(),
            ..ExecJob::default()
        })
    }
    for s in metrics.samples("wisp_exec_runs_total") {
        let n = s.value.as_f64().max(0.0) as u64;
        let j = job(&mut jobs, s);
        j.runs += n;
        *j.exit_codes
            .entry(label(s, "exit_code").unwrap_or("unknown").to_string())
            .or_default() += n;
    }
    for s in metrics.samples("wisp_exec_run_seconds_total") {
        job(&mut jobs, s).run_seconds += s.value.as_f64();
    }
    for s in metrics.samples("wisp_exec_cost_usd_total") {
        job(&mut jobs, s).cost_usd += s.value.as_f64();
    }
    let jobs: Vec<ExecJob> = jobs.into_values().collect();
    ExecStatus {
        runs: jobs.iter().map(|j| j.runs).sum(),
        jobs,
    }
}

/// A reading seen as samples by family name: what [`build`] looks up.
struct Readings<'a>(&'a [Reading]);

impl<'a> Readings<'a> {
    /// The samples of the family `name`, in the order served.
    fn samples(&self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0
            .iter()
            .filter(move |r| r.name == name)
            .flat_map(|r| r.samples.iter())
    }

    /// The first sample of `name` with `labels` (and maybe others), if any.
    fn get(&self, name: &'a str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name)
            .find(|s| has(s, labels))
            .map(|s| s.value.as_f64())
    }

    /// As [`Readings::get`], 0 when absent (a family with nothing to count yet).
    fn value(&self, name: &'a str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum of every sample of `name` with `labels`.
    fn sum(&self, name: &'a str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .filter(|s| has(s, labels))
            .map(|s| s.value.as_f64())
            .sum()
    }
}

/// The value of a sample's label `name`, if it has one.
fn label<'a>(s: &'a Sample, name: &str) -> Option<&'a str> {
    s.labels
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_ref())
}

/// Whether the sample has each of `labels` with that value.
fn has(s: &Sample, labels: &[(&str, &str)]) -> bool {
    labels.iter().all(|(k, v)| label(s, k) == Some(*v))
}
