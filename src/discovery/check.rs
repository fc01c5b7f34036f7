//! One readiness check of one service on one address: what it answered and how
//! fast.
//!
//! Every check ends within the timeout it is given, whatever the peer does
//! (accepts and never answers, answers slowly, sends garbage): each is wrapped in
//! `tokio::time::timeout` on top of the clients' own timeouts. HTTP checks use a
//! client built with `no_proxy()`: the host is one hop away, and a proxy variable
//! set for the internet must not route (or break) a check of it. The check of
//! Loki trusts what the Loki sink trusts: its client gets `[loki]`'s TLS
//! settings from [`crate::http_client`], as the sink's does ([`loki_check_client`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_client::TraceServiceClient, ExportTraceServiceRequest,
};
use serde::Serialize;

use crate::config::LokiConfig;
use crate::http_client::{self, with_tls};

/// The longest body excerpt kept from an unexpected answer.
const BODY_EXCERPT_CHARS: usize = 200;

/// What one service check found.
///
/// JSON: an object tagged by `status` (`ok`, `http_status`, `grpc_status`,
/// `refused`, `timeout`, `error`, `not_checked`); see `docs/probe.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Check {
    /// The service answered as a healthy one does (HTTP 200, gRPC OK).
    Ok { latency_ms: u64 },
    /// An HTTP answer other than 200; `body` is the start of what it said.
    HttpStatus {
        code: u16,
        body: String,
        latency_ms: u64,
    },
    /// A gRPC status other than OK (`name` as in the gRPC spec, e.g. `Unimplemented`).
    GrpcStatus {
        code: i32,
        name: String,
        message: String,
        latency_ms: u64,
    },
    /// The address answered that nothing listens on the port.
    Refused { latency_ms: u64 },
    /// No answer within the timeout.
    Timeout { after_ms: u64 },
    /// Anything else (no route, reset, TLS, malformed answer).
    Error { reason: String },
    /// The check was not run; `reason` says why (service disabled, no address).
    NotChecked { reason: String },
}

impl Check {
    pub fn is_ok(&self) -> bool {
        matches!(self, Check::Ok { .. })
    }

    /// Did something listen and answer on the port (healthy or not)?
    pub fn answered(&self) -> bool {
        matches!(
            self,
            Check::Ok { .. } | Check::HttpStatus { .. } | Check::GrpcStatus { .. }
        )
    }

    pub(crate) fn not_checked(reason: &str) -> Check {
        Check::NotChecked {
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Ok { latency_ms } => write!(f, "ok ({latency_ms} ms)"),
            Check::HttpStatus {
                code,
                body,
                latency_ms,
            } => {
                write!(f, "HTTP {code} ({latency_ms} ms)")?;
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                Ok(())
            }
            Check::GrpcStatus {
                name,
                message,
                latency_ms,
                ..
            } => {
                write!(f, "gRPC {name} ({latency_ms} ms)")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Check::Refused { latency_ms } => write!(f, "refused ({latency_ms} ms)"),
            Check::Timeout { after_ms } => write!(f, "timeout after {after_ms} ms"),
            Check::Error { reason } => write!(f, "error: {reason}"),
            Check::NotChecked { reason } => write!(f, "not checked ({reason})"),
        }
    }
}

/// An HTTP client for checks: no proxy (the host is local), short timeouts, no
/// pooling.
pub fn check_client(timeout: Duration) -> reqwest::Client {
    check_builder(timeout)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The client for the check of Loki: a [`check_client`] with `[loki]`'s TLS
/// settings (`loki.ca_file`, `loki.insecure_skip_verify`), applied as to the
/// sink's client, so a Loki over https that the sink trusts is
/// one discovery chooses. Fails only when `loki.ca_file` became unusable after
/// the start, which checked it.
pub(crate) fn loki_check_client(
    cfg: &LokiConfig,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    with_tls(check_builder(timeout), cfg)
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| format!("cannot build the loki http client: {e}"))
}

fn check_builder(timeout: Duration) -> reqwest::ClientBuilder {
    http_client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_max_idle_per_host(0)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn timeout_check(timeout: Duration) -> Check {
    Check::Timeout {
        after_ms: ms(timeout),
    }
}

/// GETs `url`: 200 is ok; any other status is reported with the start of its body.
pub async fn check_http(client: &reqwest::Client, url: &str, timeout: Duration) -> Check {
    send_check(client.get(url), |code| code == 200, timeout).await
}

/// Sends `request` within `timeout`: a status `ok` accepts is ok; any other is
/// reported with the start of its body; no answer is a timeout or an error.
async fn send_check(
    request: reqwest::RequestBuilder,
    ok: impl Fn(u16) -> bool,
    timeout: Duration,
) -> Check {
    let started = Instant::now();
    let attempt = async {
        let resp = request.send().await?;
        let latency_ms = ms(started.elapsed());
        let code = resp.status().as_u16();
        if ok(code) {
            return Ok(Check::Ok { latency_ms });
        }
        Ok(Check::HttpStatus {
            code,
            body: excerpt(&resp.text().await.unwrap_or_default()),
            latency_ms,
        })
    };
    finish(
        tokio::time::timeout(timeout, attempt).await,
        started,
        timeout,
    )
}

/// POSTs an empty OTLP trace export (`json` picks `{}` over an empty protobuf).
pub async fn check_otlp_http(
    client: &reqwest::Client,
    url: &str,
    json: bool,
    headers: &BTreeMap<String, String>,
    timeout: Duration,
) -> Check {
    let (content_type, body): (&str, &'static [u8]) = if json {
        ("application/json", b"{}")
    } else {
        ("application/x-protobuf", b"")
    };
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body);
    for (k, v) in headers {
        request = request.header(k.as_str(), v.as_str());
    }
    send_check(request, |code| (200..300).contains(&code), timeout).await
}

fn finish(
    outcome: Result<Result<Check, reqwest::Error>, tokio::time::error::Elapsed>,
    started: Instant,
    timeout: Duration,
) -> Check {
    match outcome {
        Err(_) => timeout_check(timeout),
        Ok(Ok(check)) => check,
        Ok(Err(e)) if e.is_timeout() => timeout_check(timeout),
        Ok(Err(e)) if is_refused(&e) => Check::Refused {
            latency_ms: ms(started.elapsed()),
        },
        Ok(Err(e)) => Check::Error {
            reason: error_chain(&e.without_url()),
        },
    }
}

/// Opens (and closes) a TCP connection.
pub async fn check_tcp(addr: SocketAddr, timeout: Duration) -> Check {
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => timeout_check(timeout),
        Ok(Ok(_)) => Check::Ok {
            latency_ms: ms(started.elapsed()),
        },
        Ok(Err(e)) => io_check(&e, started),
    }
}

fn io_check(e: &std::io::Error, started: Instant) -> Check {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        Check::Refused {
            latency_ms: ms(started.elapsed()),
        }
    } else {
        Check::Error {
            reason: e.to_string(),
        }
    }
}

/// An empty OTLP/gRPC trace export: a collector answers OK.
///
/// A TCP connect comes first so that "refused" is told apart from gRPC failures;
/// with `tls` (an `https` endpoint) only that connect is made, as the agent's
/// gRPC client here speaks plain HTTP/2.
pub async fn check_otlp_grpc(
    addr: SocketAddr,
    tls: bool,
    headers: &BTreeMap<String, String>,
    timeout: Duration,
) -> Check {
    let started = Instant::now();
    let attempt = async {
        if let Err(e) = tokio::net::TcpStream::connect(addr).await {
            return io_check(&e, started);
        }
        if tls {
            return Check::Ok {
                latency_ms: ms(started.elapsed()),
            };
        }
        let request = grpc_request(ExportTraceServiceRequest::default(), headers);
        match grpc_export(addr, request, timeout).await {
            Ok(_) => Check::Ok {
                latency_ms: ms(started.elapsed()),
            },
            Err(GrpcFailure::Status(status)) => grpc_status_check(&status, started),
            Err(GrpcFailure::Connect(reason)) => Check::Error { reason },
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(check) => check,
        Err(_) => timeout_check(timeout),
    }
}

pub(crate) fn grpc_status_check(status: &tonic::Status, started: Instant) -> Check {
    Check::GrpcStatus {
        code: status.code() as i32,
        name: format!("{:?}", status.code()),
        message: excerpt(status.message()),
        latency_ms: ms(started.elapsed()),
    }
}

pub(crate) enum GrpcFailure {
    Connect(String),
    Status(tonic::Status),
}

/// A request carrying the configured OTLP headers (invalid ones are skipped).
pub(crate) fn grpc_request(
    body: ExportTraceServiceRequest,
    headers: &BTreeMap<String, String>,
) -> tonic::Request<ExportTraceServiceRequest> {
    let mut request = tonic::Request::new(body);
    for (k, v) in headers {
        let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes());
        let value = tonic::metadata::MetadataValue::try_from(v.as_str());
        if let (Ok(key), Ok(value)) = (key, value) {
            request.metadata_mut().insert(key, value);
        }
    }
    request
}

/// One export over a fresh plain-HTTP/2 channel.
pub(crate) async fn grpc_export(
    addr: SocketAddr,
    request: tonic::Request<ExportTraceServiceRequest>,
    timeout: Duration,
) -> Result<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse, GrpcFailure>
{
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| GrpcFailure::Connect(error_chain(&e)))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| GrpcFailure::Connect(error_chain(&e)))?;
    TraceServiceClient::new(channel)
        .export(request)
        .await
        .map(|r| r.into_inner())
        .map_err(GrpcFailure::Status)
}

/// The start of a body, on one line, for a report.
pub(crate) fn excerpt(text: &str) -> String {
    let one_line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(BODY_EXCERPT_CHARS)
        .collect();
    one_line
}

fn is_refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// An error and its causes, joined with `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
