//! OTLP/gRPC: the three export services, and the budget check that reads a
//! request's body before tonic decodes it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsService;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use super::budget::{read_body, BodyRefusal, Held};
use super::{encode_within, Oversize, Relay, MAX_REQUEST_BYTES};
use crate::listen::Peer;
use crate::record::{OtlpPayload, OtlpSignal};
use crate::relay::run::JoinRuns;

pub(super) fn timeout(limit: Duration) -> Response {
    tonic::Status::deadline_exceeded(format!(
        "the request was not received within {limit:?}: send it faster, or smaller"
    ))
    .into_http::<Body>()
}

/// The gRPC request's size on the wire, which its [`Held`] bytes already cover.
#[derive(Clone, Copy)]
struct WireBytes(usize);

impl Relay {
    /// Joins a run's spans and log records to its trace
    /// ([`crate::relay::run`]) and stores the request. `wire`: what the
    /// request's bytes on the wire took of the budget; the encoding takes only
    /// what it adds (a gzip request inflated, ids joined).
    async fn store_grpc<M: Message + JoinRuns>(
        &self,
        signal: OtlpSignal,
        wire: Option<WireBytes>,
        peer: Option<Arc<Peer>>,
        mut request: M,
    ) -> Result<(), tonic::Status> {
        request.join_runs();
        let mut held = Held::none();
        let had = wire.map_or(0, |w| w.0);
        let body = match encode_within(&request, had, MAX_REQUEST_BYTES, &mut |more| {
            self.budget.take(&mut held, more)
        }) {
            Ok(body) => body,
            Err(Oversize::Busy) => {
                self.refused();
                return Err(busy_status());
            }
            Err(e @ Oversize::TooLarge { .. }) => {
                self.invalid();
                return Err(tonic::Status::resource_exhausted(e.to_string()));
            }
        };
        drop(request);
        if body.is_empty() {
            return Ok(());
        }
        self.store(
            OtlpPayload {
                signal,
                body: body.into(),
            },
            peer.as_deref(),
        )
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot buffer the request: {e}")))?;
        drop(held);
        Ok(())
    }
}

#[tonic::async_trait]
impl TraceService for Relay {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let wire = request.extensions().get::<WireBytes>().copied();
        let peer = request.extensions().get::<Arc<Peer>>().cloned();
        self.store_grpc(OtlpSignal::Traces, wire, peer, request.into_inner())
            .await?;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Relay {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let wire = request.extensions().get::<WireBytes>().copied();
        let peer = request.extensions().get::<Arc<Peer>>().cloned();
        self.store_grpc(OtlpSignal::Metrics, wire, peer, request.into_inner())
            .await?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Relay {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let wire = request.extensions().get::<WireBytes>().copied();
        let peer = request.extensions().get::<Arc<Peer>>().cloned();
        self.store_grpc(OtlpSignal::Logs, wire, peer, request.into_inner())
            .await?;
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` of one second: the OTLP
/// specification's throttling answer, which exporters retry after the delay.
fn busy_status() -> tonic::Status {
    let retry = rpc::RetryInfo {
        retry_delay: Some(rpc::Duration {
            seconds: 1,
            nanos: 0,
        }),
    };
    let message = BodyRefusal::Busy.to_string();
    let details = rpc::Status {
        code: tonic::Code::ResourceExhausted as i32,
        message: message.clone(),
        details: vec![rpc::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: retry.encode_to_vec(),
        }],
    };
    tonic::Status::with_details(
        tonic::Code::ResourceExhausted,
        message,
        details.encode_to_vec().into(),
    )
}

/// The few `google.rpc` messages a throttling answer carries, by hand (as
/// `sink/loki/push_proto.rs`): no `protoc`, no extra crate.
mod rpc {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(message, repeated, tag = "3")]
        pub details: Vec<Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        pub retry_delay: Option<Duration>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

/// tonic answers a message it cannot decode (garbage, a nesting deeper than
/// prost's limit) `INTERNAL`, as gRPC's table says for a server's own parse
/// errors; for a receiver the fault is the sender's, and OTLP says
/// `INVALID_ARGUMENT`, which exporters do not retry. `None` for any other
/// answer.
fn undecodable(response: &Response) -> Option<tonic::Status> {
    let status = tonic::Status::from_header_map(response.headers())?;
    (status.code() == tonic::Code::Internal
        && status
            .message()
            .starts_with("failed to decode Protobuf message"))
    .then(|| {
        tonic::Status::invalid_argument(format!("cannot decode the request: {}", status.message()))
    })
}

/// Reads a gRPC request's body within the budget before tonic decodes it (tonic
/// would buffer each message whole, 16 MiB per stream, with no bound across
/// streams), and holds its bytes until the request is answered.
pub(super) async fn within_budget(
    State(relay): State<Relay>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let mut held = Held::none();
    // One message and its 5-byte frame header.
    let limit = MAX_REQUEST_BYTES + 5;
    let status = match read_body(body, None, limit, &relay.budget, &mut held).await {
        Ok(bytes) => {
            parts.extensions.insert(WireBytes(bytes.len()));
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            drop(held);
            return match undecodable(&response) {
                Some(status) => {
                    relay.invalid();
                    status.into_http::<Body>()
                }
                None => response,
            };
        }
        Err(BodyRefusal::Busy) => {
            relay.refused();
            busy_status()
        }
        Err(e @ BodyRefusal::TooLarge { .. }) => {
            relay.invalid();
            tonic::Status::resource_exhausted(e.to_string())
        }
        Err(e @ BodyRefusal::Read(_)) => tonic::Status::cancelled(e.to_string()),
    };
    status.into_http::<Body>()
}
