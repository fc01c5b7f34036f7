//! The data that flows through the pipeline.
//!
//! Sources produce [`SourceBatch`]es of raw lines; the transform stage parses them
//! into [`LogRecord`]s and hands [`Batch`]es to the sinks. Each batch carries an
//! [`Ack`]: the downstream stage that makes the batch durable (the spool, or the
//! console sink in `--dry-run`) calls it, and only then does the source advance its
//! checkpoint. A batch dropped without its ack being called is simply read again
//! after a restart: at least once at the agent.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// Nanoseconds since the Unix epoch, as Loki and OTLP count time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX)),
        }
    }

    pub fn as_nanos(self) -> i64 {
        self.0
    }

    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_nanos(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos(self.0.unsigned_abs())
        }
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with nanoseconds: `2026-11-21T10:00:00.123456789Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_nanos(self.to_system_time())
        )
    }
}

/// A stream's label set: sorted by name, names unique. Cheap to clone (shared), so
/// the transform stage can cache one per (source, level) and reuse it per line.
#[derive(Clone, Eq, PartialOrd, Ord, Default)]
pub struct Labels(Arc<[(String, String)]>);

impl PartialEq for Labels {
    /// Two clones of one set are equal at once: the line path compares each
    /// record's set with the previous record's (spool encoding, grouping into
    /// streams), nearly always a clone of it, and would otherwise compare every
    /// label's text.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0[..] == other.0[..]
    }
}

impl std::hash::Hash for Labels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0[..].hash(state);
    }
}

impl Labels {
    /// Builds a label set; a later pair with the same name replaces an earlier one.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in pairs {
            map.insert(k.into(), v.into());
        }
        Labels(map.into_iter().collect::<Vec<_>>().into())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Labels {
    /// Loki's stream selector form: `{host="vm1", job="api"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}=")?;
            // Label values are quoted as Go's strconv.Quote would, which is what
            // Loki parses; JSON string escaping is a compatible subset.
            write!(f, "{}", serde_json::Value::String(v.to_string()))?;
        }
        f.write_str("}")
    }
}

impl serde::Serialize for Labels {
    /// As a JSON object, `{"host":"vm1","job":"api"}`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One log entry as it will be shipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Stamped once, when the line is parsed: from the line, else the read time,
    /// made unique in its source by [`crate::parse::stamp`]. It is stored in
    /// the spool with the line: a replay of the spool carries the same value.
    pub timestamp: Timestamp,
    pub labels: Labels,
    /// Non-label pairs (trace and span ids): Loki's structured metadata.
    pub structured_metadata: Vec<(String, String)>,
    /// The line as written, minus the trailing newline and terminal sequences.
    pub line: String,
}

/// Where a source may resume once a batch is durable, stored by the spool in the
/// same commit (and fsync) as the batch's records: after a crash the source resumes
/// exactly after what the spool holds, re-reading nothing of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    /// Which source (for a file: its device and inode).
    pub key: Vec<u8>,
    /// The source's own encoding of where to resume; `None` forgets the source.
    pub state: Option<Vec<u8>>,
}

/// Called once a batch is durable downstream; lets the source advance its
/// checkpoint. It may carry the batch's [`ResumePoint`]s, for a stage that makes
/// the batch durable to store with it.
#[must_use = "a batch's ack must be called once the batch is durable, or dropped to re-read it"]
pub struct Ack {
    done: Option<Notify>,
    resume: Vec<ResumePoint>,
}

/// Whom an [`Ack`] tells: `Ok` once the batch is durable, `Err` with the reason
/// when the stage gave it up ([`Ack::fail`]).
type Notify = Box<dyn FnOnce(Result<(), &str>) + Send + 'static>;

impl Ack {
    /// An ack that does nothing (sources without checkpoints: exec, tests).
    pub fn none() -> Self {
        Ack {
            done: None,
            resume: Vec::new(),
        }
    }

    /// Calls `f` once the batch is durable (not when it is given up).
    pub fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Ack {
            done: Some(Box::new(move |r: Result<(), &str>| {
                if r.is_ok() {
                    f()
                }
            })),
            resume: Vec::new(),
        }
    }

    /// Answers `reply` with the outcome: `Ok` once durable, the stage's reason
    /// when it gave the batch up. A dropped ack drops `reply` unanswered.
    pub fn replying(reply: tokio::sync::oneshot::Sender<Result<(), String>>) -> Self {
        Ack {
            done: Some(Box::new(move |r: Result<(), &str>| {
                let _ = reply.send(r.map_err(str::to_string));
            })),
            resume: Vec::new(),
        }
    }

    /// Adds a resume point to store with the batch.
    pub fn with_resume(mut self, point: ResumePoint) -> Self {
        self.resume.push(point);
        self
    }

    /// The resume points to store with the batch, oldest first.
    pub fn resume_points(&self) -> &[ResumePoint] {
        &self.resume
    }

    /// Takes the resume points out, oldest first (the stage stores them with
    /// the batch), leaving none.
    pub fn take_resume(&mut self) -> Vec<ResumePoint> {
        std::mem::take(&mut self.resume)
    }

    /// Joins two acks: calling the result calls both, `self` first; the resume
    /// points are `self`'s, then `other`'s.
    pub fn and(mut self, mut other: Ack) -> Self {
        let done = match (self.done.take(), other.done.take()) {
            (None, None) => None,
            (Some(a), None) | (None, Some(a)) => Some(a),
            (Some(a), Some(b)) => Some(Box::new(move |r: Result<(), &str>| {
                a(r);
                b(r);
            }) as Notify),
        };
        let mut resume = std::mem::take(&mut self.resume);
        resume.append(&mut other.resume);
        Ack { done, resume }
    }

    /// The batch is durable.
    pub fn done(mut self) {
        if let Some(f) = self.done.take() {
            f(Ok(()));
        }
    }

    /// The stage gave the batch up for `reason`: an ack made with
    /// [`Ack::replying`] passes it on, one made with [`Ack::new`] is not called.
    pub fn fail(mut self, reason: &str) {
        if let Some(f) = self.done.take() {
            f(Err(reason));
        }
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.done.is_some() {
            "Ack(pending)"
        } else {
            "Ack(none)"
        })
    }
}

/// Where a source's lines come from, and how to parse and label them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    /// The `job` label: the `[[files]]` entry's `name`, or `exec` / `--name`.
    pub job: String,
    /// The `filename` label, for files.
    pub filename: Option<String>,
    /// Static labels of the source (`[[files]].labels`, `exec --label`).
    pub labels: Vec<(String, String)>,
    pub format: LogFormat,
    /// JSON fields promoted to labels (`label_fields`).
    pub label_fields: Vec<String>,
    /// The `exec` run the lines are output of: its trace and span id (lowercase
    /// hex). Each record then carries the run's id as `run_id` and `trace_id`
    /// (the relay puts the command's own spans into the run's trace), and its
    /// own `span_id`, else the run span's.
    pub trace_context: Option<(String, String)>,
    /// Whose share of the buffer the source's lines take ([`Owner`]).
    pub owner: Owner,
}

/// Whose share of a spool records take: each `[[files]]` entry per file
/// owner, each user's `exec` output, each sender's OTLP logs, the agent's own
/// telemetry. When a spool is full, the largest owner's oldest records go
/// first ([`crate::spool`]). Stored in the spool's commits as a `u64`: the
/// kind in the top byte, an entry index in the next two, a uid in the low
/// four.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner(u64);

const OWNER_EXEC: u64 = 1;
const OWNER_FILE: u64 = 2;
const OWNER_OTLP: u64 = 3;
const OWNER_OTLP_UNKNOWN: u64 = 4;
const OWNER_AGENT: u64 = 5;

impl Owner {
    /// Records of an older spool, which kept no owners.
    pub const UNKNOWN: Owner = Owner(0);
    /// The agent's own telemetry (host metrics, its own metrics).
    pub const AGENT: Owner = Owner(OWNER_AGENT << 56);

    /// The `exec` output (and spans) of user `uid`.
    pub fn exec(uid: u32) -> Owner {
        Owner(OWNER_EXEC << 56 | u64::from(uid))
    }

    /// The lines of files of `[[files]]` entry `entry` owned by `uid`.
    pub fn file(entry: usize, uid: u32) -> Owner {
        let entry = u64::try_from(entry).unwrap_or(u64::MAX) & 0xffff;
        Owner(OWNER_FILE << 56 | entry << 32 | u64::from(uid))
    }

    /// What the local OTLP receivers took from user `uid` (`None`: a sender
    /// whose user cannot be told).
    pub fn otlp(uid: Option<u32>) -> Owner {
        match uid {
            Some(uid) => Owner(OWNER_OTLP << 56 | u64::from(uid)),
            None => Owner(OWNER_OTLP_UNKNOWN << 56),
        }
    }

    pub fn to_bits(self) -> u64 {
        self.0
    }

    /// What kind of source the records come from: `file`, `exec`, `otlp`
    /// (a sender's user known or not), `agent`; `None` for [`Owner::UNKNOWN`].
    pub fn kind(self) -> Option<&'static str> {
        match self.0 >> 56 {
            OWNER_EXEC => Some("exec"),
            OWNER_FILE => Some("file"),
            OWNER_OTLP | OWNER_OTLP_UNKNOWN => Some("otlp"),
            OWNER_AGENT => Some("agent"),
            _ => None,
        }
    }

    /// The user whose records these are (the file's owner, the `exec` or
    /// OTLP sender's user); `None` when no user is known.
    pub fn uid(self) -> Option<u32> {
        match self.0 >> 56 {
            OWNER_EXEC | OWNER_FILE | OWNER_OTLP => Some((self.0 & 0xffff_ffff) as u32),
            _ => None,
        }
    }

    pub fn from_bits(bits: u64) -> Owner {
        Owner(bits)
    }
}

impl fmt::Display for Owner {
    /// As the `owner` label of `wisp_spool_owner_*`: `exec:1001`,
    /// `file[0]:1000` (entry index, file owner's uid), `otlp:1000`, `otlp`,
    /// `agent`, `unknown`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uid = self.0 & 0xffff_ffff;
        match self.0 >> 56 {
            OWNER_EXEC => write!(f, "exec:{uid}"),
            OWNER_FILE => write!(f, "file[{}]:{uid}", (self.0 >> 32) & 0xffff),
            OWNER_OTLP => write!(f, "otlp:{uid}"),
            OWNER_OTLP_UNKNOWN => f.write_str("otlp"),
            OWNER_AGENT => f.write_str("agent"),
            _ => f.write_str("unknown"),
        }
    }
}

/// One raw record as a source read it: a line, or lines joined by multi-line rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLine {
    /// Without its trailing newline; terminal sequences already removed.
    pub text: String,
    /// When the source read it: the timestamp when the line carries none.
    pub read_time: Timestamp,
}

/// Lines from one source, in the order they were read.
#[derive(Debug)]
pub struct SourceBatch {
    pub source: Arc<SourceInfo>,
    pub lines: Vec<SourceLine>,
    pub ack: Ack,
}

/// Records on their way to a spool: parsed log records, or OTLP requests.
#[derive(Debug)]
pub struct Batch<R = LogRecord> {
    pub records: Vec<R>,
    pub ack: Ack,
    /// Whose share of the spool the records take.
    pub owner: Owner,
}

/// The three OTLP signals, each with its own export service and HTTP path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OtlpSignal {
    Traces,
    Metrics,
    Logs,
}

impl OtlpSignal {
    pub const ALL: [OtlpSignal; 3] = [OtlpSignal::Traces, OtlpSignal::Metrics, OtlpSignal::Logs];

    /// `traces`, `metrics` or `logs`: the OTLP/HTTP path segment and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpSignal::Traces => "traces",
            OtlpSignal::Metrics => "metrics",
            OtlpSignal::Logs => "logs",
        }
    }

    /// The OTLP/HTTP path: `/v1/traces`, `/v1/metrics`, `/v1/logs`.
    pub fn http_path(self) -> &'static str {
        match self {
            OtlpSignal::Traces => "/v1/traces",
            OtlpSignal::Metrics => "/v1/metrics",
            OtlpSignal::Logs => "/v1/logs",
        }
    }

    /// The gRPC method path of the signal's export service.
    pub fn grpc_path(self) -> &'static str {
        match self {
            OtlpSignal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            OtlpSignal::Metrics => {
                "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
            }
            OtlpSignal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        }
    }
}

/// One OTLP export request as a program sent it (the local receiver, `exec`): the
/// protobuf encoding of an `Export{Trace,Metrics,Logs}ServiceRequest`, relayed to
/// the host's collector as it is. Requests of one signal batch by concatenation:
/// the protobuf encoding of a message whose only field is repeated is the
/// concatenation of its parts, so nothing is decoded to batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpPayload {
    pub signal: OtlpSignal,
    pub body: bytes::Bytes,
}

/// An OTLP attribute with a text value.
pub fn otlp_text(key: &str, value: &str) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_and_unique() {
        let l = Labels::from_pairs([("job", "a"), ("host", "vm"), ("job", "b")]);
        assert_eq!(l.to_string(), r#"{host="vm", job="b"}"#);
        assert_eq!(l.get("job"), Some("b"));
        assert_eq!(l.get("nope"), None);
    }

    #[test]
    fn timestamp_formats_as_rfc3339_nanos() {
        let t = Timestamp(1_795_388_381_726_000_001);
        assert_eq!(t.to_string(), "2026-11-22T22:59:41.726000001Z");
    }

    #[test]
    fn joined_acks_call_both() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let n = Arc::new(AtomicUsize::new(0));
        let (a, b) = (n.clone(), n.clone());
        Ack::new(move || {
            a.fetch_add(1, Ordering::SeqCst);
        })
        .and(Ack::new(move || {
            b.fetch_add(10, Ordering::SeqCst);
        }))
        .done();
        assert_eq!(n.load(Ordering::SeqCst), 11);
    }
}
