//! A batch encoded and pushed by the Loki client arrives in Loki as written, once,
//! with the headers and credentials configured, and every kind of answer becomes
//! the right [`PushOutcome`]. Pushed twice, a batch is shown once, as Loki's
//! queries show it, and the resend is caught by the delivery verdict.

mod support;

use std::time::Duration;

use support::loki::{LokiReceiver, Mode};
use wisp_agent::config::{BasicAuth, LokiConfig, LokiEncoding, Span};
use wisp_agent::record::{Labels, LogRecord, Timestamp};
use wisp_agent::sink::loki::{encode, LokiClient};
use wisp_agent::sink::retry::PushOutcome;

fn record(job: &str, level: &str, ts: i64, line: &str, md: &[(&str, &str)]) -> LogRecord {
    LogRecord {
        timestamp: Timestamp(ts),
        labels: Labels::from_pairs([("job", job), ("level", level), ("host", "vm1")]),
        structured_metadata: md
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        line: line.into(),
    }
}

fn batch() -> Vec<LogRecord> {
    vec![
        record(
            "api",
            "info",
            1_700_000_000_000_000_002,
            r#"{"level":30,"msg":"b"}"#,
            &[],
        ),
        record(
            "api",
            "error",
            1_700_000_000_000_000_001,
            r#"{"level":50,"msg":"boom"}"#,
            &[
                ("trace_id", "0af7651916cd43dd8448eb211c80319c"),
                ("span_id", "b7ad6b7169203331"),
            ],
        ),
        record(
            "api",
            "info",
            1_700_000_000_000_000_000,
            r#"{"level":30,"msg":"a"}"#,
            &[],
        ),
    ]
}

/// The lines of [`batch`], what Loki must hold once each after it is delivered.
fn batch_lines() -> Vec<String> {
    batch().into_iter().map(|r| r.line).collect()
}

/// Every stream [`batch`] pushes to.
const API: &str = r#"{job="api"}"#;

fn client(cfg: LokiConfig) -> LokiClient {
    LokiClient::new(&cfg).expect("loki client")
}

async fn round_trip(encoding: LokiEncoding) {
    let loki = LokiReceiver::start().await;
    let push = encode(&batch(), encoding).unwrap();
    assert_eq!(push.entries, 3);
    let outcome = client(LokiConfig::default())
        .push(&loki.push_url(), &push)
        .await;
    assert_eq!(outcome, PushOutcome::Delivered);

    assert_eq!(
        loki.lines(r#"{job="api", level="info"}"#),
        [r#"{"level":30,"msg":"a"}"#, r#"{"level":30,"msg":"b"}"#]
    );
    let errors = loki.entries(r#"{level="error"}"#);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].timestamp_ns, 1_700_000_000_000_000_001);
    assert_eq!(errors[0].labels["host"], "vm1");
    assert_eq!(
        errors[0].metadata["trace_id"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(errors[0].metadata["span_id"], "b7ad6b7169203331");
    assert_eq!(loki.exactly_once(API, &batch_lines()), Ok(()));
}

#[tokio::test]
async fn a_protobuf_push_arrives_with_streams_order_and_structured_metadata() {
    round_trip(LokiEncoding::Protobuf).await;
}

#[tokio::test]
async fn a_json_push_arrives_with_streams_order_and_structured_metadata() {
    round_trip(LokiEncoding::Json).await;
}

#[tokio::test]
async fn a_replayed_batch_is_shown_once_and_the_verdict_catches_the_resend() {
    let loki = LokiReceiver::start().await;
    let client = client(LokiConfig::default());
    for _ in 0..2 {
        // Encoded afresh, as after a restart: the same bytes, so the same entries.
        let push = encode(&batch(), LokiEncoding::Protobuf).unwrap();
        assert!(client.push(&loki.push_url(), &push).await.is_delivered());
    }
    assert_eq!(loki.received_count(), 6);
    // The same stream, timestamp and line: Loki's queries show each entry
    // once. The agent still must not push again what Loki acknowledged (its
    // promise does not lean on that), so the verdict names the resend.
    assert_eq!(loki.stored_count(), 3);
    let mut shown = loki.lines(API);
    shown.sort();
    let mut want = batch_lines();
    want.sort();
    assert_eq!(shown, want);
    let err = loki.exactly_once(API, &batch_lines()).unwrap_err();
    assert!(
        err.contains("3 sent again after Loki stored them (3 extra entries"),
        "{err}"
    );
    assert!(!err.contains("stored twice"), "{err}");
}

#[tokio::test]
async fn pushes_carry_user_agent_tenant_and_content_type() {
    let loki = LokiReceiver::start().await;
    let client = client(LokiConfig {
        tenant: "team-a".into(),
        ..LokiConfig::default()
    });
    let push = encode(&batch(), LokiEncoding::Protobuf).unwrap();
    assert!(client.push(&loki.push_url(), &push).await.is_delivered());
    assert_eq!(
        loki.last_header("user-agent").as_deref(),
        Some(concat!("wisp-agent/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(loki.last_header("x-scope-orgid").as_deref(), Some("team-a"));
    assert_eq!(
        loki.last_header("content-type").as_deref(),
        Some("application/x-protobuf")
    );
    assert_eq!(loki.last_header("authorization"), None);
    assert_eq!(loki.exactly_once(API, &batch_lines()), Ok(()));
}

#[tokio::test]
async fn without_a_tenant_no_org_id_header_is_sent() {
    let loki = LokiReceiver::start().await;
    let push = encode(&batch(), LokiEncoding::Json).unwrap();
    let outcome = client(LokiConfig::default())
        .push(&loki.push_url(), &push)
        .await;
    assert!(outcome.is_delivered());
    assert_eq!(loki.last_header("x-scope-orgid"), None);
    assert_eq!(
        loki.last_header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(loki.exactly_once(API, &batch_lines()), Ok(()));
}

#[tokio::test]
async fn bearer_token_is_read_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-token\n").unwrap();
    let loki = LokiReceiver::start().await;
    let client = client(LokiConfig {
        bearer_token_file: Some(token),
        ..LokiConfig::default()
    });
    let push = encode(&batch(), LokiEncoding::Protobuf).unwrap();
    assert!(client.push(&loki.push_url(), &push).await.is_delivered());
    assert_eq!(
        loki.last_header("authorization").as_deref(),
        Some("Bearer s3cr3t-token")
    );
    assert!(!format!("{client:?}").contains("s3cr3t"));
    assert_eq!(loki.exactly_once(API, &batch_lines()), Ok(()));
}

#[tokio::test]
async fn basic_auth_password_is_read_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("loki.pass");
    std::fs::write(&pass, "hunter2\n").unwrap();
    let loki = LokiReceiver::start().await;
    let client = client(LokiConfig {
        basic_auth: Some(BasicAuth {
            username: "alice".into(),
            password_file: pass,
        }),
        ..LokiConfig::default()
    });
    let push = encode(&batch(), LokiEncoding::Protobuf).unwrap();
    assert!(client.push(&loki.push_url(), &push).await.is_delivered());
    // base64("alice:hunter2")
    assert_eq!(
        loki.last_header("authorization").as_deref(),
        Some("Basic YWxpY2U6aHVudGVyMg==")
    );
    assert!(!format!("{client:?}").contains("hunter2"));
    assert_eq!(loki.exactly_once(API, &batch_lines()), Ok(()));
}

#[test]
fn a_missing_password_file_is_an_error_naming_the_file() {
    let err = LokiClient::new(&LokiConfig {
        basic_auth: Some(BasicAuth {
            username: "alice".into(),
            password_file: "/nonexistent/loki.pass".into(),
        }),
        ..LokiConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/loki.pass"), "{err}");
    assert!(err.contains("password_file"), "{err}");
}

#[tokio::test]
async fn a_503_with_retry_after_is_retried_after_that_delay() {
    let loki = LokiReceiver::start().await;
    loki.fail_next(1, 503, Some(3), "ingester not ready");
    let client = client(LokiConfig::default());
    let push = encode(&batch(), LokiEncoding::Protobuf).unwrap();
    let outcome = client.push(&loki.push_url(), &push).await;
    assert_eq!(
        outcome,
        PushOutcome::Retry {
            after: Some(Duration::from_secs(3)),
            reason: "status 503: ingester not ready".into()
        }
    );
    assert_eq!(loki.stored_count(), 0);
    // The same push, again: now taken.
    assert!(client.push(&loki.push_url(), &push).await.is_delivered());
    assert_eq!(loki.stored_count(), 3);
    assert_eq!(loki.exactly_once(API, &batch_lines()), Ok(()));
}

#[tokio::test]
async fn a_429_is_retried() {
    let loki = LokiReceiver::start().await;
    loki.set_mode(Mode::Status(429));
    let push = encode(&batch(), LokiEncoding::Protobuf).unwrap();
    let outcome = client(LokiConfig::default())
        .push(&loki.push_url(), &push)
        .await;
    assert!(
        matches!(outcome, PushOutcome::Retry { after: None, .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_400_is_rejected_with_the_servers_reason() {
    let loki = LokiReceiver::start().await;
    let reason = "entry for stream '{job=\"api\"}' has timestamp too old";
    loki.fail_next(1, 400, None, &format!("{reason}\n"));
    let push = encode(&batch(), LokiEncoding::Protobuf).unwrap();
    let outcome = client(LokiConfig::default())
        .push(&loki.push_url(), &push)
        .await;
    assert_eq!(
        outcome,
        PushOutcome::Rejected {
            status: 400,
            reason: reason.into()
        }
    );
}

#[tokio::test]
async fn a_stopped_loki_means_retry_on_a_connection_error() {
    let loki = LokiReceiver::start().await;
    loki.stop().await;
    let push = encode(&batch(), LokiEncoding::Protobuf).unwrap();
    let outcome = client(LokiConfig::default())
        .push(&loki.push_url(), &push)
        .await;
    let PushOutcome::Retry { after, reason } = outcome else {
        panic!("not a retry: {outcome:?}");
    };
    assert_eq!(after, None);
    assert!(reason.starts_with("cannot connect"), "{reason}");
}

#[tokio::test]
async fn a_loki_that_never_answers_means_retry_after_the_timeout() {
    let loki = LokiReceiver::start().await;
    loki.set_mode(Mode::Hang);
    let client = client(LokiConfig {
        timeout: Span(Duration::from_millis(200)),
        ..LokiConfig::default()
    });
    let push = encode(&batch(), LokiEncoding::Protobuf).unwrap();
    let outcome = client.push(&loki.push_url(), &push).await;
    let PushOutcome::Retry { reason, .. } = outcome else {
        panic!("not a retry: {outcome:?}");
    };
    assert!(reason.starts_with("timed out"), "{reason}");
}

#[tokio::test]
async fn a_push_url_with_a_password_keeps_it_out_of_the_reason() {
    let loki = LokiReceiver::start().await;
    loki.stop().await;
    let url = format!("http://user:pa55word@{}/loki/api/v1/push", loki.addr());
    let push = encode(&batch(), LokiEncoding::Protobuf).unwrap();
    let outcome = client(LokiConfig::default()).push(&url, &push).await;
    assert!(!format!("{outcome:?}").contains("pa55word"), "{outcome:?}");
}

#[tokio::test]
async fn a_push_retried_after_loki_comes_back_is_delivered_once() {
    let loki = LokiReceiver::start().await;
    let client = client(LokiConfig::default());
    // A line of its own (a line of `batch` would be pushed twice, and stored
    // twice): it opens the connection the pool keeps across the outage.
    let before = record(
        "api",
        "info",
        1_699_999_999_000_000_000,
        r#"{"level":30,"msg":"before the outage"}"#,
        &[],
    );
    let first = encode(std::slice::from_ref(&before), LokiEncoding::Protobuf).unwrap();
    assert!(client.push(&loki.push_url(), &first).await.is_delivered());

    loki.stop().await;
    let push = encode(&batch(), LokiEncoding::Protobuf).unwrap();
    let outcome = client.push(&loki.push_url(), &push).await;
    assert!(matches!(outcome, PushOutcome::Retry { .. }), "{outcome:?}");

    loki.restart().await;
    // The same client (and pool) as before the outage.
    assert_eq!(
        client.push(&loki.push_url(), &push).await,
        PushOutcome::Delivered
    );
    assert_eq!(loki.stored_count(), 4);
    let mut want = vec![before.line];
    want.extend(batch_lines());
    assert_eq!(loki.exactly_once(API, &want), Ok(()));
}
