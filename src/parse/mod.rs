//! Parsing a line: level, timestamp, labels. (Stub: issue 3 fills it in; for now
//! every line is `level="unknown"` stamped with its read time.)

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::record::{Batch, Labels, LogRecord, SourceBatch};

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
        let hostname = if config.agent.hostname.is_empty() {
            hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into())
        } else {
            config.agent.hostname.clone()
        };
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

/// Counters of the transform stage.
#[derive(Debug, Default)]
pub struct ParseCounters {}

/// The transform stage: raw lines in, labelled records out.
#[derive(Debug)]
pub struct Transformer {
    settings: ParseSettings,
    counters: Arc<ParseCounters>,
}

impl Transformer {
    pub fn new(settings: ParseSettings) -> Self {
        Self {
            settings,
            counters: Arc::default(),
        }
    }

    pub fn counters(&self) -> Arc<ParseCounters> {
        self.counters.clone()
    }

    /// Parses and labels every line of `batch`; the ack passes through.
    pub fn transform(&mut self, batch: SourceBatch) -> Batch {
        let src = &batch.source;
        let mut pairs: Vec<(String, String)> = self.settings.agent_labels.clone();
        pairs.extend(src.labels.iter().cloned());
        pairs.push(("job".into(), src.job.clone()));
        pairs.push(("host".into(), self.settings.hostname.clone()));
        if let Some(f) = &src.filename {
            pairs.push(("filename".into(), f.clone()));
        }
        pairs.push(("level".into(), "unknown".into()));
        let labels = Labels::from_pairs(pairs);
        let records = batch
            .lines
            .into_iter()
            .map(|l| LogRecord {
                timestamp: l.read_time,
                labels: labels.clone(),
                structured_metadata: Vec::new(),
                line: l.text,
            })
            .collect();
        Batch {
            records,
            ack: batch.ack,
        }
    }
}
