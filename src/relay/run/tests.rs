use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};

use super::*;
use crate::record::otlp_text;

const R: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const R_TRACE: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const R_SPAN: [u8; 8] = [0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36];

fn resource(attributes: Vec<KeyValue>) -> Option<Resource> {
    Some(Resource {
        attributes,
        ..Default::default()
    })
}

fn run_resource(run_id: &str) -> Option<Resource> {
    resource(vec![
        otlp_text("service.name", "claude-code"),
        otlp_text(RUN_ID, run_id),
        otlp_text(RUN_NAME, "ralph"),
    ])
}

fn span(id: u8, parent: Option<u8>) -> Span {
    Span {
        trace_id: vec![0x11; 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: format!("span {id}"),
        ..Default::default()
    }
}

fn traces(resource: Option<Resource>, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource,
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn logs(resource: Option<Resource>, records: Vec<LogRecord>) -> ResourceLogs {
    ResourceLogs {
        resource,
        scope_logs: vec![ScopeLogs {
            log_records: records,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn a_run_id_is_32_hex_digits_in_either_case_and_not_zero() {
    assert_eq!(run_trace_id(R), Some(R_TRACE));
    assert_eq!(run_trace_id(&R.to_uppercase()), Some(R_TRACE));
    assert_eq!(run_span_id(R), Some(R_SPAN));
    assert_eq!(R_SPAN, R_TRACE[8..]);
    for bad in [
        "",
        &R[..31],
        &format!("{R}0"),
        &format!(" {}", &R[1..]),
        &format!("{}g", &R[..31]),
        "0-f92f3577b34da6a3ce929d0e0e4736",
        "00000000000000000000000000000000",
        // Its low half is no span id: no run span to hang roots on.
        "4bf92f3577b34da60000000000000000",
        "4bf92f3577b34da6a3ce929d0e0e473é",
    ] {
        assert_eq!(run_trace_id(bad), None, "{bad:?}");
        assert_eq!(run_span_id(bad), None, "{bad:?}");
    }
}

#[test]
fn a_runs_spans_join_its_trace_and_its_roots_become_children_of_the_run_span() {
    let mut link = span::Link {
        trace_id: vec![0x22; 16],
        span_id: vec![0x23; 8],
        ..Default::default()
    };
    link.attributes.push(otlp_text("why", "follows"));
    let mut root = span(1, None);
    root.links.push(link.clone());
    root.events.push(span::Event {
        name: "retry".into(),
        ..Default::default()
    });
    let mut zero_parent = span(3, None);
    zero_parent.parent_span_id = vec![0; 8];
    let mut req = ExportTraceServiceRequest {
        resource_spans: vec![traces(
            run_resource(R),
            vec![root.clone(), span(2, Some(1)), zero_parent],
        )],
    };
    assert!(req.join_runs());
    let spans = &req.resource_spans[0].scope_spans[0].spans;
    for s in spans {
        assert_eq!(s.trace_id, R_TRACE, "{}", s.name);
    }
    let ids: Vec<(Vec<u8>, Vec<u8>)> = spans
        .iter()
        .map(|s| (s.span_id.clone(), s.parent_span_id.clone()))
        .collect();
    assert_eq!(
        ids,
        [
            (vec![1; 8], R_SPAN.to_vec()),
            (vec![2; 8], vec![1; 8]),
            (vec![3; 8], R_SPAN.to_vec()),
        ]
    );
    // Nothing else of a span moves: links keep their own trace.
    assert_eq!(spans[0].links, vec![link]);
    assert_eq!(spans[0].events, root.events);
    assert_eq!(spans[0].name, "span 1");
    assert_eq!(
        req.resource_spans[0].resource,
        run_resource(R),
        "the resource is kept"
    );
}

#[test]
fn spans_already_in_the_runs_trace_are_no_change() {
    let mut child = span(5, None);
    child.trace_id = R_TRACE.to_vec();
    child.parent_span_id = R_SPAN.to_vec();
    let mut grandchild = span(6, Some(5));
    grandchild.trace_id = R_TRACE.to_vec();
    let mut req = ExportTraceServiceRequest {
        resource_spans: vec![traces(
            run_resource(&R.to_uppercase()),
            vec![child, grandchild],
        )],
    };
    let before = req.clone();
    assert!(!req.join_runs());
    assert_eq!(req, before);
}

#[test]
fn the_run_span_itself_stays_a_root() {
    let mut run_span = span(0, None);
    run_span.span_id = R_SPAN.to_vec();
    run_span.trace_id = R_TRACE.to_vec();
    let mut req = ExportTraceServiceRequest {
        resource_spans: vec![traces(run_resource(R), vec![run_span.clone()])],
    };
    assert!(!req.join_runs());
    assert!(req.resource_spans[0].scope_spans[0].spans[0]
        .parent_span_id
        .is_empty());
}

#[test]
fn resources_without_a_valid_run_id_are_untouched() {
    let int_id = KeyValue {
        key: RUN_ID.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(7)),
        }),
        ..Default::default()
    };
    let resources = [
        None,
        resource(vec![]),
        resource(vec![otlp_text("service.name", "web")]),
        run_resource(""),
        run_resource(&R[..30]),
        run_resource("00000000000000000000000000000000"),
        run_resource("not a trace id at all, not at all"),
        resource(vec![int_id]),
    ];
    for r in resources {
        let mut req = ExportTraceServiceRequest {
            resource_spans: vec![traces(r.clone(), vec![span(1, None), span(2, Some(1))])],
        };
        let before = req.clone();
        assert!(!req.join_runs(), "{r:?}");
        assert_eq!(req, before);
        let mut req = ExportLogsServiceRequest {
            resource_logs: vec![logs(r.clone(), vec![LogRecord::default()])],
        };
        let before = req.clone();
        assert!(!req.join_runs(), "{r:?}");
        assert_eq!(req, before);
    }
}

#[test]
fn in_a_mixed_request_only_the_runs_resources_change() {
    let other = "0af7651916cd43dd8448eb211c80319c";
    let mut req = ExportTraceServiceRequest {
        resource_spans: vec![
            traces(
                resource(vec![otlp_text("service.name", "web")]),
                vec![span(1, None)],
            ),
            traces(run_resource(R), vec![span(2, None)]),
            traces(run_resource(other), vec![span(3, None)]),
        ],
    };
    let plain = req.resource_spans[0].clone();
    assert!(req.join_runs());
    assert_eq!(req.resource_spans[0], plain);
    let first = &req.resource_spans[1].scope_spans[0].spans[0];
    assert_eq!(
        (first.trace_id.as_slice(), first.parent_span_id.as_slice()),
        (&R_TRACE[..], &R_SPAN[..])
    );
    let second = &req.resource_spans[2].scope_spans[0].spans[0];
    assert_eq!(
        run_trace_id(other).map(Vec::from),
        Some(second.trace_id.clone())
    );
    assert_eq!(
        run_span_id(other).map(Vec::from),
        Some(second.parent_span_id.clone())
    );
}

#[test]
fn a_runs_log_records_join_its_trace_keeping_their_own_span() {
    let in_span = LogRecord {
        trace_id: vec![0x11; 16],
        span_id: vec![0x12; 8],
        ..Default::default()
    };
    let no_trace = LogRecord::default();
    let zero_trace = LogRecord {
        trace_id: vec![0; 16],
        ..Default::default()
    };
    let mut req = ExportLogsServiceRequest {
        resource_logs: vec![
            logs(run_resource(R), vec![in_span, no_trace, zero_trace]),
            logs(None, vec![LogRecord::default()]),
        ],
    };
    assert!(req.join_runs());
    let ids: Vec<(Vec<u8>, Vec<u8>)> = req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .map(|r| (r.trace_id.clone(), r.span_id.clone()))
        .collect();
    assert_eq!(
        ids,
        [
            (R_TRACE.to_vec(), vec![0x12; 8]),
            (R_TRACE.to_vec(), R_SPAN.to_vec()),
            (R_TRACE.to_vec(), R_SPAN.to_vec()),
            (Vec::new(), Vec::new()),
        ]
    );
    // Once joined, joining again is no change.
    assert!(!req.join_runs());
}

#[test]
fn metrics_requests_are_never_changed() {
    assert!(!ExportMetricsServiceRequest::default().join_runs());
}
