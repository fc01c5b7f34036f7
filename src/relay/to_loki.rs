//! OTLP log records → Loki entries (`[otlp] logs_to_loki`): each log record of
//! a logs request the local receivers take becomes one [`LogRecord`] in the Loki
//! spool, the same spool and spool stage file and exec lines go through.
//!
//! What an entry is made of:
//! - labels: `job` = the resource's `service.name` (else `unknown_service`),
//!   `host` as for files, `level` from the severity (number 1-4 trace, 5-8
//!   debug, 9-12 info, 13-16 warn, 17-20 error, 21-24 fatal; else
//!   `severity_text` read as a file level is; else `unknown`), and
//!   `[agent].labels`; nothing else of the record becomes a label;
//! - a run's records (a resource with a valid `wisp.run.id`,
//!   [`crate::relay::run`]): `job` = `wisp.run.name` when set, and one label
//!   per key `wisp.run.labels` lists whose value is a string attribute of the
//!   resource (names as `exec --label` takes them, others skipped; at most
//!   [`MAX_RUN_LABELS`]; they win over `[agent].labels`); structured
//!   metadata `run_id` (lowercase hex) and `service_name` when set;
//! - structured metadata: `trace_id`, `span_id` (lowercase hex) when set;
//! - line: a string body as it is, any other body as JSON (a map as an object
//!   with its keys sorted, bytes as base64), no body an empty line;
//! - timestamp: `time_unix_nano`, else `observed_time_unix_nano`, else the
//!   time the request was received.
//!
//! Promises: the conversion is a pure function of the request and the receipt
//! time, so the spool holds each entry with the timestamp, labels and line it
//! is shipped (and replayed) with. The request converted is the one stored
//! for the collector, a run's records already in the run's trace. The label
//! sets (`job` and a run's labels) of each sender's user are bounded
//! (`[agent] max_label_values` distinct sets per uid, further ones have `job`
//! and run label values `other`, warned once per uid): one sender cannot push
//! another's into `other`, label values cut at [`labels::MAX_VALUE_BYTES`]; the
//! label cache is bounded ([`MAX_CACHED_SETS`]). Nothing here panics on any
//! request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::parse::labels::{self, Admitted, StreamGuard, OVERFLOW_VALUE};
use crate::parse::Level;
use crate::record::{Ack, Batch, Labels, LogRecord, Owner, Timestamp};
use crate::relay::run::{string_attribute, RunIds, RUN_LABELS, RUN_NAME};
use crate::spool::stage::BufferHealth;

mod recent;
#[cfg(test)]
mod tests;

use recent::Recent;
pub(crate) use recent::{wait, Digest, Progress, Turn};

/// The `job` of records whose resource names no `service.name` (the value the
/// OpenTelemetry SDKs default to).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Label sets cached at most (per job, run labels and level); the cache
/// starts over past it.
const MAX_CACHED_SETS: usize = 4096;

/// A run's labels (from [`RUN_LABELS`]) on an entry, at most.
pub const MAX_RUN_LABELS: usize = 16;

/// What the conversion needs from the configuration.
#[derive(Clone, Debug)]
pub struct ToLokiSettings {
    /// The `host` label (`agent.hostname`, else the VM's hostname).
    pub hostname: String,
    /// `[agent].labels`, on every entry.
    pub agent_labels: Vec<(String, String)>,
    /// At most this many distinct `job` values (`agent.max_label_values`).
    pub max_label_values: usize,
}

impl ToLokiSettings {
    /// The labels' part of the file lines' settings, so both kinds of entry
    /// get the same `host`, `[agent].labels` and bound.
    pub fn from_config(config: &Config) -> Self {
        let parse = crate::parse::ParseSettings::from_config(config);
        Self {
            hostname: parse.hostname,
            agent_labels: parse.agent_labels,
            max_label_values: parse.max_label_values,
        }
    }
}

/// What a cached label set is built from: the job, a run's labels, the level.
type LabelKey = (String, Vec<(String, String)>, Level);

/// Turns logs requests into Loki entries; keeps the `job` guard and the label
/// cache.
#[derive(Debug)]
pub(crate) struct Converter {
    /// `[agent].labels`, names and values made valid, empty values left out.
    base: Vec<(String, String)>,
    host: String,
    /// Per sender's uid (`None`: a sender that cannot be told apart).
    guard: StreamGuard<Option<u32>>,
    max_label_values: usize,
    cache: HashMap<LabelKey, Labels>,
}

impl Converter {
    pub(crate) fn new(settings: &ToLokiSettings) -> Self {
        let base = settings
            .agent_labels
            .iter()
            .map(|(k, v)| (labels::label_name(k).into_owned(), labels::label_value(v)))
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k, v.into_owned()))
            .collect();
        Self {
            base,
            host: labels::label_value(&settings.hostname).into_owned(),
            guard: StreamGuard::new(settings.max_label_values),
            max_label_values: settings.max_label_values,
            cache: HashMap::new(),
        }
    }

    /// One entry per log record of `request`, in order; `received` stamps the
    /// records that carry no time of their own; `uid` is the sender's (its
    /// own bound on `job` values and run label sets).
    pub(crate) fn convert(
        &mut self,
        request: &ExportLogsServiceRequest,
        received: Timestamp,
        uid: Option<u32>,
    ) -> Vec<LogRecord> {
        let mut out = Vec::new();
        for resource_logs in &request.resource_logs {
            let resource = resource_logs.resource.as_ref();
            let run = RunIds::of(resource);
            let service = string_attribute(resource, "service.name")
                .map(labels::label_value)
                .filter(|s| !s.is_empty());
            let run_name = run
                .and_then(|_| string_attribute(resource, RUN_NAME))
                .map(labels::label_value)
                .filter(|s| !s.is_empty());
            let (run_labels, run_metadata) = match run {
                None => (Vec::new(), Vec::new()),
                Some(run) => (
                    run_labels(resource),
                    [
                        ("run_id", Some(hex(&run.trace_id))),
                        ("service_name", service.as_deref().map(str::to_owned)),
                    ]
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?)))
                    .collect(),
                ),
            };
            let (job, run_labels) = self.guarded(
                uid,
                run_name
                    .as_deref()
                    .or(service.as_deref())
                    .unwrap_or(UNKNOWN_SERVICE),
                run_labels,
            );
            // The resource's label set per level, from the shared cache.
            let mut by_level: [Option<Labels>; Level::ALL.len()] = Default::default();
            for scope in &resource_logs.scope_logs {
                for record in &scope.log_records {
                    let level = level_of(record.severity_number, &record.severity_text);
                    let mut structured_metadata = Vec::new();
                    if is_set(&record.trace_id) {
                        structured_metadata.push(("trace_id".to_owned(), hex(&record.trace_id)));
                    }
                    if is_set(&record.span_id) {
                        structured_metadata.push(("span_id".to_owned(), hex(&record.span_id)));
                    }
                    structured_metadata.extend(run_metadata.iter().cloned());
                    let labels = by_level[level.index()]
                        .get_or_insert_with(|| self.labels(&job, &run_labels, level))
                        .clone();
                    out.push(LogRecord {
                        timestamp: timestamp_of(
                            record.time_unix_nano,
                            record.observed_time_unix_nano,
                            received,
                        ),
                        labels,
                        structured_metadata,
                        line: body_line(record.body.as_ref()),
                    });
                }
            }
        }
        out
    }

    /// The `job` (`name`, already cut) and run labels of a resource's records
    /// from sender `uid`, through the guard: past the sender's bound, both are
    /// `other` (the label names kept).
    fn guarded(
        &mut self,
        uid: Option<u32>,
        name: &str,
        mut run_labels: Vec<(String, String)>,
    ) -> (String, Vec<(String, String)>) {
        match self.guard.admit(&uid, (name, &run_labels)) {
            Admitted::Value(_) => (name.to_owned(), run_labels),
            Admitted::Overflow { first } => {
                if first {
                    let who = uid.map_or("a sender of unknown user".into(), |u| format!("uid {u}"));
                    tracing::warn!(
                        limit = self.max_label_values,
                        "otlp logs to loki: {who} sent more distinct service.name (or wisp.run.name \
                         and run label) values than agent.max_label_values allows; the job and run \
                         labels of further ones are \"{OVERFLOW_VALUE}\" (raise agent.max_label_values)"
                    );
                }
                for (_, v) in &mut run_labels {
                    *v = OVERFLOW_VALUE.to_owned();
                }
                (OVERFLOW_VALUE.to_owned(), run_labels)
            }
        }
    }

    fn labels(&mut self, job: &str, run_labels: &[(String, String)], level: Level) -> Labels {
        let key = (job.to_owned(), run_labels.to_vec(), level);
        if let Some(l) = self.cache.get(&key) {
            return l.clone();
        }
        if self.cache.len() >= MAX_CACHED_SETS {
            self.cache.clear();
        }
        // Later pairs win: `[agent].labels` cannot take over job, host, level;
        // a run's labels win over `[agent].labels`, as `exec --label` does
        // for the run's lines.
        let labels = Labels::from_pairs(
            self.base
                .iter()
                .cloned()
                .chain(run_labels.iter().cloned())
                .chain([
                    ("job".to_owned(), job.to_owned()),
                    ("host".to_owned(), self.host.clone()),
                    ("level".to_owned(), level.as_str().to_owned()),
                ]),
        );
        self.cache.insert(key, labels.clone());
        labels
    }
}

/// The stream labels of a run's resource: one per key [`RUN_LABELS`] lists
/// (the first [`MAX_RUN_LABELS`] valid names, each once) whose value is a
/// non-empty string attribute of the resource, cut as label values are.
fn run_labels(resource: Option<&Resource>) -> Vec<(String, String)> {
    let Some(listed) = string_attribute(resource, RUN_LABELS) else {
        return Vec::new();
    };
    let mut names: Vec<&str> = Vec::new();
    for name in listed.split(',').map(str::trim) {
        if names.len() == MAX_RUN_LABELS {
            break;
        }
        if is_run_label_name(name) && !names.contains(&name) {
            names.push(name);
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let value = labels::label_value(string_attribute(resource, name)?);
            (!value.is_empty()).then(|| (name.to_owned(), value.into_owned()))
        })
        .collect()
}

/// A label name `exec --label` takes (see [`labels::check_user_label_name`]).
fn is_run_label_name(name: &str) -> bool {
    labels::check_user_label_name(name).is_ok()
}

/// The level of a record: its severity number (OpenTelemetry's ranges), else
/// its severity text read as a file's level field is, else `Unknown`.
pub(crate) fn level_of(severity_number: i32, severity_text: &str) -> Level {
    match severity_number {
        1..=4 => Level::Trace,
        5..=8 => Level::Debug,
        9..=12 => Level::Info,
        13..=16 => Level::Warn,
        17..=20 => Level::Error,
        21..=24 => Level::Fatal,
        _ => Level::from_name(severity_text).unwrap_or(Level::Unknown),
    }
}

/// `time_unix_nano`, else `observed_time_unix_nano` (0 is unset), else `received`.
fn timestamp_of(time: u64, observed: u64, received: Timestamp) -> Timestamp {
    [time, observed]
        .into_iter()
        .find_map(|t| i64::try_from(t).ok().filter(|&t| t > 0))
        .map_or(received, Timestamp)
}

/// A trace or span id is set when it has bytes and not all of them are zero
/// (OTLP's "invalid" id).
fn is_set(id: &[u8]) -> bool {
    id.iter().any(|&b| b != 0)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The line of a record: a string body as it is, another body as JSON, no
/// body an empty line.
pub(crate) fn body_line(body: Option<&AnyValue>) -> String {
    match body.and_then(|b| b.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(v) => to_json(v).to_string(),
    }
}

/// An OTLP value as plain JSON (not OTLP/JSON's `{"stringValue": …}` form):
/// what a reader of the line expects, and what Loki's own OTLP endpoint makes
/// of such a body.
fn to_json(v: &any_value::Value) -> serde_json::Value {
    use serde_json::Value as J;
    let of = |v: &Option<AnyValue>| {
        v.as_ref()
            .and_then(|v| v.value.as_ref())
            .map_or(J::Null, to_json)
    };
    match v {
        any_value::Value::StringValue(s) => J::String(s.clone()),
        any_value::Value::BoolValue(b) => J::Bool(*b),
        any_value::Value::IntValue(i) => J::from(*i),
        // Not finite: JSON has no such number, null as serde_json writes it.
        any_value::Value::DoubleValue(d) => J::from(*d),
        any_value::Value::BytesValue(b) => J::String(base64(b)),
        any_value::Value::ArrayValue(a) => J::Array(
            a.values
                .iter()
                .map(|v| v.value.as_ref().map_or(J::Null, to_json))
                .collect(),
        ),
        any_value::Value::KvlistValue(kv) => J::Object(
            kv.values
                .iter()
                .map(|kv| (kv.key.clone(), of(&kv.value)))
                .collect(),
        ),
        // An index into a profile's string table: no table in a logs request.
        any_value::Value::StringValueStrindex(_) => J::Null,
    }
}

/// Standard base64 with padding (as OTLP/JSON and Loki write bytes).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The receivers' way into the Loki spool: converts a logs request and stores
/// its entries through the Loki spool stage (the one file and exec lines go
/// through), answering once they are durable. Cheap to clone.
#[derive(Clone)]
pub struct LogsToLoki {
    tx: mpsc::Sender<Batch<LogRecord>>,
    converter: Arc<Mutex<Converter>>,
    health: Arc<BufferHealth>,
    recent: Arc<Recent>,
}

impl LogsToLoki {
    /// `tx` leads into the Loki spool stage, whose health is `health`.
    pub fn new(
        settings: &ToLokiSettings,
        tx: mpsc::Sender<Batch<LogRecord>>,
        health: Arc<BufferHealth>,
    ) -> Self {
        Self {
            tx,
            converter: Arc::new(Mutex::new(Converter::new(settings))),
            health,
            recent: Arc::new(Recent::new()),
        }
    }

    /// How far an earlier, unanswered attempt of the request with these bytes
    /// got in each spool (nothing, for a request not seen or answered before),
    /// and its digest for [`LogsToLoki::answered`].
    pub(crate) fn progress(&self, body: &[u8]) -> (Digest, Arc<Progress>) {
        let digest = self.recent.digest(body);
        (digest, self.recent.get(digest))
    }

    /// The request was answered success: a later request with its bytes is a
    /// new one.
    pub(crate) fn answered(&self, digest: Digest) {
        self.recent.forget(digest);
    }

    /// Why the Loki spool cannot take entries now (a full disk), if it cannot:
    /// a request is then refused before anything of it is stored anywhere.
    pub fn refusing(&self) -> Option<String> {
        self.health.error()
    }

    /// The entries of one logs request (its protobuf encoding, already checked
    /// by the receiver), stamped `received` where a record has no time.
    pub fn convert(
        &self,
        body: &[u8],
        received: Timestamp,
        uid: Option<u32>,
    ) -> Result<Vec<LogRecord>, String> {
        let request = ExportLogsServiceRequest::decode(body).map_err(|e| e.to_string())?;
        let mut converter = self.converter.lock().unwrap_or_else(|e| e.into_inner());
        Ok(converter.convert(&request, received, uid))
    }

    /// Stores `records` as one batch (one append, one commit: all or none of
    /// them); `Ok` once they are durable in the Loki spool. `ack` is called
    /// then too (no records: at once).
    pub async fn store(
        &self,
        records: Vec<LogRecord>,
        ack: Ack,
        owner: Owner,
    ) -> Result<(), String> {
        if records.is_empty() {
            ack.done();
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        let batch = Batch {
            records,
            ack: Ack::replying(reply).and(ack),
            owner,
        };
        let stopping = || "the log buffer is closed: the agent is stopping".to_string();
        match self.tx.send(batch).await {
            Ok(()) => answer.await.unwrap_or_else(|_| Err(stopping())),
            Err(_) => Err(stopping()),
        }
    }
}
