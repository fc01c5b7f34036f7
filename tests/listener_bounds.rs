//! The agent's listeners (OTLP/HTTP, OTLP/gRPC, admin) against clients that
//! hold on: a client sending its headers a byte a second is cut after the
//! header timeout; a hundred connections each sending a huge body leave the
//! agent's memory bounded and an honest sender still served; a hundred idle
//! or half-sent connections do not hold up `SIGTERM`. All on the real binary.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::agent::{metric, Agent, Relay};
use support::otlp::OtlpReceiver;
use support::DEADLINE;

/// The agent's header timeout (10 s) and a margin for a loaded machine.
const CUT_WITHIN: Duration = Duration::from_secs(25);

/// `VmHWM` (peak resident memory) of `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

async fn relay_with_admin() -> (
    OtlpReceiver,
    Relay,
    Agent,
    SocketAddr,
    SocketAddr,
    SocketAddr,
) {
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    relay.set_admin_listen("127.0.0.1:0");
    let (agent, grpc, http) = relay.start().await;
    let admin = agent.admin_addr().await;
    (collector, relay, agent, grpc, http, admin)
}

fn span_body(name: &str) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![3; 16],
                    span_id: vec![4; 8],
                    name: name.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Sends `bytes` one a second on a fresh connection to `addr` and returns how
/// long the agent kept the connection open; panics if it still is after
/// [`CUT_WITHIN`]. What the agent sends meanwhile (an HTTP/2 SETTINGS frame,
/// a 408) is read and ignored: only a closed connection counts.
async fn trickle_until_cut(addr: SocketAddr, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 4096];
    for b in bytes.iter().cycle() {
        assert!(
            started.elapsed() < CUT_WITHIN,
            "{addr}: a client sending a byte a second is still connected after {CUT_WITHIN:?}"
        );
        if stream.write_all(&[*b]).await.is_err() {
            return started.elapsed();
        }
        // Reading doubles as the client's pause between bytes.
        let next = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(next, stream.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => {}
            }
        }
    }
    unreachable!("cycle() never ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_headers_a_byte_a_second_is_cut_after_the_header_timeout() {
    let (_collector, _relay, agent, grpc, http, admin) = relay_with_admin().await;
    let head = b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let admin_head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    // The HTTP/2 preface, then a SETTINGS frame header, slowly: no request
    // ever starts.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let (h, a, g) = tokio::join!(
        trickle_until_cut(http, head),
        trickle_until_cut(admin, admin_head),
        trickle_until_cut(grpc, preface),
    );
    // Not before the header timeout: a slow but honest client gets its 10 s
    // on the receivers, 2 s on the admin endpoint (any user can open
    // connections to it; a scraper sends its request at once).
    for (name, held, timeout) in [("otlp http", h, 10), ("admin", a, 2), ("otlp grpc", g, 10)] {
        eprintln!("{name}: cut after {held:?}");
        let timeout = Duration::from_secs(timeout);
        assert!(
            held >= timeout - Duration::from_secs(1) && held < timeout * 2,
            "{name}: cut after {held:?}"
        );
    }
    // The listeners still serve.
    let r = reqwest::Client::new()
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(span_body("after the slow client"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "agent log:\n{}", agent.log());
    let r = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Each cut is counted, by listener and reason.
    for (listener, reason) in [
        ("otlp_http", "slow_headers"),
        ("admin", "slow_headers"),
        ("otlp_grpc", "no_request"),
    ] {
        let name = format!(
            "wisp_listener_connections_closed_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
        );
        let counted = support::wait_until_async(DEADLINE, || async {
            metric(admin, &name).await == Some(1.0)
        })
        .await;
        assert!(counted, "{name} is {:?}", metric(admin, &name).await);
    }
}

/// One greedy connection: a `POST` declaring a 16 MiB body, sent in 64 KiB
/// pieces 10 ms apart until done or the agent closes the connection.
async fn greedy_post(addr: SocketAddr) {
    const BODY: usize = 16 << 20;
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: {BODY}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let piece = vec![0x0au8; 64 << 10];
    let mut sent = 0;
    while sent < BODY {
        if stream.write_all(&piece).await.is_err() {
            return;
        }
        sent += piece.len();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_greedy_connections_leave_memory_bounded_and_an_honest_sender_served() {
    // What the agent may hold beyond its baseline: the 32 MiB body budget,
    // connection buffers and allocator slack; 100 bodies of 16 MiB would be 1.6 GB.
    const GROWTH_BOUND: u64 = 160 << 20;
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (mut agent, _grpc, http) = relay.start().await;
    let pid = agent.pid().unwrap();
    let baseline = peak_rss(pid);

    let greedy: Vec<_> = (0..100).map(|_| tokio::spawn(greedy_post(http))).collect();
    // An OTLP exporter: retries 503 (after its Retry-After) and lost connections.
    let honest = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let started = Instant::now();
        let mut answers = Vec::new();
        while started.elapsed() < Duration::from_secs(45) {
            match client
                .post(format!("http://{http}/v1/traces"))
                .header("content-type", "application/x-protobuf")
                .body(span_body("honest"))
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => return Ok(started.elapsed()),
                Ok(r) => {
                    answers.push(r.status().as_u16().to_string());
                    let wait = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .unwrap_or(1);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                Err(e) => {
                    answers.push(e.to_string());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Err(answers)
    });

    let mut peak = 0;
    while !(honest.is_finished() && greedy.iter().all(|g| g.is_finished())) {
        peak = peak_rss(pid).saturating_sub(baseline);
        if peak > GROWTH_BOUND {
            agent.kill9();
            panic!(
                "the agent's peak RSS grew by {} MiB under 100 greedy connections",
                peak >> 20
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("peak RSS grew by {} MiB", peak >> 20);
    match honest.await.unwrap() {
        Ok(after) => eprintln!("the honest sender was served after {after:?}"),
        Err(answers) => panic!(
            "the honest sender was never served; answers: {answers:?}\nagent log:\n{}",
            agent.log()
        ),
    }
    assert!(collector.wait_for_spans(1, DEADLINE).await);
    assert_eq!(agent.terminate(), Some(0));
}

/// Opens `n` connections to `addr`; every other one sends `partial` (a
/// request begun, never finished), the rest nothing.
async fn hold_connections(addr: SocketAddr, n: usize, partial: &[u8]) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            let _ = s.write_all(partial).await;
        }
        held.push(s);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_answers_beside_a_hundred_idle_connections() {
    let (_collector, _relay, agent, _grpc, _http, admin) = relay_with_admin().await;
    // Any local user can do this: open connections and send nothing, or half
    // a request.
    let held = hold_connections(admin, 100, b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for path in ["/healthz", "/status", "/metrics"] {
        let asked = Instant::now();
        let r = client
            .get(format!("http://{admin}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} did not answer: {e}\n{}", agent.log()));
        assert_eq!(r.status(), 200, "{path}");
        assert!(asked.elapsed() < Duration::from_secs(2), "{path}");
    }
    // An idle connection does not keep its slot: it is closed after the
    // first-request deadline.
    let mut idle = TcpStream::connect(admin).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an idle connection was not closed: {closed:?}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hundred_idle_connections_per_listener_exits_0_within_10s() {
    let (_collector, _relay, mut agent, grpc, http, admin) = relay_with_admin().await;
    let mut held = Vec::new();
    held.extend(
        hold_connections(
            http,
            100,
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\nabc",
        )
        .await,
    );
    held.extend(hold_connections(grpc, 100, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await);
    held.extend(hold_connections(admin, 100, b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await);
    // A kept-alive connection after a finished request, too.
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(span_body("before the shutdown"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let asked = Instant::now();
    let code = agent.terminate();
    let took = asked.elapsed();
    eprintln!("exited {code:?} after {took:?}");
    assert_eq!(code, Some(0), "agent log:\n{}", agent.log());
    assert!(
        took < Duration::from_secs(10),
        "the agent took {took:?} to stop with 300 connections held open"
    );
    drop(held);
}

/// A trace export with one span carrying `pad` bytes of attribute.
fn padded_request(name: &str, pad: usize) -> ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    let mut req = ExportTraceServiceRequest::decode(&span_body(name)[..]).unwrap();
    req.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(KeyValue {
            key: "pad".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("x".repeat(pad))),
            }),
            ..Default::default()
        });
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_grpc_clients_are_told_resource_exhausted_and_memory_stays_bounded() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    const GROWTH_BOUND: u64 = 160 << 20;
    const CLIENTS: usize = 32;
    let collector = OtlpReceiver::start().await;
    let relay = Relay::new(&collector, "grpc", None);
    let (mut agent, grpc, _http) = relay.start().await;
    let pid = agent.pid().unwrap();
    let baseline = peak_rss(pid);

    // One connection each, all sending an 8 MiB export at once.
    let mut greedy = Vec::new();
    for i in 0..CLIENTS {
        let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20);
        let req = padded_request(&format!("greedy {i}"), 8 << 20);
        greedy.push(tokio::spawn(
            async move { client.export(req).await.map(|_| ()) },
        ));
    }
    let mut peak = 0;
    while !greedy.iter().all(|g| g.is_finished()) {
        peak = peak_rss(pid).saturating_sub(baseline);
        if peak > GROWTH_BOUND {
            agent.kill9();
            panic!(
                "the agent's peak RSS grew by {} MiB under {CLIENTS} greedy grpc clients",
                peak >> 20
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("peak RSS grew by {} MiB", peak >> 20);
    let mut refused = 0;
    for g in greedy {
        if let Err(status) = g.await.unwrap() {
            // The OTLP throttling answer, which exporters retry.
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            // With a google.rpc.RetryInfo: without one, exporters would drop it.
            assert!(!status.details().is_empty(), "{status:?}");
            refused += 1;
        }
    }
    eprintln!("{refused} of {CLIENTS} greedy exports refused");
    assert!(
        refused > 0,
        "all {CLIENTS} exports of 8 MiB were held at once"
    );

    // Once they are answered, an ordinary export goes through.
    let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client
        .export(padded_request("honest", 16))
        .await
        .expect("an export after the greedy ones is taken");
    assert_eq!(agent.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_a_byte_a_second_is_answered_408_after_the_request_timeout() {
    let (_collector, _relay, agent, _grpc, http, admin) = relay_with_admin().await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(http).await.unwrap();
    stream
        .write_all(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The request timeout (30 s) and a margin.
    let cut_within = Duration::from_secs(45);
    'trickle: loop {
        assert!(
            started.elapsed() < cut_within,
            "a body sent a byte a second is still being taken after {cut_within:?}"
        );
        if stream.write_all(b"x").await.is_err() {
            break;
        }
        let next = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(next, stream.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => break 'trickle,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            }
        }
    }
    let held = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    eprintln!("cut after {held:?}: {answer}");
    assert!(held >= Duration::from_secs(29), "cut after {held:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let name =
        "wisp_listener_connections_closed_total{listener=\"otlp_http\",reason=\"request_timeout\"}";
    let counted = support::wait_until_async(DEADLINE, || async {
        metric(admin, name).await == Some(1.0)
    })
    .await;
    assert!(
        counted,
        "{name} is {:?}\n{}",
        metric(admin, name).await,
        agent.log()
    );
}
