//! The OTLP exporter: reads the OTLP spool, exports to the collector on the host
//! discovery chose (`otlp.endpoint`, `otlp.protocol`, `otlp.headers`), and
//! acknowledges in the spool once the collector took the data.
//!
//! Promises:
//! - **Relayed as received.** Requests are exported as the receiver stored them:
//!   consecutive requests of one signal are batched by concatenating their
//!   protobuf bytes (a valid encoding of the merged request), up to
//!   [`EXPORT_MAX_BYTES`]. gRPC sends those bytes through a pass-through codec;
//!   OTLP/HTTP protobuf posts them; only `http/json` decodes them, to re-encode.
//! - **Retry what may succeed later.** gRPC `UNAVAILABLE`, `RESOURCE_EXHAUSTED`,
//!   `DEADLINE_EXCEEDED`, `ABORTED`, `CANCELLED`, `OUT_OF_RANGE`, `DATA_LOSS` and
//!   `UNKNOWN`, HTTP 408/429/5xx (honouring `Retry-After`), timeouts and
//!   connection errors are retried with capped exponential backoff and full
//!   jitter (`sink/retry.rs`); the data waits in the spool meanwhile.
//! - **Drop what never will.** Other gRPC codes (`INVALID_ARGUMENT`, …) and other
//!   HTTP 4xx drop the export, counted by cause and logged once per cause.
//! - **Partial success** (the collector took some items and rejected others) is
//!   delivered; the rejected items are counted per signal and the collector's
//!   message logged once per signal.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{fill_host, redact_text, redact_url, OtlpConfig, OtlpProtocol};
use crate::discovery::{current_host, Chosen, HostHealth};
use crate::record::{OtlpPayload, OtlpSignal};
use crate::sink::loki::service::USER_AGENT;
use crate::sink::retry::{Backoff, PushOutcome};
use crate::spool::{ReadBatch, SpoolReader};

/// One export carries at most about this many bytes (a single larger request
/// goes alone). Collectors take 4 MiB gRPC messages by default.
pub const EXPORT_MAX_BYTES: usize = 1024 * 1024;

/// Requests read from the spool per round.
const READ_MAX_REQUESTS: usize = 256;

/// How the exporter sends (from `[otlp]`).
#[derive(Clone, Debug)]
pub struct OtlpSinkSettings {
    /// The endpoint with `{host}` in it.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub max_backoff: Duration,
    /// The agent's own receivers, as bound: exporting to one would loop.
    pub own_receivers: Vec<SocketAddr>,
}

impl OtlpSinkSettings {
    pub fn from_config(c: &OtlpConfig) -> Self {
        // The default endpoint names the gRPC port; an HTTP protocol with the
        // endpoint left alone means the HTTP port.
        let endpoint =
            if c.protocol != OtlpProtocol::Grpc && c.endpoint == OtlpConfig::default().endpoint {
                "http://{host}:4318".to_string()
            } else {
                c.endpoint.clone()
            };
        Self {
            endpoint,
            protocol: c.protocol,
            headers: c
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            timeout: c.timeout.get(),
            max_backoff: c.max_backoff.get(),
            own_receivers: Vec::new(),
        }
    }
}

/// The exporter's counters (served by the admin endpoint).
#[derive(Debug, Default)]
pub struct OtlpCounters {
    /// Received requests delivered (several may travel in one export).
    pub requests_shipped: AtomicU64,
    pub exports: AtomicU64,
    pub bytes_shipped: AtomicU64,
    pub retries: AtomicU64,
    /// Requests dropped because the collector refused them for good, by cause
    /// (`http_400`, `grpc_invalid_argument`, …).
    pub requests_dropped: Mutex<BTreeMap<String, u64>>,
    /// Items the collector rejected in a partial success, by signal.
    pub items_rejected: Mutex<BTreeMap<&'static str, u64>>,
    pub last_error: Mutex<Option<String>>,
}

impl OtlpCounters {
    /// `(name, value)` pairs in the admin endpoint's naming.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut out = vec![
            (
                "wisp_otlp_requests_shipped_total".to_string(),
                self.requests_shipped.load(Ordering::Relaxed) as f64,
            ),
            (
                "wisp_otlp_exports_total".to_string(),
                self.exports.load(Ordering::Relaxed) as f64,
            ),
            (
                "wisp_otlp_bytes_shipped_total".to_string(),
                self.bytes_shipped.load(Ordering::Relaxed) as f64,
            ),
            (
                "wisp_otlp_retries_total".to_string(),
                self.retries.load(Ordering::Relaxed) as f64,
            ),
        ];
        if let Ok(m) = self.requests_dropped.lock() {
            for (cause, n) in m.iter() {
                out.push((
                    format!("wisp_otlp_requests_dropped_total{{reason=\"{cause}\"}}"),
                    *n as f64,
                ));
            }
        }
        if let Ok(m) = self.items_rejected.lock() {
            for (signal, n) in m.iter() {
                out.push((
                    format!("wisp_otlp_items_rejected_total{{signal=\"{signal}\"}}"),
                    *n as f64,
                ));
            }
        }
        out
    }

    fn set_last_error(&self, e: &str) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_string());
        }
    }
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OtlpClientError {
    /// The value is not shown: it may be a credential.
    #[error("otlp.headers: {name:?} is not a valid header name or its value holds characters not allowed in a header")]
    InvalidHeader { name: String },
    #[error("cannot build the otlp http client: {0}")]
    Build(reqwest::Error),
}

/// What became of one export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ExportOutcome {
    /// Taken; `rejected` items (with the collector's message) were refused inside
    /// an otherwise successful answer.
    Delivered {
        rejected: i64,
        message: String,
    },
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    Rejected {
        cause: String,
        reason: String,
    },
}

impl ExportOutcome {
    /// The same outcome with any URL credentials in its messages redacted
    /// (tonic and hyper errors may quote the endpoint as given).
    pub(crate) fn redacted(self) -> Self {
        match self {
            ExportOutcome::Delivered { rejected, message } => ExportOutcome::Delivered {
                rejected,
                message: redact_text(&message),
            },
            ExportOutcome::Retry { after, reason } => ExportOutcome::Retry {
                after,
                reason: redact_text(&reason),
            },
            ExportOutcome::Rejected { cause, reason } => ExportOutcome::Rejected {
                cause,
                reason: redact_text(&reason),
            },
        }
    }
}

/// Sends exports with the configured protocol and headers.
pub struct OtlpClient {
    protocol: OtlpProtocol,
    http: reqwest::Client,
    metadata: tonic::metadata::MetadataMap,
    timeout: Duration,
    /// The gRPC channel and the endpoint it was made for.
    channel: Option<(String, tonic::transport::Channel)>,
}

impl OtlpClient {
    pub fn new(settings: &OtlpSinkSettings) -> Result<Self, OtlpClientError> {
        let mut headers = HeaderMap::new();
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (name, value) in &settings.headers {
            let invalid = || OtlpClientError::InvalidHeader { name: name.clone() };
            let lower = name.trim().to_ascii_lowercase();
            let n = HeaderName::from_bytes(lower.as_bytes()).map_err(|_| invalid())?;
            let v = HeaderValue::from_str(value.trim()).map_err(|_| invalid())?;
            headers.insert(n, v);
            let key = tonic::metadata::MetadataKey::from_bytes(lower.as_bytes())
                .map_err(|_| invalid())?;
            let val =
                tonic::metadata::MetadataValue::try_from(value.trim()).map_err(|_| invalid())?;
            metadata.insert(key, val);
        }
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .default_headers(headers)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(OtlpClientError::Build)?;
        Ok(Self {
            protocol: settings.protocol,
            http,
            metadata,
            timeout: settings.timeout,
            channel: None,
        })
    }

    /// Exports one signal's protobuf bytes to `endpoint` (the filled-in
    /// `otlp.endpoint`).
    pub(crate) async fn export(
        &mut self,
        endpoint: &str,
        signal: OtlpSignal,
        body: Bytes,
    ) -> ExportOutcome {
        match self.protocol {
            OtlpProtocol::Grpc => self.export_grpc(endpoint, signal, body).await,
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
                self.export_http(endpoint, signal, body).await
            }
        }
    }

    async fn export_grpc(
        &mut self,
        endpoint: &str,
        signal: OtlpSignal,
        body: Bytes,
    ) -> ExportOutcome {
        let channel = match &self.channel {
            Some((e, c)) if e == endpoint => c.clone(),
            _ => {
                let ep = match tonic::transport::Endpoint::from_shared(endpoint.to_string()) {
                    Ok(ep) => ep,
                    Err(e) => {
                        return ExportOutcome::Retry {
                            after: None,
                            reason: format!(
                                "otlp.endpoint {} is not a valid URL: {e}",
                                redact_url(endpoint)
                            ),
                        }
                    }
                };
                let c = ep
                    .user_agent(USER_AGENT)
                    .map(|ep| ep.connect_timeout(self.timeout.min(Duration::from_secs(5))))
                    .map(|ep| ep.timeout(self.timeout).connect_lazy());
                match c {
                    Ok(c) => {
                        self.channel = Some((endpoint.to_string(), c.clone()));
                        c
                    }
                    Err(e) => {
                        return ExportOutcome::Retry {
                            after: None,
                            reason: format!(
                                "cannot set up a channel to {}: {e}",
                                redact_url(endpoint)
                            ),
                        }
                    }
                }
            }
        };
        let mut grpc = tonic::client::Grpc::new(channel);
        if let Err(e) = grpc.ready().await {
            return ExportOutcome::Retry {
                after: None,
                reason: format!("cannot connect: {e}"),
            };
        }
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(signal.grpc_path());
        match grpc.unary(request, path, RawCodec).await {
            Ok(response) => delivered(signal, &response.into_inner(), false),
            Err(status) => classify_status(&status),
        }
    }

    async fn export_http(
        &mut self,
        endpoint: &str,
        signal: OtlpSignal,
        body: Bytes,
    ) -> ExportOutcome {
        let url = http_url(endpoint, signal);
        let json = self.protocol == OtlpProtocol::HttpJson;
        let (content_type, body) = if json {
            match to_json(signal, &body) {
                Ok(b) => ("application/json", Bytes::from(b)),
                Err(e) => {
                    return ExportOutcome::Rejected {
                        cause: "undecodable".into(),
                        reason: format!("cannot convert a stored request to JSON: {e}"),
                    }
                }
            }
        } else {
            ("application/x-protobuf", body)
        };
        let sent = self
            .http
            .post(&url)
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                return match PushOutcome::from_transport_error(&e.without_url()) {
                    PushOutcome::Retry { after, reason } => ExportOutcome::Retry { after, reason },
                    other => ExportOutcome::Retry {
                        after: None,
                        reason: format!("{other:?}"),
                    },
                }
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let is_json = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = response.bytes().await.unwrap_or_default();
        match PushOutcome::from_response(status, &headers, &body) {
            PushOutcome::Delivered => delivered(signal, &body, is_json),
            PushOutcome::Retry { after, reason } => ExportOutcome::Retry { after, reason },
            PushOutcome::Rejected { status, reason } => ExportOutcome::Rejected {
                cause: format!("http_{status}"),
                reason,
            },
        }
    }
}

/// Whether `endpoint` names one of the agent's own receivers.
pub(crate) fn loops_back(endpoint: &str, own: &[SocketAddr]) -> bool {
    let Ok(url) = reqwest::Url::parse(endpoint) else {
        return false;
    };
    let Some(port) = url.port_or_known_default() else {
        return false;
    };
    let host = url
        .host_str()
        .unwrap_or("")
        .trim_matches(|c| c == '[' || c == ']');
    let ip = host.parse::<IpAddr>().ok();
    let local = host.eq_ignore_ascii_case("localhost") || ip.is_some_and(|ip| ip.is_loopback());
    own.iter().any(|a| {
        a.port() == port
            && ((local && (a.ip().is_loopback() || a.ip().is_unspecified())) || Some(a.ip()) == ip)
    })
}

/// `{endpoint}/v1/{signal}`; an endpoint that already ends in a signal path has
/// it replaced, so `…/v1/traces` serves all three signals.
pub(crate) fn http_url(endpoint: &str, signal: OtlpSignal) -> String {
    let mut base = endpoint.trim_end_matches('/');
    for s in OtlpSignal::ALL {
        if let Some(b) = base.strip_suffix(s.http_path()) {
            base = b;
            break;
        }
    }
    format!("{base}{}", signal.http_path())
}

fn to_json(signal: OtlpSignal, body: &[u8]) -> Result<Vec<u8>, String> {
    fn conv<M: Message + Default + serde::Serialize>(b: &[u8]) -> Result<Vec<u8>, String> {
        let m = M::decode(b).map_err(|e| e.to_string())?;
        serde_json::to_vec(&m).map_err(|e| e.to_string())
    }
    match signal {
        OtlpSignal::Traces => conv::<ExportTraceServiceRequest>(body),
        OtlpSignal::Metrics => conv::<ExportMetricsServiceRequest>(body),
        OtlpSignal::Logs => conv::<ExportLogsServiceRequest>(body),
    }
}

/// A success answer, read for a partial success. An answer that does not decode
/// is still a success: the collector said 2xx / OK.
fn delivered(signal: OtlpSignal, body: &[u8], json: bool) -> ExportOutcome {
    let (rejected, message) = if json {
        json_partial_success(signal, body)
    } else {
        protobuf_partial_success(signal, body)
    }
    .unwrap_or_default();
    ExportOutcome::Delivered { rejected, message }
}

fn protobuf_partial_success(signal: OtlpSignal, body: &[u8]) -> Option<(i64, String)> {
    match signal {
        OtlpSignal::Traces => ExportTraceServiceResponse::decode(body)
            .ok()?
            .partial_success
            .map(|p| (p.rejected_spans, p.error_message)),
        OtlpSignal::Metrics => ExportMetricsServiceResponse::decode(body)
            .ok()?
            .partial_success
            .map(|p| (p.rejected_data_points, p.error_message)),
        OtlpSignal::Logs => ExportLogsServiceResponse::decode(body)
            .ok()?
            .partial_success
            .map(|p| (p.rejected_log_records, p.error_message)),
    }
}

/// OTLP/JSON writes 64-bit integers as strings or numbers; both are read.
fn json_partial_success(signal: OtlpSignal, body: &[u8]) -> Option<(i64, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let p = v.get("partialSuccess")?;
    let field = match signal {
        OtlpSignal::Traces => "rejectedSpans",
        OtlpSignal::Metrics => "rejectedDataPoints",
        OtlpSignal::Logs => "rejectedLogRecords",
    };
    let rejected = match p.get(field) {
        Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    };
    let message = p
        .get("errorMessage")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string();
    Some((rejected, message))
}

/// The OTLP specification's retryable gRPC codes; the rest are permanent.
fn classify_status(status: &tonic::Status) -> ExportOutcome {
    use tonic::Code;
    let code = status.code();
    let reason = format!("grpc {:?}: {}", code, status.message());
    match code {
        Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => ExportOutcome::Retry {
            after: None,
            reason,
        },
        _ => ExportOutcome::Rejected {
            cause: format!("grpc_{}", snake(&format!("{code:?}"))),
            reason,
        },
    }
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A gRPC codec that passes bytes through: the request already is the encoded
/// protobuf message, the response is decoded by the caller.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The loop's inputs besides its settings.
pub struct OtlpSink {
    pub settings: OtlpSinkSettings,
    pub client: OtlpClient,
    pub reader: SpoolReader<OtlpPayload>,
    pub host: watch::Receiver<Option<Chosen>>,
    pub health: HostHealth,
    pub counters: Arc<OtlpCounters>,
}

/// One export: consecutive requests of one signal, concatenated.
struct Export {
    signal: OtlpSignal,
    body: Bytes,
    requests: u64,
}

/// Groups requests in order into exports of one signal each, at most
/// [`EXPORT_MAX_BYTES`] (a larger request alone).
fn group(records: Vec<OtlpPayload>) -> Vec<Export> {
    let mut out: Vec<(OtlpSignal, BytesMut, u64)> = Vec::new();
    for r in records {
        match out.last_mut() {
            Some((s, buf, n)) if *s == r.signal && buf.len() + r.body.len() <= EXPORT_MAX_BYTES => {
                buf.extend_from_slice(&r.body);
                *n += 1;
            }
            _ => out.push((r.signal, BytesMut::from(&r.body[..]), 1)),
        }
    }
    out.into_iter()
        .map(|(signal, body, requests)| Export {
            signal,
            body: body.freeze(),
            requests,
        })
        .collect()
}

/// Runs until `drain` fires and the spool is caught up, or until `stop` fires
/// (the shutdown grace period ran out: what is unshipped stays in the spool).
pub async fn run(mut sink: OtlpSink, drain: CancellationToken, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(250), sink.settings.max_backoff);
    let mut logged: HashSet<String> = HashSet::new();
    loop {
        let batch = tokio::select! {
            b = next_batch(&mut sink, &drain) => b,
            _ = stop.cancelled() => return,
        };
        let Some(ReadBatch {
            records,
            end,
            bytes,
        }) = batch
        else {
            return;
        };
        for export in group(records) {
            if !deliver(&mut sink, &export, &mut backoff, &mut logged, &stop).await {
                return; // stopped: the batch stays in the spool, sent again next start
            }
        }
        sink.counters
            .bytes_shipped
            .fetch_add(bytes, Ordering::Relaxed);
        if let Err(e) = tokio::task::block_in_place(|| sink.reader.ack(end)) {
            tracing::warn!("cannot record the otlp acknowledgement in the spool: {e}");
        }
    }
}

async fn next_batch(
    sink: &mut OtlpSink,
    drain: &CancellationToken,
) -> Option<ReadBatch<OtlpPayload>> {
    loop {
        let read = tokio::task::block_in_place(|| {
            sink.reader.next_batch(READ_MAX_REQUESTS, EXPORT_MAX_BYTES)
        });
        match read {
            Ok(Some(b)) => return Some(b),
            Ok(None) => {}
            Err(e) => {
                tracing::error!("cannot read the otlp spool: {e}");
                sink.counters.set_last_error(&e.to_string());
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = drain.cancelled() => return None,
                }
                continue;
            }
        }
        if drain.is_cancelled() {
            return None;
        }
        tokio::select! {
            _ = sink.reader.wait() => {}
            _ = drain.cancelled() => {}
        }
    }
}

fn count_drop(counters: &OtlpCounters, cause: &str, requests: u64) {
    if let Ok(mut m) = counters.requests_dropped.lock() {
        *m.entry(cause.to_string()).or_default() += requests;
    }
}

/// Exports until the collector takes it or refuses it for good. False when
/// `stop` fired first.
async fn deliver(
    sink: &mut OtlpSink,
    export: &Export,
    backoff: &mut Backoff,
    logged: &mut HashSet<String>,
    stop: &CancellationToken,
) -> bool {
    loop {
        let host = match current_host(&mut sink.host, stop).await {
            Some(h) => h,
            None => return false,
        };
        let endpoint = fill_host(&sink.settings.endpoint, &host);
        // What the logs and the admin endpoint show: a password in the
        // endpoint's userinfo, or quoted by tonic/hyper in an error, never is.
        let shown = redact_url(&endpoint);
        let outcome = if loops_back(&endpoint, &sink.settings.own_receivers) {
            // Only known once `{host}` is filled in (the configuration check
            // catches literal loops): keep the data, say what to change.
            let reason = format!(
                "otlp.endpoint {shown} is the agent's own OTLP receiver (a loop); \
                 point otlp.endpoint at the host's collector, or move receiver.grpc / receiver.http"
            );
            if logged.insert("loop".into()) {
                tracing::error!("{reason}; data waits in the buffer");
            }
            ExportOutcome::Retry {
                after: None,
                reason,
            }
        } else {
            tokio::select! {
                o = sink.client.export(&endpoint, export.signal, export.body.clone()) => o,
                _ = stop.cancelled() => return false,
            }
        };
        let outcome = outcome.redacted();
        let c = &sink.counters;
        match outcome {
            ExportOutcome::Delivered { rejected, message } => {
                c.exports.fetch_add(1, Ordering::Relaxed);
                c.requests_shipped
                    .fetch_add(export.requests, Ordering::Relaxed);
                if rejected > 0 {
                    if let Ok(mut m) = c.items_rejected.lock() {
                        *m.entry(export.signal.as_str()).or_default() += rejected as u64;
                    }
                    if logged.insert(format!("partial {}", export.signal.as_str())) {
                        tracing::warn!(
                            "the otlp collector at {shown} rejected {rejected} {} item(s) of an export \
                             (partial success); further rejections are only counted: {message}",
                            export.signal.as_str()
                        );
                    }
                }
                if backoff.attempts() > 0 {
                    tracing::info!("the otlp collector at {shown} takes exports again");
                }
                backoff.reset();
                sink.health.report_success();
                return true;
            }
            ExportOutcome::Rejected { cause, reason } => {
                count_drop(c, &cause, export.requests);
                if logged.insert(cause.clone()) {
                    tracing::warn!(
                        "the otlp collector at {shown} refused {} {} request(s) ({cause}); \
                         dropping them, further refusals for this cause are only counted: {reason}",
                        export.requests,
                        export.signal.as_str()
                    );
                }
                c.set_last_error(&reason);
                backoff.reset();
                return true;
            }
            ExportOutcome::Retry { after, reason } => {
                c.retries.fetch_add(1, Ordering::Relaxed);
                c.set_last_error(&reason);
                sink.health.report_failure();
                let delay = after.unwrap_or_default().max(backoff.next_delay());
                if backoff.attempts() <= 1 {
                    tracing::warn!(
                        "otlp export to {shown} failed ({reason}); retrying with backoff, data waits in the buffer"
                    );
                } else {
                    tracing::debug!(
                        "otlp export to {shown} failed again ({reason}); next try in {delay:?}"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn spans(name: &str) -> Bytes {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: name.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
        .into()
    }

    #[test]
    fn concatenated_requests_decode_as_one_request_with_all_their_data() {
        let records = vec![
            OtlpPayload {
                signal: OtlpSignal::Traces,
                body: spans("a"),
            },
            OtlpPayload {
                signal: OtlpSignal::Traces,
                body: spans("b"),
            },
            OtlpPayload {
                signal: OtlpSignal::Logs,
                body: Bytes::new(),
            },
            OtlpPayload {
                signal: OtlpSignal::Traces,
                body: spans("c"),
            },
        ];
        let exports = group(records);
        assert_eq!(exports.len(), 3, "signals change twice, order is kept");
        assert_eq!(exports[0].requests, 2);
        let merged = ExportTraceServiceRequest::decode(exports[0].body.clone()).unwrap();
        let names: Vec<_> = merged
            .resource_spans
            .iter()
            .map(|r| r.scope_spans[0].spans[0].name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(exports[1].signal, OtlpSignal::Logs);
    }

    #[test]
    fn grpc_codes_follow_the_otlp_retry_table() {
        use tonic::{Code, Status};
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Aborted,
        ] {
            assert!(
                matches!(
                    classify_status(&Status::new(code, "x")),
                    ExportOutcome::Retry { .. }
                ),
                "{code:?}"
            );
        }
        match classify_status(&Status::invalid_argument("bad")) {
            ExportOutcome::Rejected { cause, .. } => assert_eq!(cause, "grpc_invalid_argument"),
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            classify_status(&Status::permission_denied("no")),
            ExportOutcome::Rejected { .. }
        ));
    }

    #[test]
    fn an_endpoint_on_an_own_receiver_is_a_loop() {
        let own: Vec<SocketAddr> = vec![
            "127.0.0.1:4317".parse().unwrap(),
            "0.0.0.0:4318".parse().unwrap(),
        ];
        assert!(loops_back("http://127.0.0.1:4317", &own));
        assert!(loops_back("http://localhost:4318/v1/traces", &own));
        assert!(!loops_back("http://127.0.0.1:14317", &own));
        assert!(!loops_back("http://192.168.5.2:4317", &own));
        assert!(
            !loops_back("http://192.168.5.2:4318", &own),
            "another address is the host's, even with a receiver on 0.0.0.0"
        );
        assert!(!loops_back("not a url", &own));
    }

    #[test]
    fn http_urls_take_the_signal_path() {
        assert_eq!(
            http_url("http://h:4318", OtlpSignal::Logs),
            "http://h:4318/v1/logs"
        );
        assert_eq!(
            http_url("http://h:4318/v1/traces/", OtlpSignal::Metrics),
            "http://h:4318/v1/metrics"
        );
        assert_eq!(
            http_url("http://h/otlp/", OtlpSignal::Traces),
            "http://h/otlp/v1/traces"
        );
    }

    #[test]
    fn a_partial_success_is_delivered_with_its_rejected_count() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        let body = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            delivered(OtlpSignal::Traces, &body, false),
            ExportOutcome::Delivered {
                rejected: 3,
                message: "too old".into()
            }
        );
        let json = br#"{"partialSuccess":{"rejectedSpans":"2","errorMessage":"x"}}"#;
        assert!(matches!(
            delivered(OtlpSignal::Traces, json, true),
            ExportOutcome::Delivered { rejected: 2, .. }
        ));
        assert_eq!(
            delivered(OtlpSignal::Traces, b"", false),
            ExportOutcome::Delivered {
                rejected: 0,
                message: String::new()
            }
        );
    }
}
