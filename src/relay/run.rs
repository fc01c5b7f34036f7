//! A run's own telemetry in the run's trace: the contract between `exec` and
//! the relay, and the rewrite the local receivers apply to each traces and
//! logs request before it is stored.
//!
//! `wisp-agent exec` runs its command as one run with a trace id R (32
//! lowercase hex digits) and gives it, in `OTEL_RESOURCE_ATTRIBUTES`,
//! [`RUN_ID`] = R, [`RUN_NAME`] = the job, each `--label K=V` as `K=V`, and
//! [`RUN_LABELS`] = the label keys joined by `,`. The run's span has the span
//! id [`run_span_id`]\(R\), R's low 64 bits. The stock OpenTelemetry SDKs do
//! not read `TRACEPARENT` from the environment, so the command's spans start
//! traces of their own; the relay puts them back into the run's trace from
//! the resource alone, with no state:
//!
//! - spans of a resource with a valid [`RUN_ID`]: `trace_id` := R; a span
//!   without a parent (an empty or all-zero `parent_span_id`) becomes a child
//!   of the run span, unless it is the run span itself;
//! - log records of such a resource: a record with a trace id gets R as its
//!   trace id (its span id kept); one without gets R and the run span's id.
//!
//! Everything else (span ids, links, events, attributes, other resources) is
//! left as it is; a request with nothing to change is reported unchanged, so
//! the receivers keep its bytes as they came. Pure and total: any request,
//! the same output every time, no panic.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::resource::v1::Resource;

/// The resource attribute naming the run: its trace id, 32 hex digits.
pub const RUN_ID: &str = "wisp.run.id";
/// The resource attribute naming the run's job (`exec --name`).
pub const RUN_NAME: &str = "wisp.run.name";
/// The resource attribute listing the run's `--label` keys, joined by `,`
/// (`iter,task`); absent or empty without labels. Each key's value is a
/// resource attribute of its own (`iter=3`).
pub const RUN_LABELS: &str = "wisp.run.labels";

/// The run's trace id, from a [`RUN_ID`] value: exactly 32 hex digits (either
/// case), not all zero, and whose low half ([`run_span_id`]) is not all zero
/// either; else `None`.
pub fn run_trace_id(run_id: &str) -> Option<[u8; 16]> {
    let digits = run_id.as_bytes();
    if digits.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (byte, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    // An all-zero span id is OTLP's "no span": such an R names no run span.
    (id[8..].iter().any(|&b| b != 0)).then_some(id)
}

/// The span id of the run's span: the low 64 bits of its trace id, the last 16
/// of the [`RUN_ID`] value's digits. `None` where [`run_trace_id`] is.
pub fn run_span_id(run_id: &str) -> Option<[u8; 8]> {
    run_trace_id(run_id).map(|t| low_half(&t))
}

fn low_half(trace_id: &[u8; 16]) -> [u8; 8] {
    let mut span = [0u8; 8];
    span.copy_from_slice(&trace_id[8..]);
    span
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The run a resource belongs to: its trace id and its span's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RunIds {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
}

impl RunIds {
    /// From the resource's first [`RUN_ID`] attribute, when it is a string
    /// [`run_trace_id`] takes.
    pub(crate) fn of(resource: Option<&Resource>) -> Option<RunIds> {
        let trace_id = run_trace_id(string_attribute(resource, RUN_ID)?)?;
        Some(RunIds {
            trace_id,
            span_id: low_half(&trace_id),
        })
    }
}

/// The value of the resource's first attribute `key`, when it is a string.
pub(crate) fn string_attribute<'r>(resource: Option<&'r Resource>, key: &str) -> Option<&'r str> {
    let kv = resource?.attributes.iter().find(|kv| kv.key == key)?;
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// A trace or span id is set when it has bytes and not all of them are zero
/// (OTLP's "invalid" id).
fn is_set(id: &[u8]) -> bool {
    id.iter().any(|&b| b != 0)
}

/// Sets `field` to `to`; whether that changed it.
fn assign(field: &mut Vec<u8>, to: &[u8]) -> bool {
    if field.as_slice() == to {
        return false;
    }
    field.clear();
    field.extend_from_slice(to);
    true
}

/// A request whose runs' telemetry can join the runs' traces.
pub(crate) trait JoinRuns {
    /// Rewrites the request in place (module doc); whether anything changed.
    fn join_runs(&mut self) -> bool;
}

impl JoinRuns for ExportTraceServiceRequest {
    fn join_runs(&mut self) -> bool {
        let mut changed = false;
        for resource_spans in &mut self.resource_spans {
            let Some(run) = RunIds::of(resource_spans.resource.as_ref()) else {
                continue;
            };
            for span in resource_spans
                .scope_spans
                .iter_mut()
                .flat_map(|s| &mut s.spans)
            {
                changed |= assign(&mut span.trace_id, &run.trace_id);
                // The run span itself (should a program send it) stays a root.
                if !is_set(&span.parent_span_id) && span.span_id != run.span_id {
                    changed |= assign(&mut span.parent_span_id, &run.span_id);
                }
            }
        }
        changed
    }
}

impl JoinRuns for ExportLogsServiceRequest {
    fn join_runs(&mut self) -> bool {
        let mut changed = false;
        for resource_logs in &mut self.resource_logs {
            let Some(run) = RunIds::of(resource_logs.resource.as_ref()) else {
                continue;
            };
            for record in resource_logs
                .scope_logs
                .iter_mut()
                .flat_map(|s| &mut s.log_records)
            {
                if !is_set(&record.trace_id) {
                    changed |= assign(&mut record.span_id, &run.span_id);
                }
                changed |= assign(&mut record.trace_id, &run.trace_id);
            }
        }
        changed
    }
}

/// Metrics carry the run on their resource already; nothing to join.
impl JoinRuns for ExportMetricsServiceRequest {
    fn join_runs(&mut self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests;
