//! The span of each `wisp-agent exec` run, made by the daemon from the run's
//! finished `.json` (see [`crate::source::exec`]) and handed to the OTLP relay's
//! spool, so it reaches the collector like any span a program sent: durably,
//! retried while the host is away. `exec` itself never touches the network.
//!
//! The span has the run's own trace and span ids (the command got them as
//! `TRACEPARENT`, so its spans are children of it), the job as its name and as
//! `service.name`, the command line, the exit status, and the `--label`s as
//! attributes; a non-zero exit is an error status. A run whose `exec` died
//! without recording an end (`kill -9`) gets a span ending at its capture's
//! last write, marked as an error, once that write is ten minutes old.
//!
//! Each run is handed on once: the names of the runs already handled are kept in
//! `state_dir/exec-spans.json` (written temp → rename after the spool took the
//! span). `exec` deletes a capture only once its run is listed there, so no span
//! is lost to the clean-up. With `[otlp]` disabled the runs are listed without a
//! span, so captures are still cleaned up.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

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
use tokio_util::sync::CancellationToken;

use crate::record::{otlp_text as text, OtlpPayload, OtlpSignal};
use crate::source::exec::{self, Sidecar};
use crate::source::otlp::Intake;

/// The list of handled runs, under `state_dir`.
pub const HANDLED_FILE: &str = "exec-spans.json";

/// How often the capture directory is looked at for finished runs.
const SCAN_EVERY: Duration = Duration::from_secs(1);

#[derive(Default, Serialize, Deserialize)]
struct HandledFile {
    runs: BTreeSet<String>,
}

/// The runs (capture stems, `<started_ms>-<pid>`) already handled.
pub fn read_handled(state_dir: &Path) -> BTreeSet<String> {
    fs::read(state_dir.join(HANDLED_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<HandledFile>(&b).ok())
        .map(|f| f.runs)
        .unwrap_or_default()
}

fn write_handled(state_dir: &Path, runs: &BTreeSet<String>) -> io::Result<()> {
    let path = state_dir.join(HANDLED_FILE);
    let tmp = state_dir.join(format!("{HANDLED_FILE}.tmp"));
    let bytes =
        serde_json::to_vec(&HandledFile { runs: runs.clone() }).map_err(io::Error::other)?;
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, &path)
}

/// What the daemon needs to describe a run.
#[derive(Clone, Debug)]
pub struct SpanSettings {
    pub hostname: String,
    /// `otlp.resource_attributes`.
    pub resource_attributes: Vec<(String, String)>,
}

/// A finished run found in the capture directory.
struct Finished {
    stem: String,
    sidecar: Sidecar,
    /// The run's end in ms since the epoch.
    ended_ms: u64,
    /// Whether its `exec` recorded the end (else it died first).
    recorded: bool,
}

/// The finished runs in `dir` not in `handled`, oldest first.
fn finished_runs(dir: &Path, handled: &BTreeSet<String>) -> Vec<Finished> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        if handled.contains(&stem) {
            continue;
        }
        let Some(sidecar) = exec::read_sidecar(&path) else {
            continue;
        };
        let (ended_ms, recorded) = match (sidecar.exit, sidecar.ended_ms) {
            (Some(_), Some(ended)) => (ended, true),
            _ if !exec::run_is_over(&sidecar, &path) => continue,
            // Its exec died before it could write the end: the capture's last
            // write is the best end there is.
            _ => (
                last_write_ms(&path.with_extension("log")).unwrap_or(sidecar.started_ms),
                false,
            ),
        };
        out.push(Finished {
            stem,
            sidecar,
            ended_ms,
            recorded,
        });
    }
    out.sort_by_key(|f| f.sidecar.started_ms);
    out
}

fn last_write_ms(path: &Path) -> Option<u64> {
    let modified = fs::metadata(path).ok()?.modified().ok()?;
    u64::try_from(modified.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
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
/// valid hex (a hand-edited `.json`).
fn span_request(run: &Finished, settings: &SpanSettings) -> Option<Vec<u8>> {
    let s = &run.sidecar;
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
    let status = match (s.exit, run.recorded) {
        (Some(0), true) => Status::default(),
        (Some(code), true) => Status {
            message: format!("exit status {code}"),
            code: status::StatusCode::Error as i32,
        },
        _ => Status {
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
        end_time_unix_nano: run.ended_ms.max(s.started_ms).saturating_mul(1_000_000),
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

/// Runs until `cancel`: every second, hands the span of each newly finished run
/// under `state_dir/exec/` to `intake` (or, without one, only lists the run as
/// handled), then records it in [`HANDLED_FILE`].
pub async fn run(
    state_dir: PathBuf,
    intake: Option<Intake>,
    settings: SpanSettings,
    cancel: CancellationToken,
) {
    let dir = state_dir.join(exec::CAPTURE_DIR);
    let mut handled = read_handled(&state_dir);
    let mut write_failing = false;
    loop {
        let mut changed = false;
        for run in finished_runs(&dir, &handled) {
            if cancel.is_cancelled() {
                break;
            }
            if let Some(intake) = &intake {
                match span_request(&run, &settings) {
                    Some(body) => {
                        let payload = OtlpPayload {
                            signal: OtlpSignal::Traces,
                            body: body.into(),
                        };
                        if let Err(e) = intake.store(payload).await {
                            // Not handled: tried again on the next scan.
                            tracing::debug!("cannot buffer the span of exec run {}: {e}", run.stem);
                            break;
                        }
                    }
                    None => tracing::warn!(
                        "exec run {} has no valid trace ids in its .json; no span for it",
                        run.stem
                    ),
                }
            }
            handled.insert(run.stem);
            changed = true;
        }
        // Forget runs whose capture is gone (deleted by a later exec).
        let before = handled.len();
        handled.retain(|stem| dir.join(format!("{stem}.json")).exists());
        changed |= handled.len() != before;
        if changed {
            match write_handled(&state_dir, &handled) {
                Ok(()) => write_failing = false,
                Err(e) if !write_failing => {
                    tracing::warn!(
                        "cannot write {} ({e}): finished exec captures are not deleted until it can be",
                        state_dir.join(HANDLED_FILE).display()
                    );
                    write_failing = true;
                }
                Err(_) => {}
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SCAN_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    fn finished(exit: Option<i32>, recorded: bool) -> Finished {
        Finished {
            stem: "1000-42".into(),
            sidecar: Sidecar {
                job: "ralph".into(),
                labels: [("iter".to_string(), "3".to_string())].into(),
                command: vec!["sh".into(), "-c".into(), "exit 3".into()],
                pid: 42,
                started_ms: 1000,
                exit,
                ended_ms: Some(2500),
                trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
                span_id: "b7ad6b7169203331".into(),
            },
            ended_ms: 2500,
            recorded,
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
        let body = span_request(&finished(Some(3), true), &settings()).unwrap();
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
        let (_, span) = decode(&span_request(&finished(Some(0), true), &settings()).unwrap());
        assert_eq!(span.status.unwrap().code, status::StatusCode::Unset as i32);
        let (_, span) = decode(&span_request(&finished(None, false), &settings()).unwrap());
        let status = span.status.unwrap();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert!(status.message.contains("before the command's exit"));
    }

    #[test]
    fn ids_that_are_not_hex_make_no_span() {
        let mut run = finished(Some(0), true);
        run.sidecar.trace_id = "zz".repeat(16);
        assert!(span_request(&run, &settings()).is_none());
        run.sidecar.trace_id = "ab".into();
        assert!(span_request(&run, &settings()).is_none());
    }

    #[test]
    fn the_handled_list_round_trips_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_handled(dir.path()).is_empty());
        let runs: BTreeSet<String> = ["1-2".to_string(), "3-4".to_string()].into();
        write_handled(dir.path(), &runs).unwrap();
        assert_eq!(read_handled(dir.path()), runs);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
