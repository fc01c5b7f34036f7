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
//! `state_dir/exec-spans.log`, one line appended (and fdatasynced) per run
//! after the spool took its span: a few dozen bytes a run, not the whole list.
//! At most [`MAX_HANDLED`] runs are remembered, newest kept; once the file holds
//! twice as many lines it is compacted (the newest written temp → fsync →
//! rename), so its size and the cost of a run stay bounded. The JSON list an
//! older version kept (`exec-spans.json`) is read once and folded in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File};
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
use serde::Deserialize;

use crate::record::otlp_text as text;

/// The journal of handled runs, under `state_dir`.
pub const HANDLED_FILE: &str = "exec-spans.log";
/// The list an older version rewrote per run; read once, then removed.
const LEGACY_HANDLED_FILE: &str = "exec-spans.json";
/// The largest handled file read; a larger one is taken as unreadable.
const MAX_HANDLED_BYTES: u64 = 16 << 20;

/// At most this many runs are remembered as handled (oldest forgotten first): a
/// capture replayed after that many newer runs would be shipped again.
pub const MAX_HANDLED: usize = 10_000;

#[derive(Default, Deserialize)]
struct LegacyFile {
    /// Run key → when it was handled (ms since the epoch).
    runs: BTreeMap<String, u64>,
}

/// The runs already handed on, by run key; see the module doc.
pub struct Handled {
    path: PathBuf,
    /// Run key → when it was handled (ms since the epoch).
    runs: HashMap<String, u64>,
    /// The keys, oldest first.
    order: VecDeque<String>,
    /// The journal, open for appending once a run was added since the load.
    file: Option<File>,
    /// Lines in the journal (valid or not): past `2 × max` it is compacted.
    lines: usize,
    max: usize,
}

impl Handled {
    /// Reads the journal under `state_dir` (an unreadable one is empty: at
    /// worst a replayed run gets a second span), and an older version's list.
    pub fn load(state_dir: &Path) -> Handled {
        let path = state_dir.join(HANDLED_FILE);
        let mut h = Handled {
            path,
            runs: HashMap::new(),
            order: VecDeque::new(),
            file: None,
            lines: 0,
            max: MAX_HANDLED,
        };
        let legacy = state_dir.join(LEGACY_HANDLED_FILE);
        let mut old: Vec<(String, u64)> = read(&legacy)
            .and_then(|b| serde_json::from_slice::<LegacyFile>(&b).ok())
            .map(|f| f.runs.into_iter().collect())
            .unwrap_or_default();
        old.sort_by_key(|(_, at)| *at);
        for (key, at) in old {
            h.remember(key, at);
        }
        if let Some(bytes) = read(&h.path) {
            for line in bytes.split(|&b| b == b'\n') {
                if line.is_empty() {
                    continue;
                }
                h.lines += 1;
                // A line a crash cut short has no time: skipped.
                let parsed = std::str::from_utf8(line).ok().and_then(|l| {
                    let (key, at) = l.split_once(' ')?;
                    Some((key.to_owned(), at.parse().ok()?))
                });
                if let Some((key, at)) = parsed {
                    h.remember(key, at);
                }
            }
        }
        if legacy.exists() {
            // Folded in: written out whole once, then the old list goes.
            match h.compact() {
                Ok(()) => {
                    let _ = fs::remove_file(&legacy);
                }
                Err(e) => tracing::warn!(
                    "cannot write {}: {e}; the handled exec runs are read from {} again at the next start",
                    h.path.display(),
                    legacy.display()
                ),
            }
        }
        h
    }

    fn remember(&mut self, key: String, at: u64) {
        if self.runs.insert(key.clone(), at).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.max {
            if let Some(oldest) = self.order.pop_front() {
                self.runs.remove(&oldest);
            }
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.runs.contains_key(key)
    }

    /// The handled runs' keys (`uid:trace id:span id`).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// Adds `key` and appends it to the journal durably (one line, one
    /// fdatasync; a compaction now and then).
    pub fn insert(&mut self, key: String, now_ms: u64) -> io::Result<()> {
        if key.contains([' ', '\n']) {
            return Err(io::Error::other("a run key holds a space or a newline"));
        }
        self.remember(key.clone(), now_ms);
        if self.lines >= self.max.saturating_mul(2) {
            return self.compact();
        }
        let line = format!("{key} {now_ms}\n");
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(open_append(&self.path)?),
        };
        file.write_all(line.as_bytes())?;
        file.sync_data()?;
        self.lines += 1;
        Ok(())
    }

    /// Rewrites the journal with the runs remembered (temp → fsync → rename).
    fn compact(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        let mut text = String::with_capacity(self.order.len() * 72);
        for key in &self.order {
            let at = self.runs.get(key).copied().unwrap_or(0);
            text.push_str(&format!("{key} {at}\n"));
        }
        let mut f = crate::state_file::create_temp(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        self.file = None;
        self.lines = self.order.len();
        Ok(())
    }
}

/// A handled file's bytes, `None` when absent, unreadable or over the cap.
fn read(path: &Path) -> Option<Vec<u8>> {
    match crate::state_file::read_capped(path, MAX_HANDLED_BYTES) {
        Ok(crate::state_file::Capped::Bytes(b)) => Some(b),
        _ => None,
    }
}

/// Opens the journal for appending: created 0600 if missing, never through a
/// symlink, a regular file only.
fn open_append(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is a {}, not a regular file",
            path.display(),
            crate::state_file::kind_of(&meta.file_type())
        )));
    }
    Ok(file)
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
        let mut h = Handled::load(dir.path());
        h.max = 3;
        h.remember("x".into(), 0);
        let h = Handled::load(dir.path());
        assert!(!h.contains("x"), "only what was inserted is written");
        let mut h = Handled::load(dir.path());
        h.max = 3;
        h.insert("r3".into(), 9).unwrap();
        assert!(
            !h.contains("a") && !h.contains("r0"),
            "the oldest are forgotten"
        );
        assert_eq!(h.runs.len(), 3);
    }

    #[test]
    fn a_run_appends_one_line_and_the_journal_is_compacted_at_twice_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HANDLED_FILE);
        let mut h = Handled::load(dir.path());
        h.max = 4;
        h.insert("0:t:s".into(), 5).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0:t:s 5\n");
        for i in 0..7 {
            h.insert(format!("k{i}"), 10 + i).unwrap();
        }
        // Eight lines: the ninth run compacts to the newest four.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 8);
        h.insert("k7".into(), 20).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "k4 14\nk5 15\nk6 16\nk7 20\n"
        );
        h.insert("k8".into(), 21).unwrap();
        let again = Handled::load(dir.path());
        assert!(again.contains("k8") && again.contains("k5"));
        assert!(h.insert("a b".into(), 1).is_err());
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_an_older_json_list_is_folded_in() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(LEGACY_HANDLED_FILE),
            r#"{"runs":{"old:a:b":3,"old:c:d":4}}"#,
        )
        .unwrap();
        let h = Handled::load(dir.path());
        assert!(h.contains("old:a:b") && h.contains("old:c:d"));
        assert!(!dir.path().join(LEGACY_HANDLED_FILE).exists());
        let path = dir.path().join(HANDLED_FILE);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"new:e:f 7\nnew:g:h").unwrap();
        let h = Handled::load(dir.path());
        assert!(h.contains("old:a:b") && h.contains("new:e:f"));
        assert!(!h.contains("new:g:h"));
    }

    #[test]
    fn the_journal_is_not_appended_through_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(HANDLED_FILE)).unwrap();
        let mut h = Handled::load(dir.path());
        assert!(h.insert("k".into(), 1).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
