//! The test receivers behave like the servers they stand in for: a fake Loki that
//! stores, deduplicates and answers queries as Loki does, and fails on demand; a
//! fake OTLP collector that takes gRPC and HTTP (protobuf and JSON) exports.

mod support;

use std::time::Duration;

use prost::Message;
use support::loki::{LokiReceiver, Mode};
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

async fn query(loki: &LokiReceiver, params: &[(&str, &str)]) -> serde_json::Value {
    let url = format!("{}/loki/api/v1/query_range", loki.url());
    let resp = reqwest::Client::new()
        .get(url)
        .query(params)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
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
async fn loki_receiver_keeps_an_entry_pushed_twice_once() {
    let loki = LokiReceiver::start().await;
    for _ in 0..2 {
        let body = protobuf_push(r#"{job="api"}"#, &[(5, "same", &[])]);
        post(&loki.push_url(), "application/x-protobuf", body).await;
    }
    // Same line, other timestamp: a different entry.
    let body = protobuf_push(r#"{job="api"}"#, &[(6, "same", &[])]);
    post(&loki.push_url(), "application/x-protobuf", body).await;
    assert_eq!(loki.unique_count(), 2);
    assert_eq!(loki.raw_count(), 3);
    assert_eq!(loki.lines(r#"{job="api"}"#), ["same", "same"]);
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
    assert_eq!(loki.unique_count(), 0);
}

#[tokio::test]
async fn loki_query_api_filters_by_selector_line_and_time_and_limits() {
    let loki = LokiReceiver::start().await;
    let body = protobuf_push(
        r#"{job="api", level="info"}"#,
        &[
            (10, "GET /a", &[]),
            (20, "GET /b", &[]),
            (30, "POST /c", &[]),
        ],
    );
    post(&loki.push_url(), "application/x-protobuf", body).await;
    let body = protobuf_push(r#"{job="web", level="info"}"#, &[(15, "GET /w", &[])]);
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
        result[0]["values"],
        serde_json::json!([["10", "GET /a"], ["20", "GET /b"]])
    );

    // Backward (the default) with a limit: the newest first.
    let v = query(&loki, &[("query", r#"{level="info"}"#), ("limit", "2")]).await;
    let values: Vec<&str> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap())
        .map(|e| e[1].as_str().unwrap())
        .collect();
    assert_eq!(values.len(), 2);
    assert!(values.contains(&"POST /c") && values.contains(&"GET /b"));

    // start inclusive, end exclusive.
    let v = query(&loki, &[("query", r#"{job="nobody"}"#), ("start", "0")]).await;
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 0);
    let v = query(
        &loki,
        &[("query", r#"{job="api"}"#), ("start", "20"), ("end", "30")],
    )
    .await;
    assert_eq!(
        v["data"]["result"][0]["values"],
        serde_json::json!([["20", "GET /b"]])
    );

    // The instant endpoint answers log queries too.
    let url = format!("{}/loki/api/v1/query", loki.url());
    let resp = reqwest::Client::new()
        .get(url)
        .query(&[("query", r#"{job="web"} != "POST""#)])
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(v["data"]["result"][0]["values"][0][1], "GET /w");
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
    assert_eq!(loki.unique_count(), 0);

    let resp = post(&loki.push_url(), "application/x-protobuf", body).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(loki.unique_count(), 1);
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
    assert_eq!(loki.unique_count(), 1);
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
    assert!(loki.wait_for_unique(2, DEADLINE).await);
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
    assert!(!loki.wait_for_unique(1, Duration::from_millis(50)).await);
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

#[test]
fn pushed_label_sets_parse_with_go_escapes() {
    let l = support::loki::parse_labels(r#"{job="a\"b", level="info"}"#).unwrap();
    assert_eq!(l["job"], "a\"b");
    assert_eq!(l["level"], "info");
    assert!(support::loki::parse_labels("{}").is_err());
    assert!(support::loki::parse_labels(r#"{job="a""#).is_err());
    assert!(support::loki::parse_labels(r#"{job!="a"}"#).is_err());
}
