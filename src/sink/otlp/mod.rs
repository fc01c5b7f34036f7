//! The OTLP exporter: the OTLP collector on the host discovery chose
//! (`otlp.endpoint`, `otlp.protocol`, `otlp.headers`) as the shipper's
//! [`Service`] ([`crate::sink::ship`]), which drains the OTLP spool into it and
//! acknowledges once the collector took the data. [`client`] sends one export.
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
//! - **Logs in Loki are marked.** With `otlp.logs_to_loki` in effect, every logs
//!   export carries [`LOGS_IN_LOKI_HEADER`]`: true` (HTTP header, gRPC
//!   metadata); other exports, and all exports without it, carry no such header.
//! - **Partial success** (the collector took some items and rejected others) is
//!   delivered; the rejected items are counted per signal and the collector's
//!   message logged once per signal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::config::{OtlpConfig, OtlpProtocol};
use crate::event::Repeated;
use crate::metric::{by, counter, encode, gauge, load, names, one, single, Family, Registry};
use crate::record::{OtlpPayload, OtlpSignal};
use crate::sink::ship::{BatchLimits, Cause, Event, Outcome, Service, ShipSettings, Wording};

pub mod client;

pub(crate) use client::loops_back;
use client::{redacted, Taken};
pub use client::{OtlpClient, OtlpClientError};

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
    /// The logs this exporter sends are in Loki too (`otlp.logs_to_loki`):
    /// logs exports carry [`LOGS_IN_LOKI_HEADER`]`: true`.
    pub logs_in_loki: bool,
}

/// The header (gRPC metadata) on logs exports whose records the agent also
/// stored for Loki, so a collector can keep them from its own Loki exporter.
pub const LOGS_IN_LOKI_HEADER: &str = "x-wisp-logs-in-loki";

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
            logs_in_loki: false,
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
    /// When the collector last took an export, in milliseconds since the Unix
    /// epoch; 0 until the first one.
    pub last_export_unix_millis: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// When `last_error` was set, in milliseconds since the Unix epoch; 0 before.
    pub last_error_unix_millis: AtomicU64,
}

impl OtlpCounters {
    /// Registers the exporter's families ([`OtlpCounters::FAMILIES`]).
    pub fn register(self: Arc<Self>, metrics: &mut Registry) {
        metrics.add("otlp_exporter", names(Self::FAMILIES), move |out| {
            encode(out, Self::FAMILIES, &single(self.as_ref()))
        });
    }

    /// The exporter's metric families: the one place their names and help live.
    pub(crate) const FAMILIES: &'static [Family<OtlpCounters>] = &[
        counter("wisp_otlp_requests_shipped_total", "Received OTLP requests the collector took (several may travel in one export).", |c| one(load(&c.requests_shipped))),
        counter("wisp_otlp_exports_total", "Exports the collector took.", |c| one(load(&c.exports))),
        counter("wisp_otlp_bytes_shipped_total", "Bytes of buffered OTLP requests the collector took.", |c| one(load(&c.bytes_shipped))),
        counter("wisp_otlp_retries_total", "Exports retried (UNAVAILABLE, 429, 5xx, timeouts, connection errors).", |c| one(load(&c.retries))),
        gauge("wisp_otlp_last_export_timestamp_seconds", "When the collector last took an export, in seconds since the Unix epoch; 0 until the first.", |c| one(load(&c.last_export_unix_millis) as f64 / 1e3)),
        counter("wisp_otlp_requests_dropped_total", "Received OTLP requests dropped because the collector refused them for good, by cause.", |c| by("reason", &c.requests_dropped)),
        counter("wisp_otlp_items_rejected_total", "Spans, data points or log records the collector rejected in a partial success, by signal.", |c| by("signal", &c.items_rejected)),
    ];

    fn set_last_error(&self, e: &str) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_string());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_error_unix_millis.store(now, Ordering::Relaxed);
    }
}

impl OtlpSinkSettings {
    /// How the shipper batches and paces exports.
    pub fn ship_settings(&self) -> ShipSettings {
        ShipSettings {
            url: self.endpoint.clone(),
            batch: BatchLimits {
                max_records: READ_MAX_REQUESTS,
                max_bytes: EXPORT_MAX_BYTES,
                max_wait: Duration::ZERO,
            },
            max_backoff: self.max_backoff,
        }
    }
}

/// One export: consecutive requests of one signal, concatenated.
pub struct Export {
    signal: OtlpSignal,
    body: Bytes,
    requests: u64,
}

/// Groups requests in order into runs of one signal each, at most
/// [`EXPORT_MAX_BYTES`] (a larger request alone): each run is one export.
fn split(records: Vec<OtlpPayload>) -> Vec<Vec<OtlpPayload>> {
    let mut out: Vec<(usize, Vec<OtlpPayload>)> = Vec::new();
    for r in records {
        match out.last_mut() {
            Some((bytes, run))
                if run[0].signal == r.signal && *bytes + r.body.len() <= EXPORT_MAX_BYTES =>
            {
                *bytes += r.body.len();
                run.push(r);
            }
            _ => out.push((r.body.len(), vec![r])),
        }
    }
    out.into_iter().map(|(_, run)| run).collect()
}

/// The collector as the shipper's [`Service`].
pub struct OtlpService {
    pub client: OtlpClient,
    /// The agent's own receivers, as bound: exporting to one would loop.
    pub own_receivers: Vec<SocketAddr>,
    pub counters: Arc<OtlpCounters>,
    /// The loop to an own receiver, logged once.
    warnings: Repeated,
    /// Exports refused for good, logged once per cause.
    rejections: Repeated<Cause>,
}

/// `requests_dropped`'s label for a cause: `http_400`, `grpc_invalid_argument`.
fn label(cause: Cause) -> String {
    match cause {
        Cause::Status(status) => format!("http_{status}"),
        other => other.to_string(),
    }
}

impl OtlpService {
    pub fn new(
        client: OtlpClient,
        settings: &OtlpSinkSettings,
        counters: Arc<OtlpCounters>,
    ) -> Self {
        Self {
            client,
            own_receivers: settings.own_receivers.clone(),
            counters,
            warnings: Repeated::once(),
            rejections: Repeated::once(),
        }
    }
}

impl Service for OtlpService {
    type Record = OtlpPayload;
    type Request = Export;

    const WORDING: Wording = Wording {
        name: "the otlp collector",
        sending: "otlp export to",
        request: "export",
        requests: "exports",
        waiting: "data waits",
        spool: "the otlp spool",
    };

    fn split(&self, records: Vec<OtlpPayload>) -> Vec<Vec<OtlpPayload>> {
        split(records)
    }

    fn encode(&self, records: &[OtlpPayload]) -> Option<Export> {
        let first = records.first()?;
        let mut body = BytesMut::with_capacity(records.iter().map(|r| r.body.len()).sum());
        for r in records {
            body.extend_from_slice(&r.body);
        }
        Some(Export {
            signal: first.signal,
            body: body.freeze(),
            requests: records.len() as u64,
        })
    }

    async fn send(&mut self, endpoint: &str, export: &Export) -> Outcome {
        let outcome = if loops_back(endpoint, &self.own_receivers) {
            // Only known once `{host}` is filled in (the configuration check
            // catches literal loops): keep the data, say what to change.
            let reason = format!(
                "otlp.endpoint {} is the agent's own OTLP receiver (a loop); \
                 point otlp.endpoint at the host's collector, or move receiver.grpc / receiver.http",
                crate::config::redact_url(endpoint)
            );
            self.warnings
                .error("loop", || format!("{reason}; data waits in the buffer"));
            Err(Outcome::retry(reason))
        } else {
            self.client
                .export(endpoint, export.signal, export.body.clone())
                .await
        };
        // What the logs and the admin endpoint show: a password quoted by
        // tonic/hyper in an error never is.
        match redacted(outcome) {
            Ok(Taken { rejected, message }) => {
                if rejected > 0 {
                    if let Ok(mut m) = self.counters.items_rejected.lock() {
                        *m.entry(export.signal.as_str()).or_default() += rejected as u64;
                    }
                }
                let note = (rejected > 0).then(|| {
                    (
                        format!("partial {}", export.signal.as_str()),
                        format!(
                            "the otlp collector at {} rejected {rejected} {} item(s) of an export \
                             (partial success); further rejections are only counted: {message}",
                            crate::config::redact_url(endpoint),
                            export.signal.as_str()
                        ),
                    )
                });
                Outcome::Delivered { note }
            }
            Err(outcome) => outcome,
        }
    }

    fn count(&self, event: Event<'_, Export>) {
        let c = &self.counters;
        match event {
            Event::Delivered { request, .. } => {
                c.exports.fetch_add(1, Ordering::Relaxed);
                c.requests_shipped
                    .fetch_add(request.requests, Ordering::Relaxed);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                c.last_export_unix_millis.store(now, Ordering::Relaxed);
            }
            Event::Rejected {
                request,
                cause,
                reason,
                shown,
            } => {
                let label = label(cause);
                if let Ok(mut m) = c.requests_dropped.lock() {
                    *m.entry(label.clone()).or_default() += request.requests;
                }
                c.set_last_error(reason);
                self.rejections.warn(cause, || {
                    format!(
                        "the otlp collector at {shown} refused {} {} request(s) ({label}); \
                         dropping them, further refusals for this cause are only counted: {reason}",
                        request.requests,
                        request.signal.as_str()
                    )
                });
            }
            Event::Retried { reason } => {
                c.retries.fetch_add(1, Ordering::Relaxed);
                c.set_last_error(reason);
            }
            Event::Acknowledged { bytes } => {
                c.bytes_shipped.fetch_add(bytes, Ordering::Relaxed);
            }
            Event::SpoolError { error } => c.set_last_error(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::{delivered, http_url};
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

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
        let service = OtlpService::new(
            OtlpClient::new(&OtlpSinkSettings::from_config(&OtlpConfig::default())).unwrap(),
            &OtlpSinkSettings::from_config(&OtlpConfig::default()),
            Arc::default(),
        );
        let exports: Vec<Export> = split(records)
            .iter()
            .map(|run| service.encode(run).unwrap())
            .collect();
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
                    Outcome::from_grpc_status(&Status::new(code, "x")),
                    Outcome::Retry { .. }
                ),
                "{code:?}"
            );
        }
        match Outcome::from_grpc_status(&Status::invalid_argument("bad")) {
            Outcome::Rejected { cause, .. } => {
                assert_eq!(label(cause), "grpc_invalid_argument")
            }
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            Outcome::from_grpc_status(&Status::permission_denied("no")),
            Outcome::Rejected { .. }
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
            Ok(Taken {
                rejected: 3,
                message: "too old".into()
            })
        );
        let json = br#"{"partialSuccess":{"rejectedSpans":"2","errorMessage":"x"}}"#;
        assert!(matches!(
            delivered(OtlpSignal::Traces, json, true),
            Ok(Taken { rejected: 2, .. })
        ));
        assert_eq!(
            delivered(OtlpSignal::Traces, b"", false),
            Ok(Taken {
                rejected: 0,
                message: String::new()
            })
        );
    }
}
