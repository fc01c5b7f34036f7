//! The agent's own metrics over OTLP (`[host_metrics] agent_metrics`): a
//! reading of every family `/metrics` serves ([`AgentMetrics::read`], the same
//! code the page is rendered from) turned into OTLP metrics, pushed by the
//! host-metrics task at its interval under the scope `wisp-agent`.
//!
//! Shape: the name exactly as served (`wisp_file_lines_read_total`,
//! `process_resident_memory_bytes`), an empty unit, the help as description;
//! a counter is a monotonic cumulative Sum starting at the agent's start, a
//! gauge a Gauge; an integer family's points are integers, a float family's
//! doubles; every label (the instance's `spool` or `listener` included) is a
//! string attribute of the point.

use std::time::SystemTime;

use opentelemetry_proto::tonic::metrics::v1::Metric;

use super::points::{double_point, gauge, int_point, sum, to_i64, unix_nanos};
use crate::metric::{AgentMetrics, Kind, Reading, Value};
use crate::record::otlp_text as text;

/// The instrumentation scope of the agent's own metrics.
pub const SCOPE: &str = "wisp-agent";

/// What the task reads the agent's metrics from, and since when they count.
#[derive(Clone, Debug)]
pub struct OwnMetrics {
    pub metrics: AgentMetrics,
    /// The start of every cumulative sum: when the agent started.
    pub start_unix_nano: u64,
}

impl OwnMetrics {
    pub fn new(metrics: AgentMetrics, started: SystemTime) -> Self {
        Self {
            metrics,
            start_unix_nano: unix_nanos(started),
        }
    }

    /// A reading now, as OTLP metrics stamped `now`.
    pub fn collect(&self, now: SystemTime) -> Vec<Metric> {
        let now = unix_nanos(now).max(self.start_unix_nano);
        to_otlp(&self.metrics.read(), self.start_unix_nano, now)
    }
}

/// `readings` as OTLP metrics: counters as Sums from `start`, gauges as
/// Gauges, every point at `now`.
pub(super) fn to_otlp(readings: &[Reading], start: u64, now: u64) -> Vec<Metric> {
    readings
        .iter()
        .map(|r| {
            let (start, now) = match r.kind {
                Kind::Counter => (start, now),
                Kind::Gauge => (0, now),
            };
            let points = r
                .samples
                .iter()
                .map(|s| {
                    let attributes = s.labels.iter().map(|(k, v)| text(k, v)).collect();
                    match s.value {
                        Value::Int(n) => int_point(attributes, to_i64(n), start, now),
                        Value::Float(v) => double_point(attributes, v, start, now),
                    }
                })
                .collect();
            match r.kind {
                Kind::Counter => sum(r.name, r.help, "", true, points),
                Kind::Gauge => gauge(r.name, r.help, "", points),
            }
        })
        .collect()
}
