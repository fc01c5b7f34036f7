use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::logs::v1::{LogRecord as OtlpLogRecord, ResourceLogs, ScopeLogs};

use super::*;
use crate::record::otlp_text;

fn settings(max: usize) -> ToLokiSettings {
    ToLokiSettings {
        hostname: "vm1".into(),
        agent_labels: vec![
            ("env".into(), "local".into()),
            ("job".into(), "hijack".into()),
            ("team-name".into(), "core".into()),
            ("empty".into(), String::new()),
        ],
        max_label_values: max,
    }
}

fn text(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    })
}

fn request(service: Option<&str>, records: Vec<OtlpLogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: service
                    .map(|s| otlp_text("service.name", s))
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn severity_numbers_map_by_their_ranges_and_text_is_read_like_a_file_level() {
    let table = [
        (1, "", Level::Trace),
        (4, "", Level::Trace),
        (5, "", Level::Debug),
        (8, "", Level::Debug),
        (9, "", Level::Info),
        (12, "", Level::Info),
        (13, "", Level::Warn),
        (16, "", Level::Warn),
        (17, "", Level::Error),
        (20, "", Level::Error),
        (21, "", Level::Fatal),
        (24, "", Level::Fatal),
        // The number wins over the text.
        (9, "ERROR", Level::Info),
        // No number (or one out of range): the text, in any case, with synonyms.
        (0, "WARNING", Level::Warn),
        (0, "err", Level::Error),
        (25, "Critical", Level::Fatal),
        (-3, "debug", Level::Debug),
        (0, "", Level::Unknown),
        (0, "loud", Level::Unknown),
        (99, "", Level::Unknown),
    ];
    for (number, text, want) in table {
        assert_eq!(level_of(number, text), want, "{number} {text:?}");
    }
}

#[test]
fn time_then_observed_time_then_receipt_time() {
    let received = Timestamp(5);
    assert_eq!(timestamp_of(7, 9, received), Timestamp(7));
    assert_eq!(timestamp_of(0, 9, received), Timestamp(9));
    assert_eq!(timestamp_of(0, 0, received), received);
    // Past what Loki can take (an i64 of nanoseconds): the next one.
    assert_eq!(timestamp_of(u64::MAX, 9, received), Timestamp(9));
}

#[test]
fn a_record_becomes_an_entry_with_job_host_level_agent_labels_ids_and_line() {
    let mut c = Converter::new(&settings(10));
    let req = request(
        Some("billing"),
        vec![OtlpLogRecord {
            time_unix_nano: 1_700_000_000_000_000_001,
            observed_time_unix_nano: 1_700_000_000_000_000_999,
            severity_number: 13,
            severity_text: "WARN".into(),
            body: text("card declined"),
            trace_id: vec![0xab; 16],
            span_id: vec![0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0xff],
            attributes: vec![otlp_text("user.id", "u-123")],
            ..Default::default()
        }],
    );
    let out = c.convert(&req, Timestamp(1), None);
    assert_eq!(out.len(), 1);
    let e = &out[0];
    assert_eq!(
        e.labels.to_string(),
        r#"{env="local", host="vm1", job="billing", level="warn", team_name="core"}"#
    );
    assert_eq!(e.timestamp, Timestamp(1_700_000_000_000_000_001));
    assert_eq!(e.line, "card declined");
    assert_eq!(
        e.structured_metadata,
        vec![
            ("trace_id".to_string(), "ab".repeat(16)),
            ("span_id".to_string(), "01020304050607ff".to_string()),
        ]
    );
}

#[test]
fn no_service_name_is_unknown_service_and_unset_ids_are_left_out() {
    let mut c = Converter::new(&settings(10));
    let req = request(
        None,
        vec![OtlpLogRecord {
            trace_id: vec![0; 16],
            span_id: Vec::new(),
            ..Default::default()
        }],
    );
    let out = c.convert(&req, Timestamp(42), None);
    assert_eq!(out[0].labels.get("job"), Some(UNKNOWN_SERVICE));
    assert_eq!(out[0].labels.get("level"), Some("unknown"));
    assert_eq!(out[0].timestamp, Timestamp(42));
    assert_eq!(out[0].line, "");
    assert!(out[0].structured_metadata.is_empty());
    // An empty service.name is no name either.
    let out = c.convert(
        &request(Some(""), vec![Default::default()]),
        Timestamp(1),
        None,
    );
    assert_eq!(out[0].labels.get("job"), Some(UNKNOWN_SERVICE));
}

#[test]
fn job_values_are_bounded_by_max_label_values() {
    let mut c = Converter::new(&settings(2));
    let jobs: Vec<String> = ["a", "b", "c", "a", "d"]
        .iter()
        .map(|s| {
            let out = c.convert(
                &request(Some(s), vec![Default::default()]),
                Timestamp(1),
                None,
            );
            out[0].labels.get("job").unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(jobs, ["a", "b", "other", "a", "other"]);
}

#[test]
fn each_sender_has_its_own_bound_on_job_values() {
    let mut c = Converter::new(&settings(2));
    let mut job = |uid: Option<u32>, s: &str| {
        let out = c.convert(
            &request(Some(s), vec![Default::default()]),
            Timestamp(1),
            uid,
        );
        out[0].labels.get("job").unwrap_or_default().to_string()
    };
    // One sender's junk names fill its own bound only.
    for i in 0..55 {
        job(Some(1001), &format!("junk{i}"));
    }
    assert_eq!(job(Some(1001), "junk99"), "other");
    assert_eq!(job(Some(1000), "billing"), "billing");
    assert_eq!(job(Some(1000), "api"), "api");
    assert_eq!(job(Some(1000), "third"), "other");
    assert_eq!(job(None, "unknown_sender"), "unknown_sender");
}

#[test]
fn bodies_that_are_not_strings_become_json_lines() {
    let kv = |k: &str, v: any_value::Value| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    let map = any_value::Value::KvlistValue(KeyValueList {
        values: vec![
            kv("msg", any_value::Value::StringValue("hi \"there\"".into())),
            kv("count", any_value::Value::IntValue(3)),
            kv("ok", any_value::Value::BoolValue(true)),
            kv("ratio", any_value::Value::DoubleValue(0.5)),
            kv("raw", any_value::Value::BytesValue(b"wisp!".to_vec())),
            kv(
                "tags",
                any_value::Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(any_value::Value::StringValue("x".into())),
                    }],
                }),
            ),
            KeyValue {
                key: "none".into(),
                value: None,
                ..Default::default()
            },
        ],
    });
    let line = body_line(Some(&AnyValue { value: Some(map) }));
    assert_eq!(
        line,
        r#"{"count":3,"msg":"hi \"there\"","none":null,"ok":true,"ratio":0.5,"raw":"d2lzcCE=","tags":["x"]}"#
    );
    let int = AnyValue {
        value: Some(any_value::Value::IntValue(-7)),
    };
    assert_eq!(body_line(Some(&int)), "-7");
    assert_eq!(body_line(None), "");
    assert_eq!(body_line(Some(&AnyValue { value: None })), "");
}

#[test]
fn base64_pads_like_the_standard_alphabet() {
    for (raw, want) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"\xff\xfe\xfd", "//79"),
    ] {
        assert_eq!(base64(raw), want, "{raw:?}");
    }
}

#[test]
fn every_record_of_every_resource_and_scope_is_one_entry_in_order() {
    let mut c = Converter::new(&settings(10));
    let mut req = request(
        Some("a"),
        vec![
            OtlpLogRecord {
                body: text("1"),
                ..Default::default()
            },
            OtlpLogRecord {
                body: text("2"),
                ..Default::default()
            },
        ],
    );
    req.resource_logs.extend(
        request(
            Some("b"),
            vec![OtlpLogRecord {
                body: text("3"),
                ..Default::default()
            }],
        )
        .resource_logs,
    );
    let out = c.convert(&req, Timestamp(1), None);
    let got: Vec<(&str, &str)> = out
        .iter()
        .map(|e| (e.labels.get("job").unwrap_or_default(), e.line.as_str()))
        .collect();
    assert_eq!(got, [("a", "1"), ("a", "2"), ("b", "3")]);
    assert!(c
        .convert(&ExportLogsServiceRequest::default(), Timestamp(1), None)
        .is_empty());
}

const RUN: &str = "4BF92F3577B34DA6A3CE929D0E0E4736";

fn run_request(attributes: Vec<KeyValue>, records: Vec<OtlpLogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes,
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn run_attributes(labels: &str, extra: &[(&str, &str)]) -> Vec<KeyValue> {
    [
        ("service.name", "claude-code"),
        ("wisp.run.id", RUN),
        ("wisp.run.name", "ralph"),
        ("wisp.run.labels", labels),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| otlp_text(k, v))
    .collect()
}

#[test]
fn a_runs_records_are_in_the_runs_job_with_its_labels_run_id_and_service() {
    let mut c = Converter::new(&settings(10));
    let req = run_request(
        run_attributes(
            "iter,task,env",
            &[("iter", "3"), ("task", "fix-ci"), ("env", "run")],
        ),
        vec![
            OtlpLogRecord {
                severity_number: 9,
                body: text("thinking"),
                trace_id: vec![0xab; 16],
                span_id: vec![0xcd; 8],
                ..Default::default()
            },
            OtlpLogRecord {
                severity_number: 17,
                body: text("tool failed"),
                ..Default::default()
            },
        ],
    );
    let out = c.convert(&req, Timestamp(1), None);
    assert_eq!(
        out[0].labels.to_string(),
        r#"{env="run", host="vm1", iter="3", job="ralph", level="info", task="fix-ci", team_name="core"}"#
    );
    assert_eq!(out[1].labels.get("level"), Some("error"));
    assert_eq!(out[1].labels.get("iter"), Some("3"));
    let run_id = RUN.to_lowercase();
    assert_eq!(
        out[0].structured_metadata,
        [
            ("trace_id", "ab".repeat(16)),
            ("span_id", "cd".repeat(8)),
            ("run_id", run_id.clone()),
            ("service_name", "claude-code".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v))
    );
    assert_eq!(
        out[1].structured_metadata,
        [
            ("run_id", run_id),
            ("service_name", "claude-code".to_string())
        ]
        .map(|(k, v)| (k.to_string(), v))
    );
    // The line and the time are a record's, as for any other.
    assert_eq!(out[0].line, "thinking");
    assert_eq!(out[0].timestamp, Timestamp(1));
}

#[test]
fn only_valid_listed_run_labels_with_a_string_value_become_labels_at_most_sixteen() {
    let mut c = Converter::new(&settings(10));
    let long = "x".repeat(labels::MAX_VALUE_BYTES + 10);
    let mut values: Vec<(String, String)> = [
        ("JOB", "no"),
        ("User", "no"),
        ("__name__", "no"),
        ("9lives", "no"),
        ("a-b", "no"),
        ("unlisted", "no"),
        ("empty", ""),
        ("ok", "yes"),
        ("long", long.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    values.extend((0..20).map(|i| (format!("l{i:02}"), i.to_string())));
    // Listed: the reserved and invalid names, then empty, count, missing, ok,
    // long and l00..l19 (a name listed twice counts once).
    let listed: Vec<&str> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .filter(|(k, _)| *k != "unlisted")
        .flat_map(|(k, _)| match k {
            "ok" => vec!["count", "missing", "ok", "ok"],
            k => vec![k],
        })
        .chain([" ", "l19"])
        .collect();
    let mut attributes = run_attributes(&listed.join(","), &[]);
    attributes.extend(values.iter().map(|(k, v)| otlp_text(k, v)));
    // A value that is not a string is no label value.
    attributes.push(KeyValue {
        key: "count".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(1)),
        }),
        ..Default::default()
    });
    let out = c.convert(
        &run_request(attributes, vec![Default::default()]),
        Timestamp(1),
        None,
    );
    let got: Vec<(&str, &str)> = out[0]
        .labels
        .iter()
        .filter(|(k, _)| !["env", "host", "job", "level", "team_name"].contains(k))
        .collect();
    // empty, count, missing, ok, long and l00..l10 are the first 16 valid
    // names; those with a string value become labels.
    let mut want = vec![("long", &long[..labels::MAX_VALUE_BYTES]), ("ok", "yes")];
    let numbers: Vec<String> = (0..11).map(|i| i.to_string()).collect();
    let names: Vec<String> = (0..11).map(|i| format!("l{i:02}")).collect();
    want.extend(
        names
            .iter()
            .map(String::as_str)
            .zip(numbers.iter().map(String::as_str)),
    );
    want.sort();
    assert_eq!(got, want);
    assert_eq!(out[0].labels.get("job"), Some("ralph"));
}

#[test]
fn records_of_a_resource_without_a_valid_run_id_are_converted_as_any_others() {
    for run_id in [
        None,
        Some(""),
        Some("0"),
        Some("00000000000000000000000000000000"),
    ] {
        let mut c = Converter::new(&settings(10));
        let mut attributes = vec![
            otlp_text("service.name", "web"),
            otlp_text("wisp.run.name", "ralph"),
            otlp_text("wisp.run.labels", "iter"),
            otlp_text("iter", "3"),
        ];
        attributes.extend(run_id.map(|r| otlp_text("wisp.run.id", r)));
        let record = OtlpLogRecord {
            trace_id: vec![0xab; 16],
            ..Default::default()
        };
        let out = c.convert(&run_request(attributes, vec![record]), Timestamp(1), None);
        assert_eq!(
            out[0].labels.to_string(),
            r#"{env="local", host="vm1", job="web", level="unknown", team_name="core"}"#,
            "{run_id:?}"
        );
        assert_eq!(
            out[0].structured_metadata,
            vec![("trace_id".to_string(), "ab".repeat(16))],
            "{run_id:?}"
        );
    }
}

#[test]
fn a_run_without_a_name_or_service_is_named_as_before_and_its_names_are_bounded() {
    let mut c = Converter::new(&settings(2));
    let job = |c: &mut Converter, attributes: Vec<KeyValue>| {
        let out = c.convert(
            &run_request(attributes, vec![Default::default()]),
            Timestamp(1),
            None,
        );
        (
            out[0].labels.get("job").unwrap_or_default().to_string(),
            out[0].structured_metadata.clone(),
        )
    };
    let (j, meta) = job(
        &mut c,
        vec![
            otlp_text("wisp.run.id", RUN),
            otlp_text("wisp.run.name", ""),
        ],
    );
    assert_eq!(j, UNKNOWN_SERVICE);
    // No service.name: no service_name.
    assert_eq!(meta, [("run_id".to_string(), RUN.to_lowercase())]);
    let (j, _) = job(
        &mut c,
        vec![
            otlp_text("wisp.run.id", RUN),
            otlp_text("service.name", "svc"),
        ],
    );
    assert_eq!(j, "svc");
    let (j, _) = job(
        &mut c,
        vec![
            otlp_text("wisp.run.id", RUN),
            otlp_text("wisp.run.name", "ralph"),
        ],
    );
    assert_eq!(
        j, "other",
        "the third distinct job is past max_label_values"
    );
}

#[test]
fn converting_the_same_run_request_again_gives_the_same_entries() {
    let req = run_request(
        run_attributes("iter", &[("iter", "7")]),
        vec![OtlpLogRecord {
            body: text("x"),
            ..Default::default()
        }],
    );
    let first = Converter::new(&settings(10)).convert(&req, Timestamp(5), None);
    let mut c = Converter::new(&settings(10));
    c.convert(&req, Timestamp(5), None);
    assert_eq!(c.convert(&req, Timestamp(5), None), first);
}
