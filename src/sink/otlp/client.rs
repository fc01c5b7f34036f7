//! One OTLP export: gRPC through a pass-through codec, or OTLP/HTTP protobuf or
//! JSON, with the configured headers; the answer classified by the OTLP
//! specification's retry rules.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
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

use super::OtlpSinkSettings;
use crate::config::{redact_text, redact_url, OtlpProtocol};
use crate::http_client::{self, USER_AGENT};
use crate::record::OtlpSignal;
use crate::sink::retry::{Cause, Outcome, PushOutcome};

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OtlpClientError {
    /// The value is not shown: it may be a credential.
    #[error("otlp.headers: {name:?} is not a valid header name or its value holds characters not allowed in a header")]
    InvalidHeader { name: String },
    #[error("cannot build the otlp http client: {0}")]
    Build(reqwest::Error),
}

/// A collector's success answer (2xx, gRPC OK): the items it rejected in it
/// (a partial success) and its message, 0 and empty when it took all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Taken {
    pub rejected: i64,
    pub message: String,
}

/// What became of one export: taken, or what the shipper is to do with it.
pub(crate) type Exported = Result<Taken, Outcome>;

/// `exported` with any URL credentials in its messages redacted (tonic and
/// hyper errors may quote the endpoint as given).
pub(crate) fn redacted(exported: Exported) -> Exported {
    match exported {
        Ok(Taken { rejected, message }) => Ok(Taken {
            rejected,
            message: redact_text(&message),
        }),
        Err(Outcome::Retry {
            after,
            reason,
            maybe_stored,
        }) => Err(Outcome::Retry {
            after,
            reason: redact_text(&reason),
            maybe_stored,
        }),
        Err(Outcome::Rejected { cause, reason }) => Err(Outcome::Rejected {
            cause,
            reason: redact_text(&reason),
        }),
        Err(other) => Err(other),
    }
}

/// Sends exports with the configured protocol and headers.
pub struct OtlpClient {
    protocol: OtlpProtocol,
    http: reqwest::Client,
    metadata: tonic::metadata::MetadataMap,
    timeout: Duration,
    /// Logs exports carry [`super::LOGS_IN_LOKI_HEADER`].
    logs_in_loki: bool,
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
        let http = http_client::builder()
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
            logs_in_loki: settings.logs_in_loki,
            channel: None,
        })
    }

    /// Whether an export of `signal` carries [`super::LOGS_IN_LOKI_HEADER`].
    fn marks(&self, signal: OtlpSignal) -> bool {
        self.logs_in_loki && signal == OtlpSignal::Logs
    }

    /// Exports one signal's protobuf bytes to `endpoint` (the filled-in
    /// `otlp.endpoint`).
    pub(crate) async fn export(
        &mut self,
        endpoint: &str,
        signal: OtlpSignal,
        body: Bytes,
    ) -> Exported {
        match self.protocol {
            OtlpProtocol::Grpc => self.export_grpc(endpoint, signal, body).await,
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
                self.export_http(endpoint, signal, body).await
            }
        }
    }

    async fn export_grpc(&mut self, endpoint: &str, signal: OtlpSignal, body: Bytes) -> Exported {
        let channel = match &self.channel {
            Some((e, c)) if e == endpoint => c.clone(),
            _ => {
                let ep = match tonic::transport::Endpoint::from_shared(endpoint.to_string()) {
                    Ok(ep) => ep,
                    Err(e) => {
                        return Err(Outcome::retry(format!(
                            "otlp.endpoint {} is not a valid URL: {e}",
                            redact_url(endpoint)
                        )))
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
                        return Err(Outcome::retry(format!(
                            "cannot set up a channel to {}: {e}",
                            redact_url(endpoint)
                        )))
                    }
                }
            }
        };
        let mut grpc = tonic::client::Grpc::new(channel);
        if let Err(e) = grpc.ready().await {
            return Err(Outcome::retry(format!("cannot connect: {e}")));
        }
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        if self.marks(signal) {
            request.metadata_mut().insert(
                super::LOGS_IN_LOKI_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(signal.grpc_path());
        match grpc.unary(request, path, RawCodec).await {
            Ok(response) => delivered(signal, &response.into_inner(), false),
            Err(status) => Err(Outcome::from_grpc_status(&status)),
        }
    }

    async fn export_http(&mut self, endpoint: &str, signal: OtlpSignal, body: Bytes) -> Exported {
        let url = http_url(endpoint, signal);
        let json = self.protocol == OtlpProtocol::HttpJson;
        let (content_type, body) = if json {
            match to_json(signal, &body) {
                Ok(b) => ("application/json", Bytes::from(b)),
                Err(e) => {
                    return Err(Outcome::Rejected {
                        cause: Cause::Undecodable,
                        reason: format!("cannot convert a stored request to JSON: {e}"),
                    })
                }
            }
        } else {
            ("application/x-protobuf", body)
        };
        let mut post = self.http.post(&url).header(CONTENT_TYPE, content_type);
        if self.marks(signal) {
            post = post.header(super::LOGS_IN_LOKI_HEADER, "true");
        }
        let sent = post.body(body).send().await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                return Err(PushOutcome::from_transport_error(&e.without_url()).into_outcome(false))
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
            other => Err(other.into_outcome(false)),
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
pub(super) fn delivered(signal: OtlpSignal, body: &[u8], json: bool) -> Exported {
    let (rejected, message) = if json {
        json_partial_success(signal, body)
    } else {
        protobuf_partial_success(signal, body)
    }
    .unwrap_or_default();
    Ok(Taken { rejected, message })
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
