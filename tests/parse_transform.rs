//! The transform stage as the sinks see it: stream labels, promoted fields under
//! the cardinality guard, the timestamp window, timestamps unique within a
//! source, counters, and the ack passing through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wisp_agent::config::{Config, LogFormat};
use wisp_agent::parse::{ParseSettings, Transformer};
use wisp_agent::record::{Ack, Batch, ResumePoint, SourceBatch, SourceInfo, SourceLine, Timestamp};
use wisp_agent::spool::ResumeState;

const READ_TIME: Timestamp = Timestamp(1_795_388_400_000_000_000); // 2026-11-22T23:00:00Z
const SEC: i64 = 1_000_000_000;

fn settings(max_label_values: usize) -> ParseSettings {
    ParseSettings {
        hostname: "vm1".into(),
        agent_labels: vec![("env".into(), "local".into())],
        max_label_values,
        max_age: Duration::from_secs(7 * 86_400),
        max_ahead: Duration::from_secs(600),
    }
}

fn source(labels: &[(&str, &str)], label_fields: &[&str]) -> Arc<SourceInfo> {
    Arc::new(SourceInfo {
        job: "refly-api".into(),
        filename: Some("/tmp/a.log".into()),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        format: LogFormat::Auto,
        label_fields: label_fields.iter().map(|f| f.to_string()).collect(),
        trace_context: None,
        owner: wisp_agent::record::Owner::UNKNOWN,
    })
}

fn ship(t: &mut Transformer, src: &Arc<SourceInfo>, lines: &[String]) -> Batch {
    t.transform(SourceBatch {
        source: src.clone(),
        lines: lines
            .iter()
            .map(|l| SourceLine {
                text: l.clone(),
                read_time: READ_TIME,
            })
            .collect(),
        ack: Ack::none(),
    })
}

#[test]
fn every_stream_carries_job_host_filename_level_and_static_labels() {
    let mut t = Transformer::new(settings(50));
    let src = source(
        &[("team", "core"), ("job", "not-the-job"), ("k8s-app", "x")],
        &[],
    );
    let batch = ship(&mut t, &src, &[r#"{"level":50,"msg":"boom"}"#.into()]);
    assert_eq!(
        batch.records[0].labels.to_string(),
        r#"{env="local", filename="/tmp/a.log", host="vm1", job="refly-api", k8s_app="x", level="error", team="core"}"#
    );
}

#[test]
fn a_timestamp_outside_the_window_falls_back_to_the_read_time_and_is_counted() {
    let mut t = Transformer::new(settings(50));
    let src = source(&[], &[]);
    let at = |secs_from_read: i64| {
        let ms = (READ_TIME.0 + secs_from_read * SEC) / 1_000_000;
        format!(r#"{{"level":30,"time":{ms}}}"#)
    };
    let lines = [
        at(-60),          // a minute old: kept
        at(-8 * 86_400),  // 8 days old: Loki would reject it
        at(9 * 60),       // 9 minutes ahead: kept
        at(11 * 60),      // 11 minutes ahead: too far
        "no time".into(), // read time, not counted
    ];
    let batch = ship(&mut t, &src, &lines);
    let got: Vec<i64> = batch
        .records
        .iter()
        .map(|r| (r.timestamp.0 - READ_TIME.0) / SEC)
        .collect();
    assert_eq!(got, [-60, 0, 9 * 60, 0, 0]);
    assert_eq!(t.counters().snapshot().timestamps_out_of_window, 2);
}

#[test]
fn promoted_fields_past_the_limit_become_other_and_are_counted() {
    let mut t = Transformer::new(settings(3));
    let src = source(&[], &["service", "region.name"]);
    let lines: Vec<String> = (0..6)
        .map(|i| format!(r#"{{"level":30,"service":"svc-{i}","region.name":"eu"}}"#))
        .chain([r#"{"level":30,"service":"svc-1"}"#.into(), "plain".into()])
        .collect();
    let batch = ship(&mut t, &src, &lines);
    let services: Vec<Option<&str>> = batch
        .records
        .iter()
        .map(|r| r.labels.get("service"))
        .collect();
    assert_eq!(
        services,
        [
            Some("svc-0"),
            Some("svc-1"),
            Some("svc-2"),
            Some("other"),
            Some("other"),
            Some("other"),
            Some("svc-1"),
            None
        ]
    );
    // The name is made valid for Loki; the line without the field has no label.
    assert_eq!(batch.records[0].labels.get("region_name"), Some("eu"));
    assert_eq!(batch.records[7].labels.get("region_name"), None);
    let c = t.counters().snapshot();
    assert_eq!(c.label_values_overflowed, 3);
    // The guard remembers across batches.
    let batch = ship(&mut t, &src, &[r#"{"service":"svc-9"}"#.into()]);
    assert_eq!(batch.records[0].labels.get("service"), Some("other"));
}

#[test]
fn lines_pass_through_unchanged_and_the_ack_is_carried_to_the_sink() {
    let mut t = Transformer::new(settings(50));
    let acked = Arc::new(AtomicBool::new(false));
    let flag = acked.clone();
    let lines = vec![
        "\u{0}NUL and \u{FFFD} replacement".to_string(),
        "{\"level\":30,".to_string(),
        String::new(),
        "  ".to_string(),
    ];
    let batch = t.transform(SourceBatch {
        source: source(&[], &[]),
        lines: lines
            .iter()
            .map(|l| SourceLine {
                text: l.clone(),
                read_time: READ_TIME,
            })
            .collect(),
        ack: Ack::new(move || flag.store(true, Ordering::SeqCst)),
    });
    let shipped: Vec<&str> = batch.records.iter().map(|r| r.line.as_str()).collect();
    assert_eq!(shipped, lines);
    assert!(!acked.load(Ordering::SeqCst));
    batch.ack.done();
    assert!(acked.load(Ordering::SeqCst));
    let c = t.counters().snapshot();
    assert_eq!((c.lines, c.parse_misses, c.text), (4, 1, 4));
}

#[test]
fn counters_are_named_as_metrics() {
    let mut t = Transformer::new(settings(50));
    ship(
        &mut t,
        &source(&[], &[]),
        &[
            r#"{"level":30}"#.into(),
            "level=warn".into(),
            "{broken".into(),
        ],
    );
    let metrics = t.counters().snapshot().metrics();
    let get = |name: &str| metrics.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    assert_eq!(get("wisp_parse_lines_total"), Some(3));
    assert_eq!(get("wisp_parse_json_lines_total"), Some(1));
    assert_eq!(get("wisp_parse_logfmt_lines_total"), Some(1));
    assert_eq!(get("wisp_parse_misses_total"), Some(1));
}

#[test]
fn settings_come_from_the_agent_section() {
    let mut config = Config::default();
    config.agent.hostname = "vm7".into();
    config.agent.labels.insert("env".into(), "ci".into());
    let s = ParseSettings::from_config(&config);
    assert_eq!(s.hostname, "vm7");
    assert_eq!(s.agent_labels, [("env".to_string(), "ci".to_string())]);
    assert_eq!(s.max_label_values, 50);
    assert_eq!(s.max_age, Duration::from_secs(7 * 86_400));
    assert_eq!(s.max_ahead, Duration::from_secs(600));
}

/// A batch of `lines` read at `READ_TIME` from the file whose resume key is
/// `key`, as the tailer hands it on.
fn from_file(key: u8, lines: &[&str]) -> SourceBatch {
    SourceBatch {
        source: source(&[], &[]),
        lines: lines
            .iter()
            .map(|l| SourceLine {
                text: l.to_string(),
                read_time: READ_TIME,
            })
            .collect(),
        ack: Ack::none().with_resume(ResumePoint {
            key: vec![key; 16],
            state: Some(vec![1]),
        }),
    }
}

fn offsets(batch: &Batch, from: i64) -> Vec<i64> {
    batch.records.iter().map(|r| r.timestamp.0 - from).collect()
}

#[test]
fn identical_lines_read_together_get_distinct_timestamps_in_read_order() {
    let mut t = Transformer::new(settings(50));
    // cloud-init's table rules, written at once, carry no time.
    let rule = "ci-info: +-----+";
    let batch = t.transform(from_file(1, &[rule, rule, "ci-info: | a |", rule]));
    assert_eq!(offsets(&batch, READ_TIME.0), [0, 1, 2, 3]);
    // The next batch of the file, read at the same time, goes on after them.
    let batch = t.transform(from_file(1, &[rule]));
    assert_eq!(offsets(&batch, READ_TIME.0), [4]);
    // Another file has its own clock.
    let batch = t.transform(from_file(2, &[rule]));
    assert_eq!(offsets(&batch, READ_TIME.0), [0]);
}

#[test]
fn equal_own_times_get_a_nanosecond_offset_in_read_order() {
    let mut t = Transformer::new(settings(50));
    let ms = (READ_TIME.0 - 60 * SEC) / 1_000_000;
    let pino = format!(r#"{{"level":30,"time":{ms},"msg":"retrying"}}"#);
    let next = format!(r#"{{"level":40,"time":{},"msg":"gave up"}}"#, ms + 1);
    let batch = t.transform(from_file(1, &[&pino, &pino, &next, &pino]));
    // The third line's own time is the next millisecond: kept; the fourth
    // goes back before it and is taken as it is written.
    assert_eq!(offsets(&batch, ms * 1_000_000), [0, 1, 1_000_000, 0]);
    let batch = t.transform(from_file(1, &[&next, &next]));
    assert_eq!(offsets(&batch, ms * 1_000_000), [1_000_000, 1_000_001]);
}

#[test]
fn the_clock_is_stored_with_the_batch_and_a_restart_goes_on_from_it() {
    let mut t = Transformer::new(settings(50));
    let rule = "ci-info: +-----+";
    let mut batch = t.transform(from_file(1, &[rule, rule]));
    let points = batch.ack.take_resume();
    assert_eq!(points.len(), 2, "the file's resume point, then its clock");
    // What the spool's commits leave, after a crash.
    let state: ResumeState = points
        .into_iter()
        .map(|p| (p.key, p.state.unwrap()))
        .collect();
    let mut restarted = Transformer::new(settings(50));
    restarted.restore_clocks(&state);
    let batch = restarted.transform(from_file(1, &[rule]));
    assert_eq!(offsets(&batch, READ_TIME.0), [2]);
}
