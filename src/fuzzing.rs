//! The crate-private steps the OTLP fuzz target (`fuzz/fuzz_targets/otlp_json.rs`)
//! drives, each exactly as the receivers call it: the OTLP/HTTP body conversion
//! ([`crate::source::otlp::http`]), the run rewrite ([`crate::relay::run`]) and the
//! Loki conversion of a logs request ([`crate::relay::to_loki`]). Not an API:
//! hidden from the docs and used by `fuzz/` only. The other fuzz targets compile
//! the files they test straight in; these steps need too much of the agent.
//! Always compiled (not behind `cfg(fuzzing)`) so that clippy and the tests'
//! build keep it current.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::record::{LogRecord, OtlpSignal, Timestamp};
use crate::relay::run::JoinRuns;
use crate::relay::to_loki::{Converter, ToLokiSettings};
use crate::source::otlp::http::{to_protobuf, BodyEncoding};
use crate::source::otlp::MAX_REQUEST_BYTES;

/// What the OTLP/HTTP receiver stores for a `signal` body, JSON or protobuf,
/// whose content encoding is undone (the budget always has room), or why it
/// refuses the body.
pub fn otlp_http_body(signal: OtlpSignal, json: bool, body: &[u8]) -> Result<Bytes, String> {
    let encoding = if json {
        BodyEncoding::Json
    } else {
        BodyEncoding::Protobuf
    };
    let body = Bytes::copy_from_slice(body);
    to_protobuf(signal, encoding, body, MAX_REQUEST_BYTES, &mut |_| true)
        .map_err(|e| format!("{e:?}"))
}

/// The run rewrite of a traces request; whether it changed anything.
pub fn join_runs_traces(request: &mut ExportTraceServiceRequest) -> bool {
    request.join_runs()
}

/// The run rewrite of a logs request; whether it changed anything.
pub fn join_runs_logs(request: &mut ExportLogsServiceRequest) -> bool {
    request.join_runs()
}

/// The Loki conversion of logs requests, its `job` guard and label cache kept
/// from one request to the next as the receivers' is.
pub struct LokiConversion(Converter);

impl LokiConversion {
    pub fn new(settings: &ToLokiSettings) -> Self {
        Self(Converter::new(settings))
    }

    /// One entry per log record of `request`, sent by `uid` (`None`: a
    /// sender whose user cannot be told).
    pub fn convert(
        &mut self,
        request: &ExportLogsServiceRequest,
        received: Timestamp,
        uid: Option<u32>,
    ) -> Vec<LogRecord> {
        self.0.convert(request, received, uid)
    }
}
