//! The span of each `wisp-agent exec` run, made by the daemon from the run's
//! `hello` and `end` frames (see [`crate::source::exec::server`]) and handed to
//! the OTLP relay's spool, so it reaches the collector like any span a program
//! sent: durably, retried while the host is away. `exec` itself never sends a
//! span; nor can a user forge one: the daemon builds it, and the user in it
//! (`enduser.id`, `user`) is the socket peer's, not what the client says.
//!
//! The span has the run's own trace and span ids (the command got them as
//! `TRACEPARENT`, so its spans are children of it), the job as its name and as
//! `service.name`, the command line, the exit status, and the `--label`s as
//! attributes; a non-zero exit is an error status. When known: the cost the
//! command reported (`wisp.exec.cost_usd`, a double) and HEAD's commit before
//! and after the run (`wisp.git.head.before`, `wisp.git.head.after`). A run
//! whose `exec` died without recording an end (`kill -9`) gets a span ending at
//! its capture's last write, marked as an error, when a later `exec` flushes
//! the capture.
//!
//! Each run is handed on once: the runs already handled are kept in
//! `state_dir/exec-spans.json` (written temp → fsync → rename after the spool
//! took the span), at most [`MAX_HANDLED`] of them, newest kept.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::record::otlp_text as text;

/// The list of handled runs, under `state_dir`.
pub const HANDLED_FILE: &str = "exec-spans.json";
/// The largest `exec-spans.json` read; a larger one is taken as unreadable.
const MAX_HANDLED_BYTES: u64 = 16 << 20;

/// At most this many runs are remembered as handled (oldest forgotten first): a
/// capture replayed after that many newer runs would be shipped again.
pub const MAX_HANDLED: usize = 10_000;

#[derive(Default, Serialize, Deserialize)]
struct HandledFile {
    /// Run key → when it was handled (ms since the epoch).
    runs: BTreeMap<String, u64>,
}

/// The runs already handed on, by run key; see the module doc.
pub struct Handled {
    path: PathBuf,
    runs: BTreeMap<String, u64>,
    max: usize,
}

impl Handled {
    /// Reads the list under `state_dir` (an unreadable one is empty: at worst a
    /// replayed run gets a second span).
    pub fn load(state_dir: &Path) -> Handled {
        let path = state_dir.join(HANDLED_FILE);
        // Capped like every metadata read: 10 000 runs take about 1 MiB.
        let runs = match crate::state_file::read_capped(&path, MAX_HANDLED_BYTES) {
            Ok(crate::state_file::Capped::Bytes(b)) => Some(b),
            _ => None,
        }
        .and_then(|b| serde_json::from_slice::<HandledFile>(&b).ok())
        .map(|f| f.runs)
        .unwrap_or_default();
        Handled {
            path,
            runs,
            max: MAX_HANDLED,
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.runs.contains_key(key)
    }

    /// The handled runs' keys (`uid:trace id:span id`).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.runs.keys().map(String::as_str)
    }

    /// Adds `key` and writes the list durably.
    pub fn insert(&mut self, key: String, now_ms: u64) -> io::Result<()> {
        self.runs.insert(key, now_ms);
        while self.runs.len() > self.max {
            let Some(oldest) = self
                .runs
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.runs.remove(&oldest);
        }
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&HandledFile {
            runs: self.runs.clone(),
        })
        .map_err(io::Error::other)?;
        let mut f = crate::state_file::create_temp(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)
    }
}

/// What the daemon needs to describe a run.
#[derive(Clone, Debug)]
pub struct SpanSettings {
    pub hostname: String,
    /// `otlp.resource_attributes`.
    pub resource_attributes: Vec<(String, String)>,
}

/// A finished run, as the daemon knows it.
#[derive(Clone, Debug)]
pub struct RunSpan {
    pub job: String,
    pub labels: BTreeMap<String, String>,
    pub command: Vec<String>,
    pub trace_id: String,
    pub span_id: String,
    pub started_ms: u64,
    pub ended_ms: u64,
    /// The exit status, `None` when its `exec` died before it could say.
    pub exit: Option<i32>,
    /// The user who ran it (SO_PEERCRED: the name of the uid, or the uid).
    pub user: String,
    /// HEAD's commit before and after the run, when run in a git work tree.
    pub git_head_before: Option<String>,
    pub git_head_after: Option<String>,
    /// The cost the command reported (see [`super::cost`]).
    pub cost_usd: Option<f64>,
}

fn hex_bytes(s: &str, len: usize) -> Option<Vec<u8>> {
    if s.len() != len * 2 {
        return None;
    }
    (0..len)
        .map(|i| u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok())
        .collect()
}

/// The trace request holding the span of `run`; `None` when its ids are not
/// valid hex.
pub fn span_request(run: &RunSpan, settings: &SpanSettings) -> Option<Vec<u8>> {
    let s = run;
    let trace_id = hex_bytes(&s.trace_id, 16)?;
    let span_id = hex_bytes(&s.span_id, 8)?;
    let mut attributes = vec![KeyValue {
        key: "process.command_args".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue {
                values: s
                    .command
                    .iter()
                    .map(|a| AnyValue {
                        value: Some(any_value::Value::StringValue(a.clone())),
                    })
                    .collect(),
            })),
        }),
        ..Default::default()
    }];
    if let Some(program) = s.command.first() {
        attributes.push(text("process.executable.name", program));
    }
    if let Some(code) = s.exit {
        attributes.push(KeyValue {
            key: "process.exit.code".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(i64::from(code))),
            }),
            ..Default::default()
        });
    }
    attributes.extend(s.labels.iter().map(|(k, v)| text(k, v)));
    if let Some(cost) = s.cost_usd {
        attributes.push(KeyValue {
            key: "wisp.exec.cost_usd".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::DoubleValue(cost)),
            }),
            ..Default::default()
        });
    }
    for (key, head) in [
        ("wisp.git.head.before", &s.git_head_before),
        ("wisp.git.head.after", &s.git_head_after),
    ] {
        if let Some(head) = head {
            attributes.push(text(key, head));
        }
    }
    attributes.push(text("enduser.id", &s.user));
    attributes.push(text("user", &s.user));
    let status = match s.exit {
        Some(0) => Status::default(),
        Some(code) => Status {
            message: format!("exit status {code}"),
            code: status::StatusCode::Error as i32,
        },
        None => Status {
            message: "wisp-agent exec ended before the command's exit was recorded".into(),
            code: status::StatusCode::Error as i32,
        },
    };
    let mut resource = vec![
        text("service.name", &s.job),
        text("host.name", &settings.hostname),
    ];
    resource.extend(
        settings
            .resource_attributes
            .iter()
            .filter(|(k, _)| k != "service.name" && k != "host.name")
            .map(|(k, v)| text(k, v)),
    );
    let span = Span {
        trace_id,
        span_id,
        name: s.job.clone(),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: s.started_ms.saturating_mul(1_000_000),
        end_time_unix_nano: s.ended_ms.max(s.started_ms).saturating_mul(1_000_000),
        attributes,
        status: Some(status),
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "wisp-agent exec".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Some(request.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    fn finished(exit: Option<i32>) -> RunSpan {
        RunSpan {
            job: "ralph".into(),
            labels: [("iter".to_string(), "3".to_string())].into(),
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
            started_ms: 1000,
            exit,
            ended_ms: 2500,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            user: "alice".into(),
            git_head_before: None,
            git_head_after: None,
            cost_usd: None,
        }
    }

    fn settings() -> SpanSettings {
        SpanSettings {
            hostname: "vm1".into(),
            resource_attributes: vec![("env".into(), "local".into())],
        }
    }

    fn decode(body: &[u8]) -> (Resource, Span) {
        let req = ExportTraceServiceRequest::decode(body).unwrap();
        let rs = &req.resource_spans[0];
        (
            rs.resource.clone().unwrap(),
            rs.scope_spans[0].spans[0].clone(),
        )
    }

    fn attr<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        kvs.iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn a_failed_run_is_an_error_span_with_its_ids_times_command_and_labels() {
        let body = span_request(&finished(Some(3)), &settings()).unwrap();
        let (resource, span) = decode(&body);
        assert_eq!(hex(&span.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&span.span_id), "b7ad6b7169203331");
        assert_eq!(span.name, "ralph");
        assert_eq!(span.start_time_unix_nano, 1_000_000_000);
        assert_eq!(span.end_time_unix_nano, 2_500_000_000);
        let status = span.status.unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "exit status 3");
        assert_eq!(
            attr(&span.attributes, "process.exit.code"),
            Some(&any_value::Value::IntValue(3))
        );
        assert_eq!(
            attr(&span.attributes, "iter"),
            Some(&any_value::Value::StringValue("3".into()))
        );
        assert_eq!(
            attr(&span.attributes, "enduser.id"),
            Some(&any_value::Value::StringValue("alice".into()))
        );
        assert_eq!(
            attr(&resource.attributes, "service.name"),
            Some(&any_value::Value::StringValue("ralph".into()))
        );
        assert_eq!(
            attr(&resource.attributes, "host.name"),
            Some(&any_value::Value::StringValue("vm1".into()))
        );
        assert_eq!(
            attr(&resource.attributes, "env"),
            Some(&any_value::Value::StringValue("local".into()))
        );
    }

    #[test]
    fn a_clean_run_has_an_unset_status_and_a_run_without_a_recorded_end_is_an_error() {
        let (_, span) = decode(&span_request(&finished(Some(0)), &settings()).unwrap());
        assert_eq!(span.status.unwrap().code, status::StatusCode::Unset as i32);
        let (_, span) = decode(&span_request(&finished(None), &settings()).unwrap());
        let status = span.status.unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert!(status.message.contains("before the command's exit"));
    }

    #[test]
    fn cost_and_git_heads_are_attributes_when_known() {
        let (_, span) = decode(&span_request(&finished(Some(0)), &settings()).unwrap());
        for key in [
            "wisp.exec.cost_usd",
            "wisp.git.head.before",
            "wisp.git.head.after",
        ] {
            assert_eq!(attr(&span.attributes, key), None, "{key}");
        }
        let mut run = finished(Some(0));
        run.cost_usd = Some(0.125);
        run.git_head_before = Some("a".repeat(40));
        run.git_head_after = Some("b".repeat(40));
        let (_, span) = decode(&span_request(&run, &settings()).unwrap());
        assert_eq!(
            attr(&span.attributes, "wisp.exec.cost_usd"),
            Some(&any_value::Value::DoubleValue(0.125))
        );
        assert_eq!(
            attr(&span.attributes, "wisp.git.head.after"),
            Some(&any_value::Value::StringValue("b".repeat(40)))
        );
    }

    #[test]
    fn ids_that_are_not_hex_make_no_span() {
        let mut run = finished(Some(0));
        run.trace_id = "zz".repeat(16);
        assert!(span_request(&run, &settings()).is_none());
        run.trace_id = "ab".into();
        assert!(span_request(&run, &settings()).is_none());
    }

    #[test]
    fn the_handled_list_survives_a_restart_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Handled::load(dir.path());
        assert!(!h.contains("a"));
        h.insert("a".into(), 1).unwrap();
        assert!(Handled::load(dir.path()).contains("a"));
        h.max = 3;
        for i in 0..3 {
            h.insert(format!("r{i}"), 2 + i).unwrap();
        }
        let h = Handled::load(dir.path());
        assert!(!h.contains("a"), "the oldest is forgotten");
        assert_eq!(h.runs.len(), 3);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
