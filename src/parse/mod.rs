//! Understanding each line: its kind (JSON, logfmt, text), its level, its own
//! timestamp, the fields promoted to labels and the trace/span ids; and the
//! transform stage that turns a source's raw lines into labelled records.
//!
//! Promises:
//! - Every line is shipped, unchanged, whatever it holds: a line that starts with
//!   `{` but is not a valid JSON object (truncated, two writers interleaved) is
//!   shipped as text and counted as a parse miss; what was read before the break
//!   (a level, a time) is kept, else the text rules give the level.
//! - The hot path ([`json::scan`]) reads only the keys it needs and never builds a
//!   JSON tree; the common line costs one `Arc` clone for its labels.
//! - Nothing here panics on any input, and all state is bounded (see
//!   [`labels`]).
//!
//! Rules, in one place: level per [`level`] (field values) and [`text`] (plain
//! lines); time per [`timestamp`]; a time outside `[read_time - max_age,
//! read_time + max_ahead]` falls back to the read time and is counted; the
//! time is then made unique within the line's source per [`stamp`] (equal own
//! times a nanosecond apart in read order, read times strictly increasing).

pub mod json;
pub mod labels;
pub mod level;
pub mod line;
pub mod logfmt;
pub mod stamp;
pub mod text;
pub mod timestamp;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::metric::{counter, encode, named, names, one, single, Family, Registry};
use crate::record::{Batch, LogRecord, Owner, SourceBatch};
use crate::spool::ResumeState;

pub use level::Level;
pub use line::{parse_line, Fields, LineKind, Parsed};

use labels::{Admitted, CardinalityGuard, LabelCache, MAX_GUARDED_KEYS, OVERFLOW_VALUE};

/// What the transform stage needs from the configuration.
#[derive(Clone, Debug)]
pub struct ParseSettings {
    /// The `host` label.
    pub hostname: String,
    /// `[agent].labels`: on every stream.
    pub agent_labels: Vec<(String, String)>,
    /// At most this many distinct values per promoted label.
    pub max_label_values: usize,
    /// A line's timestamp older than this (relative to its read time) is not used.
    pub max_age: Duration,
    /// A line's timestamp further ahead than this is not used.
    pub max_ahead: Duration,
}

impl ParseSettings {
    /// From the configuration; an empty `agent.hostname` means the VM's hostname.
    pub fn from_config(config: &Config) -> Self {
        let hostname = config.agent.effective_hostname();
        Self {
            hostname,
            agent_labels: config
                .agent
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_label_values: config.agent.max_label_values,
            max_age: config.agent.timestamp_max_age.get(),
            max_ahead: config.agent.timestamp_max_ahead.get(),
        }
    }
}

/// Counters of the transform stage, for the admin endpoint.
#[derive(Debug, Default)]
pub struct ParseCounters {
    lines: AtomicU64,
    json: AtomicU64,
    logfmt: AtomicU64,
    text: AtomicU64,
    parse_misses: AtomicU64,
    timestamps_out_of_window: AtomicU64,
    label_values_overflowed: AtomicU64,
}

/// A point-in-time copy of [`ParseCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseCountersSnapshot {
    /// Lines transformed.
    pub lines: u64,
    /// Lines read as a JSON object.
    pub json: u64,
    /// Lines read as logfmt.
    pub logfmt: u64,
    /// Lines read as plain text (parse misses included).
    pub text: u64,
    /// Lines meant to be JSON that were not a valid object (shipped as text).
    pub parse_misses: u64,
    /// Lines whose own timestamp was outside the window: shipped at the read time.
    pub timestamps_out_of_window: u64,
    /// Promoted label values replaced by `other` (cardinality guard).
    pub label_values_overflowed: u64,
}

impl ParseCountersSnapshot {
    /// The parser's metric families, `wisp_parse_<what>_total`: the one place
    /// their names and help live.
    pub(crate) const FAMILIES: &'static [Family<ParseCountersSnapshot>] = &[
        counter(
            "wisp_parse_lines_total",
            "Lines parsed and labelled.",
            |s| one(s.lines),
        ),
        counter(
            "wisp_parse_json_lines_total",
            "Lines read as a JSON object.",
            |s| one(s.json),
        ),
        counter(
            "wisp_parse_logfmt_lines_total",
            "Lines read as logfmt.",
            |s| one(s.logfmt),
        ),
        counter(
            "wisp_parse_text_lines_total",
            "Lines read as plain text (parse misses included).",
            |s| one(s.text),
        ),
        counter(
            "wisp_parse_misses_total",
            "Lines meant to be JSON that were not a valid object, shipped as text.",
            |s| one(s.parse_misses),
        ),
        counter(
            "wisp_parse_timestamps_out_of_window_total",
            "Lines whose own timestamp was too old or too far ahead: shipped at the read time.",
            |s| one(s.timestamps_out_of_window),
        ),
        counter(
            "wisp_parse_label_values_overflowed_total",
            "Promoted label values replaced by \"other\" by the cardinality guard.",
            |s| one(s.label_values_overflowed),
        ),
    ];

    /// Each counter with its metric name, read through
    /// [`ParseCountersSnapshot::FAMILIES`].
    pub fn metrics(&self) -> Vec<(&'static str, u64)> {
        named(Self::FAMILIES, self)
            .into_iter()
            .map(|(name, v)| (name, v.as_u64()))
            .collect()
    }
}

impl ParseCounters {
    /// Registers the parser's families ([`ParseCountersSnapshot::FAMILIES`]),
    /// read from a snapshot at each reading.
    pub fn register(self: Arc<Self>, metrics: &mut Registry) {
        metrics.add(
            "parse",
            names(ParseCountersSnapshot::FAMILIES),
            move |out| {
                encode(
                    out,
                    ParseCountersSnapshot::FAMILIES,
                    &single(&self.snapshot()),
                )
            },
        );
    }

    pub fn snapshot(&self) -> ParseCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ParseCountersSnapshot {
            lines: get(&self.lines),
            json: get(&self.json),
            logfmt: get(&self.logfmt),
            text: get(&self.text),
            parse_misses: get(&self.parse_misses),
            timestamps_out_of_window: get(&self.timestamps_out_of_window),
            label_values_overflowed: get(&self.label_values_overflowed),
        }
    }

    fn add(&self, d: &ParseCountersSnapshot) {
        let add = |c: &AtomicU64, n: u64| {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.lines, d.lines);
        add(&self.json, d.json);
        add(&self.logfmt, d.logfmt);
        add(&self.text, d.text);
        add(&self.parse_misses, d.parse_misses);
        add(&self.timestamps_out_of_window, d.timestamps_out_of_window);
        add(&self.label_values_overflowed, d.label_values_overflowed);
    }
}

/// The transform stage: raw lines in, labelled records out.
#[derive(Debug)]
pub struct Transformer {
    settings: ParseSettings,
    counters: Arc<ParseCounters>,
    /// One guard per owner (a file entry and the file's owner, a user's
    /// runs): no source's values push another's into `other`.
    guards: HashMap<Owner, CardinalityGuard>,
    cache: LabelCache,
    clocks: stamp::Clocks,
}

impl Transformer {
    pub fn new(settings: ParseSettings) -> Self {
        Self {
            guards: HashMap::new(),
            settings,
            counters: Arc::default(),
            cache: LabelCache::default(),
            clocks: stamp::Clocks::default(),
        }
    }

    /// Takes the sources' clocks back from the spool's resume state (see
    /// [`stamp`]): lines read after a restart are stamped on from where the
    /// spool's records end.
    pub fn restore_clocks(&mut self, state: &ResumeState) {
        self.clocks.restore(state);
    }

    pub fn counters(&self) -> Arc<ParseCounters> {
        self.counters.clone()
    }

    /// Parses and labels every line of `batch`; the ack passes through, with
    /// the source's clock added to its resume points. Each record keeps its
    /// line exactly as the source gave it.
    pub fn transform(&mut self, batch: SourceBatch) -> Batch {
        let src = batch.source;
        let mut clock = self.clocks.clock(&batch.ack);
        let stamped = !batch.lines.is_empty();
        let mut counts = ParseCountersSnapshot::default();
        let entry = self
            .cache
            .source(&src, &self.settings.hostname, &self.settings.agent_labels);
        if !self.guards.contains_key(&src.owner) && self.guards.len() >= MAX_GUARDED_KEYS {
            self.guards.clear();
        }
        let max_values = self.settings.max_label_values;
        let guard = self
            .guards
            .entry(src.owner)
            .or_insert_with(|| CardinalityGuard::new(max_values));
        let mut records = Vec::with_capacity(batch.lines.len());
        for line in batch.lines {
            let (timestamp, labels, structured_metadata) = {
                let parsed = parse_line(&line.text, src.format, &src.label_fields);
                counts.lines += 1;
                match parsed.kind {
                    LineKind::Json => counts.json += 1,
                    LineKind::Logfmt => counts.logfmt += 1,
                    LineKind::Text => counts.text += 1,
                    LineKind::JsonMiss => {
                        counts.text += 1;
                        counts.parse_misses += 1;
                    }
                }
                let timestamp = match parsed.timestamp {
                    Some(ts)
                        if timestamp::within_window(
                            ts,
                            line.read_time,
                            self.settings.max_age,
                            self.settings.max_ahead,
                        ) =>
                    {
                        clock.own_time(ts)
                    }
                    Some(_) => {
                        counts.timestamps_out_of_window += 1;
                        clock.read_time(line.read_time)
                    }
                    None => clock.read_time(line.read_time),
                };
                let labels = if parsed.label_values.iter().all(Option::is_none) {
                    entry.labels(parsed.level, &[])
                } else {
                    let values: Vec<Option<Cow<'_, str>>> = parsed
                        .label_values
                        .iter()
                        .map(|v| v.as_deref().map(labels::label_value))
                        .collect();
                    let mut promoted: Vec<Option<&str>> = Vec::with_capacity(values.len());
                    for (name, value) in entry.promoted_names.iter().zip(&values) {
                        promoted.push(match value.as_deref() {
                            None | Some("") => None,
                            Some(v) => match guard.admit(name, v) {
                                Admitted::Value(v) => Some(v),
                                Admitted::Overflow { first } => {
                                    counts.label_values_overflowed += 1;
                                    if first {
                                        tracing::warn!(
                                            label = %name,
                                            limit = self.settings.max_label_values,
                                            "label {name} has more distinct values than \
                                             agent.max_label_values allows; further values \
                                             are shipped as \"{OVERFLOW_VALUE}\""
                                        );
                                    }
                                    Some(OVERFLOW_VALUE)
                                }
                            },
                        });
                    }
                    entry.labels(parsed.level, &promoted)
                };
                let mut trace_id = parsed
                    .trace_id
                    .filter(|t| !t.is_empty())
                    .map(|t| t.into_owned());
                let mut span_id = parsed
                    .span_id
                    .filter(|s| !s.is_empty())
                    .map(|s| s.into_owned());
                // An exec run's line is in the run's trace, whatever trace id it
                // prints: the relay puts the command's own spans there too.
                if let Some((t, s)) = &src.trace_context {
                    trace_id = Some(t.clone());
                    span_id = span_id.or_else(|| Some(s.clone()));
                }
                let mut metadata = Vec::new();
                if let Some(t) = trace_id {
                    if src.trace_context.is_some() {
                        metadata.push(("run_id".to_owned(), t.clone()));
                    }
                    metadata.push(("trace_id".to_owned(), t));
                }
                if let Some(s) = span_id {
                    metadata.push(("span_id".to_owned(), s));
                }
                (timestamp, labels, metadata)
            };
            records.push(LogRecord {
                timestamp,
                labels,
                structured_metadata,
                line: line.text,
            });
        }
        self.counters.add(&counts);
        Batch {
            records,
            ack: self.clocks.settle(batch.ack, clock, stamped),
            owner: src.owner,
        }
    }
}
