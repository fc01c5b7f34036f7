//! How a stage declares its metrics: once, as a table of [`Family`]s beside
//! its counter struct (name as a scraper sees it, type, help, and how to read
//! the samples from the counters). The admin endpoint's collectors encode
//! those tables with `prometheus-client` at scrape time, `/status` and the OTLP
//! push of the agent's own metrics read the same [`Reading`]s, and the tests
//! read them;
//! no other place names a metric.
//!
//! Promises: the hot path is untouched (a stage keeps its plain `AtomicU64`
//! fields and label maps, and a family only loads them when scraped); a family
//! without samples (a label map still empty, an unreadable `/proc` file) is
//! left out of the page, HELP and TYPE included.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// A family's type, as its `# TYPE` line says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample's value: counts stay integers on the page, seconds are floats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(n) => n as f64,
            Value::Float(v) => v,
        }
    }

    /// The value as a count (a float is truncated; no integer family holds one).
    pub fn as_u64(self) -> u64 {
        match self {
            Value::Int(n) => n,
            Value::Float(v) => v as u64,
        }
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(n)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

/// Label names and values, in the order they are written.
pub type Labels = Vec<(&'static str, Cow<'static, str>)>;

/// One sample of a family: its own labels (the collector puts the instance's,
/// `spool` or `listener`, before them) and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: Value,
}

/// One metric family a stage serves. `name` is the name of its samples as
/// served (a counter's ends in `_total`, which the encoder adds back); `read`
/// loads the samples from `T`, the stage's counters or a snapshot of them.
pub struct Family<T> {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub read: fn(&T) -> Vec<Sample>,
}

/// A counter family; `name` ends in `_total`.
pub const fn counter<T>(
    name: &'static str,
    help: &'static str,
    read: fn(&T) -> Vec<Sample>,
) -> Family<T> {
    Family {
        name,
        kind: Kind::Counter,
        help,
        read,
    }
}

/// A gauge family.
pub const fn gauge<T>(
    name: &'static str,
    help: &'static str,
    read: fn(&T) -> Vec<Sample>,
) -> Family<T> {
    Family {
        name,
        kind: Kind::Gauge,
        help,
        read,
    }
}

/// The one unlabelled sample of a family.
pub fn one(v: impl Into<Value>) -> Vec<Sample> {
    vec![Sample {
        labels: Vec::new(),
        value: v.into(),
    }]
}

/// One unlabelled sample, or none (the family is then left out).
pub fn maybe(v: Option<impl Into<Value>>) -> Vec<Sample> {
    v.map(one).unwrap_or_default()
}

/// A sample with labels.
pub fn labelled<const N: usize>(
    labels: [(&'static str, Cow<'static, str>); N],
    v: impl Into<Value>,
) -> Sample {
    Sample {
        labels: labels.into(),
        value: v.into(),
    }
}

/// An atomic counter's value now.
pub fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// A counter kept by key (an HTTP status, a cause, a signal): one sample per
/// key, labelled `label="key"`, in key order. A poisoned lock reads as empty.
pub fn by<K: Display>(label: &'static str, m: &Mutex<BTreeMap<K, u64>>) -> Vec<Sample> {
    match m.lock() {
        Ok(m) => m
            .iter()
            .map(|(k, n)| labelled([(label, k.to_string().into())], *n))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Each family's name and its first sample's value: the view the stages'
/// `metrics()` give their tests.
pub fn named<T>(families: &[Family<T>], of: &T) -> Vec<(&'static str, Value)> {
    families
        .iter()
        .filter_map(|f| Some((f.name, (f.read)(of).first()?.value)))
        .collect()
}

/// One family's samples at one reading, in the order served, each sample's
/// instance labels (`spool`, `listener`) first: what `/metrics` encodes and
/// what the agent pushes over OTLP (the host-metrics task), so both say the
/// same.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub samples: Vec<Sample>,
}

/// Reads `families` over `instances` (one `T` each, with its own labels) into
/// `out`: a reading per family with every instance's samples, so a family's
/// samples stay together; a family without samples is left out. Never fails
/// (the `Result` lets a collector chain reads with `?`).
pub fn encode<T>(
    out: &mut Vec<Reading>,
    families: &[Family<T>],
    instances: &[(Labels, &T)],
) -> std::fmt::Result {
    for family in families {
        let samples: Vec<Sample> = instances
            .iter()
            .flat_map(|(own, of)| {
                (family.read)(of).into_iter().map(move |mut s| {
                    s.labels.splice(0..0, own.iter().cloned());
                    s
                })
            })
            .collect();
        if samples.is_empty() {
            continue;
        }
        out.push(Reading {
            name: family.name,
            kind: family.kind,
            help: family.help,
            samples,
        });
    }
    Ok(())
}

/// Writes `readings` in the Prometheus text format: each family described
/// once, then its samples.
pub fn write(encoder: &mut DescriptorEncoder, readings: &[Reading]) -> std::fmt::Result {
    for reading in readings {
        let (name, kind) = match reading.kind {
            // The encoder writes `_total` after a counter's name itself.
            Kind::Counter => (
                reading.name.strip_suffix("_total").unwrap_or(reading.name),
                MetricType::Counter,
            ),
            Kind::Gauge => (reading.name, MetricType::Gauge),
        };
        let mut metric = encoder.encode_descriptor(name, reading.help, None, kind)?;
        for s in &reading.samples {
            let sample = metric.encode_family(&s.labels)?;
            // A whole number of seconds prints as an integer (`0`, not `0.0`),
            // as the page did before the crate encoded it.
            let value = match s.value {
                Value::Float(v) if v.fract() == 0.0 && (0.0..9.0e15).contains(&v) => {
                    Value::Int(v as u64)
                }
                v => v,
            };
            match (reading.kind, value) {
                (Kind::Counter, Value::Int(n)) => ConstCounter::new(n).encode(sample)?,
                (Kind::Counter, Value::Float(v)) => ConstCounter::new(v).encode(sample)?,
                (Kind::Gauge, Value::Int(n)) => ConstGauge::new(n).encode(sample)?,
                (Kind::Gauge, Value::Float(v)) => ConstGauge::new(v).encode(sample)?,
            }
        }
    }
    Ok(())
}

/// An instance without labels of its own.
pub fn single<T>(of: &T) -> [(Labels, &T); 1] {
    [(Vec::new(), of)]
}
