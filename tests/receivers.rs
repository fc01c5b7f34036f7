//! The test receivers behave like the servers they stand in for: a fake Loki that
//! shows what it is sent as Loki's queries do (one entry per identical stream,
//! timestamp and line, the resend counted), answers queries as strictly as
//! Loki does, and fails on demand; a fake
//! OTLP collector that takes gRPC and HTTP (protobuf and JSON) exports.

mod support;

use std::time::Duration;

use prost::Message;
use support::loki::{Limits, LokiReceiver, Mode};
use support::DEADLINE;
use wisp_agent::sink::loki::push_proto::{
    EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp,
};

/// (timestamp ns, line, structured metadata)
type TestEntry<'a> = (i64, &'a str, &'a [(&'a str, &'a str)]);

fn protobuf_push(labels: &str, entries: &[TestEntry]) -> Vec<u8> {
    let req = PushRequest {
        streams: vec![StreamAdapter {
            labels: labels.into(),
            entries: entries
                .iter()
                .map(|(ts, line, md)| EntryAdapter {
                    timestamp: Some(Timestamp::from_nanos(*ts)),
                    line: line.to_string(),
                    structured_metadata: md
                        .iter()
                        .map(|(k, v)| LabelPairAdapter {
                            name: k.to_string(),
                            value: v.to_string(),
                        })
                        .collect(),
                })
                .collect(),
            hash: 0,
        }],
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

async fn post(url: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// GET `path` of the fake with `params`: the status and the body.
async fn get(loki: &LokiReceiver, path: &str, params: &[(&str, &str)]) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", loki.url()))
        .query(params)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn query(loki: &LokiReceiver, params: &[(&str, &str)]) -> serde_json::Value {
    let (status, body) = get(loki, "/loki/api/v1/query_range", params).await;
    assert_eq!(status, 200, "{params:?}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn loki_receiver_stores_a_snappy_protobuf_push_with_structured_metadata() {
    let loki = LokiReceiver::start().await;
    let body = protobuf_push(
        r#"{job="api", level="info"}"#,
        &[
            (20, "second", &[]),
            (
                10,
                "first",
                &[("trace_id", "0af7651916cd43dd8448eb211c80319c")],
            ),
        ],
    );
    let resp = post(&loki.push_url(), "application/x-protobuf", body).await;
    assert_eq!(resp.status(), 204);

    let entries = loki.entries(r#"{job="api"}"#);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].line, "first");
    assert_eq!(entries[0].timestamp_ns, 10);
    assert_eq!(
        entries[0].metadata["trace_id"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(entries[0].labels["level"], "info");
    assert_eq!(entries[1].line, "second");
    assert_eq!(loki.pushes(), 1);
}

#[tokio::test]
async fn loki_receiver_stores_a_json_push() {
    let loki = LokiReceiver::start().await;
    let body = serde_json::json!({"streams": [{
        "stream": {"job": "api", "level": "error"},
        "values": [["1700000000000000000", "boom", {"span_id": "b7ad6b7169203331"}],
                   ["1700000000000000001", "after"]],
    }]});
    let resp = post(
        &loki.push_url(),
        "application/json",
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 204);
    let entries = loki.entries(r#"{level="error"}"#);
    assert_eq!(
        entries.iter().map(|e| e.line.as_str()).collect::<Vec<_>>(),
        ["boom", "after"]
    );
    assert_eq!(entries[0].metadata["span_id"], "b7ad6b7169203331");
    assert!(entries[1].metadata.is_empty());
}

#[tokio::test]
async fn loki_receiver_stores_one_entry_per_identical_stream_timestamp_and_line() {
    let loki = LokiReceiver::start().await;
    for _ in 0..2 {
        let body = protobuf_push(r#"{job="api"}"#, &[(5, "same", &[])]);
        post(&loki.push_url(), "application/x-protobuf", body).await;
    }
    // Same line, other timestamp: a different entry.
    let body = protobuf_push(r#"{job="api"}"#, &[(6, "same", &[])]);
    post(&loki.push_url(), "application/x-protobuf", body).await;
    assert_eq!(loki.stored_count(), 2);
    assert_eq!(loki.received_count(), 3);
    assert_eq!(loki.lines(r#"{job="api"}"#), ["same", "same"]);
    // The same entry in another stream is that stream's own.
    let body = protobuf_push(r#"{job="web"}"#, &[(6, "same", &[])]);
    post(&loki.push_url(), "application/x-protobuf", body).await;
    assert_eq!(loki.stored_count(), 3);
    // Not only the stream's last: any entry stored before, whatever its
    // structured metadata (Loki compares timestamp and line).
    let body = protobuf_push(r#"{job="api"}"#, &[(5, "same", &[("trace_id", "x")])]);
    post(&loki.push_url(), "application/x-protobuf", body).await;
    assert_eq!((loki.received_count(), loki.stored_count()), (5, 3));
    let resent = loki.resent(r#"{job="api"}"#);
    assert_eq!(resent.len(), 1, "{resent:?}");
    assert_eq!((resent[0].0.timestamp_ns, resent[0].1), (5, 3));
}

/// Three entries, pushed twice: what an agent that replays a batch sends.
async fn push_a_batch_twice(loki: &LokiReceiver) {
    for _ in 0..2 {
        let body = protobuf_push(
            r#"{job="api"}"#,
            &[(1, "one", &[]), (2, "two", &[]), (3, "three", &[])],
        );
        let resp = post(&loki.push_url(), "application/x-protobuf", body).await;
        assert_eq!(resp.status(), 204);
    }
}

#[tokio::test]
async fn loki_receiver_shows_a_replayed_batch_once_and_its_verdicts_catch_the_resend() {
    let loki = LokiReceiver::start().await;
    push_a_batch_twice(&loki).await;
    assert_eq!(loki.received_count(), 6);
    assert_eq!(loki.stored_count(), 3);
    assert_eq!(loki.lines(r#"{job="api"}"#), ["one", "two", "three"]);
    // Queries show them once, as Loki's do.
    let v = query(&loki, &[("query", r#"{job="api"} |= "one""#)]).await;
    assert_eq!(values(&v).len(), 1);
    // What Loki hides, the delivery verdicts do not.
    let once: Vec<String> = ["one", "two", "three"].map(String::from).into();
    let err = loki.exactly_once(r#"{job="api"}"#, &once).unwrap_err();
    assert!(
        err.contains("3 sent again after Loki stored them (3 extra entries")
            && err.contains(r#""one" ×2"#)
            && !err.contains("missing")
            && !err.contains("stored twice"),
        "{err}"
    );
    assert!(loki.at_most_once(r#"{job="api"}"#, &once).is_err());
    let body = protobuf_push(r#"{job="api"}"#, &[(3, "three", &[])]);
    post(&loki.push_url(), "application/x-protobuf", body).await;
    assert_eq!((loki.received_count(), loki.stored_count()), (7, 3));
    // The same lines at other timestamps are other entries: shown twice.
    let body = protobuf_push(r#"{job="api"}"#, &[(4, "one", &[])]);
    post(&loki.push_url(), "application/x-protobuf", body).await;
    let err = loki.exactly_once(r#"{job="api"}"#, &once).unwrap_err();
    assert!(
        err.contains("1 stored twice or more (1 extra entries)"),
        "{err}"
    );
}

#[tokio::test]
async fn loki_receiver_filters_on_structured_metadata_and_stream_labels() {
    let loki = LokiReceiver::start().await;
    let body = protobuf_push(
        r#"{job="ralph", iter="1"}"#,
        &[
            (1, "run one", &[("run_id", "aa")]),
            (2, "run two", &[("run_id", "bb")]),
            (3, "no run", &[]),
        ],
    );
    post(&loki.push_url(), "application/x-protobuf", body).await;
    let lines = |q: &str| loki.lines(q);
    assert_eq!(lines(r#"{job="ralph"} | run_id="aa""#), ["run one"]);
    assert_eq!(
        lines(r#"{job="ralph"} | run_id!="aa""#),
        ["run two", "no run"]
    );
    assert_eq!(lines(r#"{job="ralph"} | run_id="""#), ["no run"]);
    assert_eq!(lines(r#"{job="ralph"} | iter="1" |= "two""#), ["run two"]);
    assert!(lines(r#"{job="ralph"} | iter="2""#).is_empty());
    let v = query(&loki, &[("query", r#"{job="ralph"} | run_id = "bb""#)]).await;
    assert_eq!(values(&v).len(), 1, "{v}");
}

#[tokio::test]
async fn loki_receiver_counting_only_drops_the_same_duplicates() {
    let loki = LokiReceiver::start().await;
    loki.set_count_only(true);
    push_a_batch_twice(&loki).await;
    assert_eq!((loki.received_count(), loki.stored_count()), (6, 3));
    let body = protobuf_push(r#"{job="api"}"#, &[(3, "three", &[]), (4, "three", &[])]);
    post(&loki.push_url(), "application/x-protobuf", body).await;
    assert_eq!((loki.received_count(), loki.stored_count()), (8, 4));
    assert!(loki.lines(r#"{job="api"}"#).is_empty());
}

#[test]
fn the_exactly_once_verdict_counts_what_is_missing_doubled_and_unexpected() {
    let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let want = lines(&["a", "b", "c", "d"]);
    assert_eq!(
        support::exactly_once(&lines(&["d", "c", "b", "a"]), &want),
        Ok(())
    );
    let err = support::exactly_once(&lines(&["a", "a", "a", "b", "x"]), &want).unwrap_err();
    assert_eq!(
        err,
        r#"4 lines expected, 5 stored: 2 missing, e.g. "c", "d"; 1 stored twice or more (2 extra entries), e.g. "a" ×3; 1 stored but never expected, e.g. "x""#
    );
    // At most once: missing lines are no fault, doubled ones are.
    assert_eq!(support::at_most_once(&lines(&["b"]), &want), Ok(()));
    assert!(support::at_most_once(&lines(&["b", "b"]), &want).is_err());
    // A line expected twice is expected twice.
    let twice = lines(&["a", "a"]);
    assert_eq!(support::exactly_once(&twice, &twice), Ok(()));
    assert!(support::exactly_once(&lines(&["a"]), &twice)
        .unwrap_err()
        .contains("1 missing"));
}

#[tokio::test]
async fn loki_receiver_rejects_garbage_and_streams_without_labels() {
    let loki = LokiReceiver::start().await;
    let resp = post(
        &loki.push_url(),
        "application/x-protobuf",
        b"not snappy".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let resp = post(
        &loki.push_url(),
        "application/x-protobuf",
        protobuf_push("{}", &[(1, "x", &[])]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(loki.stored_count(), 0);
}

/// 2026-11-22T22:59:41Z in nanoseconds.
const T: i64 = 1_795_388_381_000_000_000;

fn values(v: &serde_json::Value) -> Vec<(String, String)> {
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap())
        .map(|e| (e[0].as_str().unwrap().into(), e[1].as_str().unwrap().into()))
        .collect()
}

#[tokio::test]
async fn loki_query_api_filters_by_selector_line_and_time_and_limits() {
    let loki = LokiReceiver::start().await;
    let body = protobuf_push(
        r#"{job="api", level="info"}"#,
        &[
            (T + 10, "GET /a", &[]),
            (T + 20, "GET /b", &[]),
            (T + 30, "POST /c", &[]),
        ],
    );
    post(&loki.push_url(), "application/x-protobuf", body).await;
    let body = protobuf_push(r#"{job="web", level="info"}"#, &[(T + 15, "GET /w", &[])]);
    post(&loki.push_url(), "application/x-protobuf", body).await;

    let v = query(
        &loki,
        &[
            ("query", r#"{job="api"} |= "GET""#),
            ("direction", "forward"),
        ],
    )
    .await;
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "streams");
    let result = v["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 1);
    assert_eq!(result[0]["stream"]["job"], "api");
    assert_eq!(
        values(&v),
        [
            ((T + 10).to_string(), "GET /a".to_string()),
            ((T + 20).to_string(), "GET /b".to_string())
        ]
    );

    // Backward (the default) with a limit: the newest first.
    let v = query(&loki, &[("query", r#"{level="info"}"#), ("limit", "2")]).await;
    let lines: Vec<String> = values(&v).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.contains(&"POST /c".into()) && lines.contains(&"GET /b".into()));

    let v = query(&loki, &[("query", r#"{job="nobody"}"#), ("start", "0")]).await;
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 0);

    // start inclusive, end exclusive, in nanoseconds.
    let (start, end) = ((T + 20).to_string(), (T + 30).to_string());
    let v = query(
        &loki,
        &[
            ("query", r#"{job="api"}"#),
            ("start", &start),
            ("end", &end),
        ],
    )
    .await;
    assert_eq!(values(&v), [(start.clone(), "GET /b".to_string())]);

    // As Loki: 10 digits or fewer are seconds; RFC 3339 is taken too.
    let v = query(
        &loki,
        &[
            ("query", r#"{job="api"}"#),
            ("start", "1795388381"),
            ("end", "2026-11-22T22:59:41.000000025Z"),
        ],
    )
    .await;
    assert_eq!(values(&v).len(), 2);

    let v = query(&loki, &[("query", r#"{job="web"} != "POST""#)]).await;
    assert_eq!(v["data"]["result"][0]["values"][0][1], "GET /w");
}

#[tokio::test]
async fn loki_query_api_refuses_what_loki_refuses() {
    let loki = LokiReceiver::start().await;
    let body = protobuf_push(r#"{job="api"}"#, &[(T, "GET /a", &[])]);
    post(&loki.push_url(), "application/x-protobuf", body).await;
    let range = "/loki/api/v1/query_range";
    let q = r#"{job="api"}"#;

    // Loki's default max_entries_limit_per_query.
    let (status, body) = get(&loki, range, &[("query", q), ("limit", "5001")]).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "max entries limit per query exceeded, limit > max_entries_limit (5001 > 5000)"
    );
    let v = query(&loki, &[("query", q), ("limit", "5000")]).await;
    assert_eq!(values(&v).len(), 1);
    for limit in ["0", "-1"] {
        let (status, body) = get(&loki, range, &[("query", q), ("limit", limit)]).await;
        assert_eq!(
            (status, body.as_str()),
            (400, "limit must be a positive value")
        );
    }
    let (status, _) = get(
        &loki,
        range,
        &[("query", q), ("start", "20"), ("end", "10")],
    )
    .await;
    assert_eq!(status, 400);

    // Since Loki 3.2, log queries are for the range endpoint only.
    let (status, body) = get(&loki, "/loki/api/v1/query", &[("query", q)]).await;
    assert_eq!(status, 400);
    assert!(
        body.starts_with("log queries are not supported as an instant query type"),
        "{body}"
    );
    assert_eq!(loki.queries(), 6);
}

#[tokio::test]
async fn loki_query_api_answers_an_injected_status_and_pushes_still_work() {
    let loki = LokiReceiver::start().await;
    loki.set_query_status(Some(403));
    let body = protobuf_push(r#"{job="api"}"#, &[(T, "pushed", &[])]);
    let resp = post(&loki.push_url(), "application/x-protobuf", body).await;
    assert_eq!(resp.status(), 204);
    for path in ["/loki/api/v1/query_range", "/loki/api/v1/query"] {
        let (status, body) = get(&loki, path, &[("query", r#"{job="api"}"#)]).await;
        assert_eq!((status, body.as_str()), (403, "Forbidden\n"), "{path}");
    }
    assert_eq!(loki.queries(), 2);
    loki.set_query_status(None);
    let v = query(&loki, &[("query", r#"{job="api"}"#)]).await;
    assert_eq!(values(&v), [(T.to_string(), "pushed".to_string())]);
    assert_eq!(loki.queries(), 3);
}

#[tokio::test]
async fn loki_receiver_with_limits_stores_the_valid_entries_and_answers_400_for_the_rest() {
    let loki = LokiReceiver::start().await;
    loki.set_limits(Limits {
        max_line_bytes: Some(10),
        oldest_ns: Some(T),
        allow_structured_metadata: false,
        ..Limits::default()
    });
    let body = protobuf_push(
        r#"{job="api"}"#,
        &[
            (T + 1, "ok", &[]),
            (T - 1, "too old", &[]),
            (T + 2, "much too long a line", &[]),
            (T + 3, "traced", &[("trace_id", "abc")]),
            (T + 4, "ok too", &[]),
            (T - 2, "older", &[]),
        ],
    );
    let resp = post(&loki.push_url(), "application/x-protobuf", body).await;
    assert_eq!(resp.status(), 400);
    let reason = resp.text().await.unwrap();
    // The distributor's text: its messages grouped by wording, joined by "; ".
    assert_eq!(
        reason.trim_end().split("; ").collect::<Vec<_>>(),
        [
            // Two entries within one second: one wording.
            format!(
                r#"2 errors like: entry for stream '{{job="api"}}' has timestamp too old: {}, oldest acceptable timestamp is: {}"#,
                support::loki::rfc3339_seconds(T - 1),
                support::loki::rfc3339_seconds(T)
            )
            .as_str(),
            r#"1 errors like: Max entry size '10' bytes exceeded for stream '{job="api"}' while adding an entry with length '20' bytes"#,
            "1 errors like: stream '{job=\"api\"}' includes structured metadata, but this feature is disallowed. Please see `limits_config.allow_structured_metadata` or contact your Loki administrator to enable it.",
        ],
        "{reason}"
    );
    assert_eq!(loki.lines(r#"{job="api"}"#), ["ok", "ok too"]);
}

/// A JSON push of several streams: (labels, [(ts, line)]).
fn json_push(streams: &[(&str, &[(i64, &str)])]) -> Vec<u8> {
    let streams: Vec<serde_json::Value> = streams
        .iter()
        .map(|(labels, values)| {
            let labels: serde_json::Value = serde_json::from_str(labels).unwrap();
            let values: Vec<serde_json::Value> = values
                .iter()
                .map(|(ts, line)| serde_json::json!([ts.to_string(), line]))
                .collect();
            serde_json::json!({"stream": labels, "values": values})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "streams": streams })).unwrap()
}

#[tokio::test]
async fn loki_receiver_refuses_as_loki_3_7_does_and_tells_only_of_the_last_stream() {
    let loki = LokiReceiver::start().await;
    let now = wisp_agent::record::Timestamp::now().as_nanos();
    const S: i64 = 1_000_000_000;
    loki.set_limits(Limits {
        reject_old_samples_max_age: Some(Duration::from_secs(600)),
        too_far_behind: Some(Duration::from_secs(30)),
        max_streams: Some(2),
        max_returned_errors: 2,
        ..Limits::default()
    });
    let a = r#"{"job":"a"}"#;
    let b = r#"{"job":"b"}"#;
    let first = json_push(&[(a, &[(now, "a new")]), (b, &[(now, "b new")])]);
    assert_eq!(
        post(&loki.push_url(), "application/json", first)
            .await
            .status(),
        204
    );

    // Stream a: one too far behind, one too old (the distributor's); stream b:
    // three too far behind. Loki tells of b only, two of its three listed.
    let old = now - 3600 * S;
    let behind = now - 60 * S;
    let second = json_push(&[
        (
            a,
            &[(behind, "a behind"), (old, "a old"), (now + 1, "a ok")],
        ),
        (
            b,
            &[
                (behind, "b1"),
                (behind + 1, "b2"),
                (behind + 2, "b3"),
                (now + 1, "b ok"),
            ],
        ),
    ]);
    let resp = post(&loki.push_url(), "application/json", second).await;
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    let lines: Vec<&str> = text.trim_end().lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let behind_go = support::loki::go_time(behind);
    assert!(
        lines[0].starts_with(&format!(
            "entry with timestamp {behind_go} ignored, reason: 'entry too far behind, entry timestamp is: {}, oldest acceptable timestamp is: {}',",
            support::loki::rfc3339_seconds(behind),
            support::loki::rfc3339_seconds(now - 30 * S)
        )),
        "{text}"
    );
    assert_eq!(
        lines[2],
        r#"user 'fake', total ignored: 3 out of 4 for stream: {job="b"}"#
    );
    assert_eq!(loki.lines(r#"{job="a"}"#), ["a new", "a ok"]);
    assert_eq!(loki.lines(r#"{job="b"}"#), ["b new", "b ok"]);

    // A third stream is past the stream limit: 429 for it, the others stored.
    let c = r#"{"job":"c"}"#;
    let third = json_push(&[(c, &[(now, "c")]), (a, &[(now + 2, "a more")])]);
    let resp = post(&loki.push_url(), "application/json", third).await;
    // The last stream (a) had no refusal: Loki says nothing of c.
    assert_eq!(resp.status(), 204);
    let fourth = json_push(&[(a, &[(now + 3, "a again")]), (c, &[(now, "c")])]);
    let resp = post(&loki.push_url(), "application/json", fourth).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.text().await.unwrap().starts_with(
        r#"Maximum active stream limit exceeded when trying to create stream {job="c"}"#
    ));
    assert_eq!(
        loki.lines(r#"{job="a"}"#),
        ["a new", "a ok", "a more", "a again"]
    );
    assert!(loki.lines(r#"{job="c"}"#).is_empty());
}

#[tokio::test]
async fn loki_query_api_shows_structured_metadata_categorized_or_as_labels() {
    let loki = LokiReceiver::start().await;
    let body = protobuf_push(
        r#"{job="api"}"#,
        &[(T, "plain", &[]), (T + 1, "traced", &[("trace_id", "abc")])],
    );
    assert_eq!(
        post(&loki.push_url(), "application/x-protobuf", body)
            .await
            .status(),
        204
    );
    let params = [("query", r#"{job="api"}"#), ("direction", "forward")];
    let plain = query(&loki, &params).await;
    assert_eq!(
        plain["data"]["result"],
        serde_json::json!([
            {"stream": {"job": "api"}, "values": [[T.to_string(), "plain"]]},
            {"stream": {"job": "api", "trace_id": "abc"}, "values": [[(T + 1).to_string(), "traced"]]},
        ])
    );
    let text = reqwest::Client::new()
        .get(format!("{}/loki/api/v1/query_range", loki.url()))
        .header("X-Loki-Response-Encoding-Flags", "categorize-labels")
        .query(&params)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let categorized: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        categorized["data"]["result"],
        serde_json::json!([{"stream": {"job": "api"}, "values": [
            [T.to_string(), "plain"],
            [(T + 1).to_string(), "traced", {"structuredMetadata": {"trace_id": "abc"}}],
        ]}])
    );
    assert_eq!(
        categorized["data"]["encodingFlags"],
        serde_json::json!(["categorize-labels"])
    );
}

#[tokio::test]
async fn loki_receiver_fails_the_next_pushes_with_retry_after_then_recovers() {
    let loki = LokiReceiver::start().await;
    loki.fail_next(1, 503, Some(3), "ingester busy");
    let body = protobuf_push(r#"{job="api"}"#, &[(1, "x", &[])]);
    let resp = post(&loki.push_url(), "application/x-protobuf", body.clone()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "3");
    assert_eq!(resp.text().await.unwrap(), "ingester busy");
    assert_eq!((loki.received_count(), loki.stored_count()), (0, 0));

    let resp = post(&loki.push_url(), "application/x-protobuf", body).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(loki.stored_count(), 1);
    assert_eq!(loki.answers(), [503, 204]);
}

#[tokio::test]
async fn loki_receiver_persistent_modes_answer_every_push() {
    let loki = LokiReceiver::start().await;
    let body = protobuf_push(r#"{job="api"}"#, &[(1, "x", &[])]);
    loki.set_mode(Mode::Status(429));
    for _ in 0..2 {
        let resp = post(&loki.push_url(), "application/x-protobuf", body.clone()).await;
        assert_eq!(resp.status(), 429);
    }
    loki.set_mode(Mode::Hang);
    let err = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap()
        .post(loki.push_url())
        .header("content-type", "application/x-protobuf")
        .body(body.clone())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    loki.set_mode(Mode::Delay(Duration::from_millis(50)));
    let resp = post(&loki.push_url(), "application/x-protobuf", body).await;
    assert_eq!(resp.status(), 204);
    // Neither the 429s nor the push that hung stored anything.
    assert_eq!((loki.received_count(), loki.stored_count()), (1, 1));
}

#[tokio::test]
async fn loki_receiver_answers_ready_and_not_ready() {
    let loki = LokiReceiver::start().await;
    let url = format!("{}/ready", loki.url());
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap().trim(), "ready");
    loki.set_ready(false);
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().await.unwrap().trim(), "Ingester not ready");
}

#[tokio::test]
async fn a_stopped_loki_refuses_connections_and_a_restarted_one_keeps_its_data() {
    let loki = LokiReceiver::start().await;
    // One client throughout, so a kept-alive connection would be reused if the
    // stop left it open.
    let client = reqwest::Client::new();
    let push = |ts: i64| {
        client
            .post(loki.push_url())
            .header("content-type", "application/x-protobuf")
            .body(protobuf_push(r#"{job="api"}"#, &[(ts, "x", &[])]))
            .send()
    };
    assert_eq!(push(1).await.unwrap().status(), 204);

    loki.stop().await;
    let err = push(2).await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    // The fresh connection attempt is refused outright.
    let err = tokio::net::TcpStream::connect(loki.addr())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);

    loki.restart().await;
    let mut status = None;
    // The pool may still hand out the dead connection once.
    for _ in 0..3 {
        if let Ok(resp) = push(3).await {
            status = Some(resp.status());
            break;
        }
    }
    assert_eq!(status, Some(reqwest::StatusCode::NO_CONTENT));
    assert!(loki.wait_for_stored(2, DEADLINE).await);
    assert_eq!(
        loki.all_entries()
            .iter()
            .map(|e| e.timestamp_ns)
            .collect::<Vec<_>>(),
        [1, 3]
    );
}

#[tokio::test]
async fn waiting_for_entries_wakes_when_they_arrive_and_gives_up_at_the_deadline() {
    let loki = std::sync::Arc::new(LokiReceiver::start().await);
    assert!(!loki.wait_for_stored(1, Duration::from_millis(50)).await);
    let url = loki.push_url();
    let sender = tokio::spawn(async move {
        post(
            &url,
            "application/x-protobuf",
            protobuf_push(r#"{job="late"}"#, &[(1, "x", &[])]),
        )
        .await
        .status()
    });
    assert!(loki.wait_for_entries(r#"{job="late"}"#, 1, DEADLINE).await);
    assert_eq!(sender.await.unwrap(), 204);
}

#[tokio::test]
async fn waiting_for_exactly_once_returns_when_every_line_arrived_and_reports_doubles() {
    let loki = std::sync::Arc::new(LokiReceiver::start().await);
    let want: Vec<String> = ["one", "two", "three"].map(String::from).into();
    let err = loki
        .wait_for_exactly_once(r#"{job="api"}"#, &want, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(
        err.starts_with("after 50ms, {job=\"api\"}: 3 lines expected, 0 stored: 3 missing"),
        "{err}"
    );
    let url = loki.push_url();
    let sender = tokio::spawn(async move {
        for batch in [
            &[(1, "one", &[][..])][..],
            &[(2, "two", &[]), (3, "three", &[])],
        ] {
            let resp = post(
                &url,
                "application/x-protobuf",
                protobuf_push(r#"{job="api"}"#, batch),
            )
            .await;
            assert_eq!(resp.status(), 204);
        }
    });
    assert_eq!(
        loki.wait_for_exactly_once(r#"{job="api"}"#, &want, DEADLINE)
            .await,
        Ok(())
    );
    sender.await.unwrap();
    push_a_batch_twice(&loki).await;
    let err = loki
        .wait_for_exactly_once(r#"{job="api"}"#, &want, DEADLINE)
        .await
        .unwrap_err();
    assert!(
        err.contains("3 sent again after Loki stored them (6 extra entries"),
        "{err}"
    );
}

#[test]
fn pushed_label_sets_parse_with_go_escapes() {
    let l = support::loki::parse_labels(r#"{job="a\"b", level="info"}"#).unwrap();
    assert_eq!(l["job"], "a\"b");
    assert_eq!(l["level"], "info");
    assert!(support::loki::parse_labels("{}").is_err());
    assert!(support::loki::parse_labels(r#"{job="a""#).is_err());
    assert!(support::loki::parse_labels(r#"{job!="a"}"#).is_err());
}

mod otlp {
    use super::support::otlp::{OtlpReceiver, Transport};
    use super::support::DEADLINE;
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    const TRACE_ID: [u8; 16] = [
        0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6,
        0x0c,
    ];
    const SPAN_ID: [u8; 8] = [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74];

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn resource(service: &str) -> Option<Resource> {
        Some(Resource {
            attributes: vec![kv("service.name", service)],
            ..Default::default()
        })
    }

    fn trace_request(service: &str, name: &str) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource(service),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: TRACE_ID.to_vec(),
                        span_id: SPAN_ID.to_vec(),
                        name: name.into(),
                        kind: 1,
                        start_time_unix_nano: 1_000,
                        end_time_unix_nano: 2_000,
                        attributes: vec![kv("ralph.iteration", "3")],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn logs_request(service: &str, body: &str) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource(service),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        time_unix_nano: 5,
                        severity_number: 9,
                        severity_text: "INFO".into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(body.into())),
                        }),
                        trace_id: TRACE_ID.to_vec(),
                        span_id: SPAN_ID.to_vec(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn metrics_request(service: &str, name: &str) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: resource(service),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: name.into(),
                        unit: "By".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                time_unix_nano: 7,
                                value: Some(number_data_point::Value::AsInt(42)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[tokio::test]
    async fn otlp_receiver_takes_logs_spans_and_metrics_over_grpc() {
        let otlp = OtlpReceiver::start().await;
        let endpoint = otlp.grpc_endpoint();
        TraceServiceClient::connect(endpoint.clone())
            .await
            .unwrap()
            .export(trace_request("ralph", "iteration"))
            .await
            .unwrap();
        LogsServiceClient::connect(endpoint.clone())
            .await
            .unwrap()
            .export(logs_request("ralph", "hello"))
            .await
            .unwrap();
        MetricsServiceClient::connect(endpoint)
            .await
            .unwrap()
            .export(metrics_request("wisp-agent", "system.memory.usage"))
            .await
            .unwrap();

        assert!(otlp.wait_for_spans(1, DEADLINE).await);
        let spans = otlp.spans();
        assert_eq!(spans[0].service_name, "ralph");
        assert_eq!(spans[0].name, "iteration");
        assert_eq!(spans[0].trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(spans[0].span_id, "eee19b7ec3c1b174");
        assert_eq!(spans[0].attributes["ralph.iteration"], "3");

        let logs = otlp.logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].body, "hello");
        assert_eq!(logs[0].severity_number, 9);
        assert_eq!(logs[0].trace_id, "5b8efff798038103d269b633813fc60c");

        let metrics = otlp.metrics();
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].name, "system.memory.usage");
        assert_eq!(metrics[0].kind, "gauge");
        assert_eq!(metrics[0].data_points, 1);
        assert_eq!(metrics[0].service_name, "wisp-agent");
        assert_eq!(otlp.transports(), [Transport::Grpc; 3]);
    }

    #[tokio::test]
    async fn otlp_receiver_takes_http_protobuf_and_answers_in_protobuf() {
        let otlp = OtlpReceiver::start().await;
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/traces", otlp.http_endpoint()))
            .header("content-type", "application/x-protobuf")
            .body(trace_request("ralph", "iteration").encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
        let answer = ExportTraceServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
        assert_eq!(answer, ExportTraceServiceResponse::default());
        assert_eq!(otlp.spans()[0].name, "iteration");
        assert_eq!(otlp.transports(), [Transport::HttpProtobuf]);

        for (path, body) in [
            ("logs", logs_request("a", "x").encode_to_vec()),
            ("metrics", metrics_request("a", "m").encode_to_vec()),
        ] {
            let resp = reqwest::Client::new()
                .post(format!("{}/v1/{path}", otlp.http_endpoint()))
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path}");
        }
        assert_eq!(otlp.logs().len(), 1);
        assert_eq!(otlp.metrics().len(), 1);
    }

    /// The OTLP/JSON example of the specification: hex ids, times as strings,
    /// enums as integers, int64 attribute values as strings.
    const SPEC_TRACE_JSON: &str = r#"{
      "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeSpans": [{
          "scope": {"name": "my.library", "version": "1.0.0",
                    "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}]},
          "spans": [{
            "traceId": "5B8EFFF798038103D269B633813FC60C",
            "spanId": "EEE19B7EC3C1B174",
            "parentSpanId": "EEE19B7EC3C1B173",
            "name": "I'm a server span",
            "startTimeUnixNano": "1544712660000000000",
            "endTimeUnixNano": "1544712661000000000",
            "kind": 2,
            "attributes": [
              {"key": "my.span.attr", "value": {"stringValue": "some value"}},
              {"key": "retries", "value": {"intValue": "3"}}
            ],
            "status": {"code": 2, "message": "failed"},
            "unknownFieldFromTheFuture": true
          }]
        }]
      }]
    }"#;

    const SPEC_LOGS_JSON: &str = r#"{
      "resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeLogs": [{
          "scope": {"name": "my.library"},
          "logRecords": [{
            "timeUnixNano": "1544712660300000000",
            "observedTimeUnixNano": "1544712660300000000",
            "severityNumber": 10,
            "severityText": "Information",
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "body": {"stringValue": "Example log record"},
            "attributes": [
              {"key": "string.attribute", "value": {"stringValue": "some string"}},
              {"key": "boolean.attribute", "value": {"boolValue": true}},
              {"key": "int.attribute", "value": {"intValue": "10"}},
              {"key": "double.attribute", "value": {"doubleValue": 637.704}}
            ]
          }]
        }]
      }]
    }"#;

    async fn post_json(otlp: &OtlpReceiver, path: &str, body: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", otlp.http_endpoint()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn otlp_receiver_takes_the_specs_json_traces_and_answers_in_json() {
        let otlp = OtlpReceiver::start().await;
        let resp = post_json(&otlp, "/v1/traces", SPEC_TRACE_JSON).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let answer: serde_json::Value =
            serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(answer, serde_json::json!({}));

        let spans = otlp.spans();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.service_name, "my.service");
        assert_eq!(s.scope, "my.library");
        assert_eq!(s.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(s.parent_span_id, "eee19b7ec3c1b173");
        assert_eq!(s.kind, 2);
        assert_eq!(s.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(s.attributes["retries"], "3");
        assert_eq!(s.status_code, 2);
        assert_eq!(s.status_message, "failed");
        assert_eq!(otlp.transports(), [Transport::HttpJson]);
    }

    #[tokio::test]
    async fn otlp_receiver_takes_the_specs_json_logs_and_metrics() {
        let otlp = OtlpReceiver::start().await;
        let resp = post_json(&otlp, "/v1/logs", SPEC_LOGS_JSON).await;
        assert_eq!(resp.status(), 200);
        let logs = otlp.logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].body, "Example log record");
        assert_eq!(logs[0].severity_number, 10);
        assert_eq!(logs[0].time_unix_nano, 1_544_712_660_300_000_000);
        assert_eq!(logs[0].span_id, "eee19b7ec3c1b174");
        assert_eq!(logs[0].attributes["int.attribute"], "10");
        assert_eq!(logs[0].attributes["boolean.attribute"], "true");

        let metrics = r#"{"resourceMetrics": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "vm"}}]},
            "scopeMetrics": [{"metrics": [{
              "name": "my.counter", "unit": "1",
              "sum": {"aggregationTemporality": 1, "isMonotonic": true,
                      "dataPoints": [{"asInt": "5", "startTimeUnixNano": "1", "timeUnixNano": "2"}]}
            }]}]
        }]}"#;
        let resp = post_json(&otlp, "/v1/metrics", metrics).await;
        assert_eq!(resp.status(), 200);
        let m = otlp.metrics();
        assert_eq!(m[0].name, "my.counter");
        assert_eq!(m[0].kind, "sum");
        assert_eq!(m[0].data_points, 1);
    }

    #[tokio::test]
    async fn otlp_receiver_rejects_an_undecodable_body_with_400() {
        let otlp = OtlpReceiver::start().await;
        let resp = post_json(&otlp, "/v1/traces", "{not json").await;
        assert_eq!(resp.status(), 400);
        assert!(otlp.spans().is_empty());
    }

    #[tokio::test]
    async fn otlp_receiver_fails_on_demand_with_unavailable_and_503() {
        let otlp = OtlpReceiver::start().await;
        otlp.fail_next(1);
        let err = TraceServiceClient::connect(otlp.grpc_endpoint())
            .await
            .unwrap()
            .export(trace_request("a", "s"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(otlp.spans().is_empty());

        otlp.set_unavailable(true);
        let resp = post_json(&otlp, "/v1/traces", SPEC_TRACE_JSON).await;
        assert_eq!(resp.status(), 503);
        assert!(otlp.spans().is_empty());

        otlp.set_unavailable(false);
        let resp = post_json(&otlp, "/v1/traces", SPEC_TRACE_JSON).await;
        assert_eq!(resp.status(), 200);
        assert!(otlp.wait_for_spans(1, DEADLINE).await);
        assert_eq!(otlp.exports(), 3);
    }

    #[tokio::test]
    async fn a_stopped_otlp_receiver_refuses_connections_and_comes_back_on_restart() {
        let otlp = OtlpReceiver::start().await;
        post_json(&otlp, "/v1/traces", SPEC_TRACE_JSON).await;
        otlp.stop().await;
        for addr in [otlp.grpc_addr(), otlp.http_addr()] {
            let err = tokio::net::TcpStream::connect(addr).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        otlp.restart().await;
        TraceServiceClient::connect(otlp.grpc_endpoint())
            .await
            .unwrap()
            .export(trace_request("a", "after restart"))
            .await
            .unwrap();
        let names: Vec<String> = otlp.spans().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["I'm a server span", "after restart"]);
    }

    #[tokio::test]
    async fn otlp_receiver_records_grpc_metadata_as_headers() {
        let otlp = OtlpReceiver::start().await;
        let mut request = tonic::Request::new(logs_request("a", "x"));
        request
            .metadata_mut()
            .insert("authorization", "Bearer t0k".parse().unwrap());
        LogsServiceClient::connect(otlp.grpc_endpoint())
            .await
            .unwrap()
            .export(request)
            .await
            .unwrap();
        assert_eq!(otlp.last_headers()["authorization"], "Bearer t0k");
    }
}
