//! A fake OpenTelemetry collector on 127.0.0.1: OTLP/gRPC (the tonic services of
//! `opentelemetry-proto`) on one port, OTLP/HTTP on another (`POST /v1/logs`,
//! `/v1/traces`, `/v1/metrics`, bodies in `application/x-protobuf` or
//! `application/json` as the OTLP/HTTP spec writes them, answered in the same
//! encoding). Stores every export request; accessors flatten them into logs,
//! spans and metrics tagged with their resource's `service.name`.
//!
//! Fault injection: [`OtlpReceiver::fail_next`] and [`OtlpReceiver::set_unavailable`]
//! make exports fail with gRPC `UNAVAILABLE` or HTTP 503 (with `Retry-After: 1`),
//! as a collector whose pipeline is full does; both are retryable per the OTLP
//! spec; [`OtlpReceiver::reject_next`] refuses exports for good (gRPC
//! `INVALID_ARGUMENT`, HTTP 400). [`OtlpReceiver::stop`] / [`OtlpReceiver::restart`] take both ports away
//! and bring them back, keeping what was stored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A log record as the collector got it.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenLog {
    pub service_name: String,
    pub resource: BTreeMap<String, String>,
    pub time_unix_nano: u64,
    pub observed_time_unix_nano: u64,
    pub severity_number: i32,
    pub severity_text: String,
    /// The body as text (a string body as it is, anything else rendered).
    pub body: String,
    pub attributes: BTreeMap<String, String>,
    /// Lower-case hex; empty when absent.
    pub trace_id: String,
    pub span_id: String,
}

/// A span as the collector got it.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenSpan {
    pub service_name: String,
    pub resource: BTreeMap<String, String>,
    pub scope: String,
    pub name: String,
    /// Lower-case hex.
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: BTreeMap<String, String>,
    /// `status.code`: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
}

/// A metric as the collector got it.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenMetric {
    pub service_name: String,
    pub resource: BTreeMap<String, String>,
    pub name: String,
    pub unit: String,
    /// `gauge`, `sum`, `histogram`, `exponential_histogram`, `summary` or `empty`.
    pub kind: &'static str,
    pub data_points: usize,
}

/// Which way an export came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

#[derive(Default)]
struct Inner {
    logs: Vec<ExportLogsServiceRequest>,
    /// The headers (gRPC metadata) of each logs export, as `logs`.
    log_headers: Vec<HeaderMap>,
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    exports: usize,
    fail_next: usize,
    reject_next: usize,
    unavailable: bool,
    last_headers: HeaderMap,
    transports: Vec<Transport>,
}

/// What an arriving export is answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// gRPC `UNAVAILABLE` / HTTP 503: retryable.
    Unavailable,
    /// gRPC `INVALID_ARGUMENT` / HTTP 400: permanent.
    Reject,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an export and says whether it is to fail.
    fn arrive(&self, headers: HeaderMap, transport: Transport) -> Fault {
        let mut inner = self.lock();
        inner.exports += 1;
        inner.last_headers = headers;
        inner.transports.push(transport);
        if inner.reject_next > 0 {
            inner.reject_next -= 1;
            return Fault::Reject;
        }
        if inner.fail_next > 0 {
            inner.fail_next -= 1;
            return Fault::Unavailable;
        }
        if inner.unavailable {
            Fault::Unavailable
        } else {
            Fault::None
        }
    }

    fn stored(&self) {
        self.changed.notify_waiters();
    }
}

pub struct OtlpReceiver {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    shared: Arc<Shared>,
    servers: Mutex<Vec<JoinHandle<()>>>,
}

impl OtlpReceiver {
    /// Starts both listeners on 127.0.0.1, each on a free port.
    pub async fn start() -> Self {
        let grpc = super::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind otlp grpc");
        let http = super::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind otlp http");
        Self::serve_on(grpc, http)
    }

    /// Starts on listeners the test bound (a collector's usual ports, 4317
    /// and 4318); [`restart`](Self::restart) binds their addresses again.
    pub fn start_on(grpc: std::net::TcpListener, http: std::net::TcpListener) -> Self {
        let tokio_listener = |l: std::net::TcpListener| {
            l.set_nonblocking(true).expect("a nonblocking listener");
            tokio::net::TcpListener::from_std(l).expect("a tokio listener")
        };
        Self::serve_on(tokio_listener(grpc), tokio_listener(http))
    }

    fn serve_on(grpc: tokio::net::TcpListener, http: tokio::net::TcpListener) -> Self {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
        });
        let grpc_addr = grpc.local_addr().unwrap();
        let http_addr = http.local_addr().unwrap();
        let servers = vec![
            super::serve(grpc, grpc_router(&shared)),
            super::serve(http, http_router(&shared)),
        ];
        OtlpReceiver {
            grpc_addr,
            http_addr,
            shared,
            servers: Mutex::new(servers),
        }
    }

    /// Closes both ports and every open connection: new connections are refused.
    pub async fn stop(&self) {
        let servers: Vec<_> = std::mem::take(&mut *self.servers.lock().unwrap());
        for s in servers {
            s.abort();
            let _ = s.await;
        }
    }

    /// Listens again on the same ports, with what was stored before.
    pub async fn restart(&self) {
        self.stop().await;
        let grpc = super::bind(self.grpc_addr).await.expect("rebind otlp grpc");
        let http = super::bind(self.http_addr).await.expect("rebind otlp http");
        *self.servers.lock().unwrap() = vec![
            super::serve(grpc, grpc_router(&self.shared)),
            super::serve(http, http_router(&self.shared)),
        ];
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// `http://127.0.0.1:PORT` of the gRPC listener (an OTLP gRPC endpoint).
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://127.0.0.1:PORT` of the HTTP listener (the base an OTLP/HTTP
    /// exporter appends `/v1/logs` and the like to).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The next `n` exports fail (gRPC `UNAVAILABLE`, HTTP 503) and store nothing.
    pub fn fail_next(&self, n: usize) {
        self.shared.lock().fail_next += n;
    }

    /// The next `n` exports are refused for good (gRPC `INVALID_ARGUMENT`, HTTP
    /// 400) and store nothing.
    pub fn reject_next(&self, n: usize) {
        self.shared.lock().reject_next += n;
    }

    /// Every export fails until set back to false.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.lock().unavailable = unavailable;
    }

    /// Export requests received, failed ones included.
    pub fn exports(&self) -> usize {
        self.shared.lock().exports
    }

    /// How each export came in, in order.
    pub fn transports(&self) -> Vec<Transport> {
        self.shared.lock().transports.clone()
    }

    /// Headers (gRPC metadata) of the last export.
    pub fn last_headers(&self) -> HeaderMap {
        self.shared.lock().last_headers.clone()
    }

    /// The headers (gRPC metadata) of each logs export taken, in order.
    pub fn log_export_headers(&self) -> Vec<HeaderMap> {
        self.shared.lock().log_headers.clone()
    }

    pub fn log_requests(&self) -> Vec<ExportLogsServiceRequest> {
        self.shared.lock().logs.clone()
    }

    pub fn trace_requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.shared.lock().traces.clone()
    }

    pub fn metric_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.shared.lock().metrics.clone()
    }

    /// Every log record received, in arrival order.
    pub fn logs(&self) -> Vec<SeenLog> {
        flatten_logs(&self.shared.lock().logs)
    }

    /// Every span received, in arrival order.
    pub fn spans(&self) -> Vec<SeenSpan> {
        flatten_spans(&self.shared.lock().traces)
    }

    /// Every metric received, in arrival order.
    pub fn metrics(&self) -> Vec<SeenMetric> {
        flatten_metrics(&self.shared.lock().metrics)
    }

    /// Waits until at least `n` log records arrived; false on timeout.
    pub async fn wait_for_logs(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |i| count_logs(&i.logs) >= n).await
    }

    /// Waits until at least `n` spans arrived; false on timeout.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |i| count_spans(&i.traces) >= n)
            .await
    }

    /// Waits until at least `n` metrics arrived; false on timeout.
    pub async fn wait_for_metrics(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |i| flatten_metrics(&i.metrics).len() >= n)
            .await
    }

    /// Waits until at least `n` export requests arrived; false on timeout.
    pub async fn wait_for_exports(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |i| i.exports >= n).await
    }

    async fn wait_for(&self, timeout: Duration, cond: impl Fn(&Inner) -> bool) -> bool {
        super::wait_notified(&self.shared.changed, timeout, || cond(&self.shared.lock())).await
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Ok(servers) = self.servers.lock() {
            for s in servers.iter() {
                s.abort();
            }
        }
    }
}

fn grpc_router(shared: &Arc<Shared>) -> Router {
    let collector = Collector(shared.clone());
    tonic::service::Routes::new(LogsServiceServer::new(collector.clone()))
        .add_service(TraceServiceServer::new(collector.clone()))
        .add_service(MetricsServiceServer::new(collector))
        .into_axum_router()
}

fn http_router(shared: &Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/logs", post(http_logs))
        .route("/v1/traces", post(http_traces))
        .route("/v1/metrics", post(http_metrics))
        .with_state(shared.clone())
}

#[derive(Clone)]
struct Collector(Arc<Shared>);

impl Collector {
    fn arrive<T>(&self, request: &tonic::Request<T>) -> Result<(), tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        match self.0.arrive(headers, Transport::Grpc) {
            Fault::None => Ok(()),
            Fault::Unavailable => Err(tonic::Status::unavailable("injected failure")),
            Fault::Reject => {
                self.0.stored();
                Err(tonic::Status::invalid_argument("injected rejection"))
            }
        }
    }
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.arrive(&request)?;
        let mut inner = self.0.lock();
        let headers = inner.last_headers.clone();
        inner.log_headers.push(headers);
        inner.logs.push(request.into_inner());
        drop(inner);
        self.0.stored();
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.arrive(&request)?;
        self.0.lock().traces.push(request.into_inner());
        self.0.stored();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.arrive(&request)?;
        self.0.lock().metrics.push(request.into_inner());
        self.0.stored();
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn http_logs(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    http_export::<ExportLogsServiceRequest, ExportLogsServiceResponse>(
        &s,
        headers,
        &body,
        |i, r| {
            let headers = i.last_headers.clone();
            i.log_headers.push(headers);
            i.logs.push(r)
        },
    )
}

async fn http_traces(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    http_export::<ExportTraceServiceRequest, ExportTraceServiceResponse>(
        &s,
        headers,
        &body,
        |i, r| i.traces.push(r),
    )
}

async fn http_metrics(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    http_export::<ExportMetricsServiceRequest, ExportMetricsServiceResponse>(
        &s,
        headers,
        &body,
        |i, r| i.metrics.push(r),
    )
}

/// One OTLP/HTTP export: decode in the request's encoding, store, answer the
/// empty (full success) response in the same encoding.
fn http_export<Req, Resp>(
    shared: &Shared,
    headers: HeaderMap,
    body: &[u8],
    store: impl FnOnce(&mut Inner, Req),
) -> Response
where
    Req: Message + Default + serde::de::DeserializeOwned,
    Resp: Message + Default,
{
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (transport, decoded) = if content_type.starts_with("application/x-protobuf") {
        (
            Transport::HttpProtobuf,
            Req::decode(body).map_err(|e| e.to_string()),
        )
    } else if content_type.starts_with("application/json") {
        (
            Transport::HttpJson,
            serde_json::from_slice::<Req>(body).map_err(|e| e.to_string()),
        )
    } else {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Type {content_type:?}"),
        )
            .into_response();
    };
    let fault = shared.arrive(headers, transport);
    if fault == Fault::Reject {
        shared.stored();
        return (StatusCode::BAD_REQUEST, "injected rejection").into_response();
    }
    if fault == Fault::Unavailable {
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, "injected failure").into_response();
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        shared.stored();
        return r;
    }
    let request = match decoded {
        Ok(r) => r,
        Err(e) => {
            shared.stored();
            return (
                StatusCode::BAD_REQUEST,
                format!("cannot decode export: {e}"),
            )
                .into_response();
        }
    };
    store(&mut shared.lock(), request);
    shared.stored();
    match transport {
        Transport::HttpJson => (
            [("content-type", "application/json")],
            // The default response (full success) has no fields set.
            "{}",
        )
            .into_response(),
        _ => (
            [("content-type", "application/x-protobuf")],
            Resp::default().encode_to_vec(),
        )
            .into_response(),
    }
}

/// An attribute value as text: strings as they are, the rest rendered.
pub fn any_value_text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(other) => format!("{other:?}"),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any_value_text(kv.value.as_ref())))
        .collect()
}

fn resource_attributes(r: Option<&Resource>) -> BTreeMap<String, String> {
    r.map(|r| attributes(&r.attributes)).unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn count_logs(reqs: &[ExportLogsServiceRequest]) -> usize {
    reqs.iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum()
}

fn count_spans(reqs: &[ExportTraceServiceRequest]) -> usize {
    reqs.iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

fn flatten_logs(reqs: &[ExportLogsServiceRequest]) -> Vec<SeenLog> {
    let mut out = Vec::new();
    for rl in reqs.iter().flat_map(|r| &r.resource_logs) {
        let resource = resource_attributes(rl.resource.as_ref());
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for lr in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
            out.push(SeenLog {
                service_name: service_name.clone(),
                resource: resource.clone(),
                time_unix_nano: lr.time_unix_nano,
                observed_time_unix_nano: lr.observed_time_unix_nano,
                severity_number: lr.severity_number,
                severity_text: lr.severity_text.clone(),
                body: any_value_text(lr.body.as_ref()),
                attributes: attributes(&lr.attributes),
                trace_id: hex(&lr.trace_id),
                span_id: hex(&lr.span_id),
            });
        }
    }
    out
}

fn flatten_spans(reqs: &[ExportTraceServiceRequest]) -> Vec<SeenSpan> {
    let mut out = Vec::new();
    for rs in reqs.iter().flat_map(|r| &r.resource_spans) {
        let resource = resource_attributes(rs.resource.as_ref());
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for ss in &rs.scope_spans {
            let scope = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for span in &ss.spans {
                out.push(SeenSpan {
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                    scope: scope.clone(),
                    name: span.name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                    attributes: attributes(&span.attributes),
                    status_code: span.status.as_ref().map(|s| s.code).unwrap_or(0),
                    status_message: span
                        .status
                        .as_ref()
                        .map(|s| s.message.clone())
                        .unwrap_or_default(),
                });
            }
        }
    }
    out
}

fn flatten_metrics(reqs: &[ExportMetricsServiceRequest]) -> Vec<SeenMetric> {
    let mut out = Vec::new();
    for rm in reqs.iter().flat_map(|r| &r.resource_metrics) {
        let resource = resource_attributes(rm.resource.as_ref());
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
            let (kind, data_points) = match &m.data {
                Some(metric::Data::Gauge(g)) => ("gauge", g.data_points.len()),
                Some(metric::Data::Sum(s)) => ("sum", s.data_points.len()),
                Some(metric::Data::Histogram(h)) => ("histogram", h.data_points.len()),
                Some(metric::Data::ExponentialHistogram(h)) => {
                    ("exponential_histogram", h.data_points.len())
                }
                Some(metric::Data::Summary(s)) => ("summary", s.data_points.len()),
                None => ("empty", 0),
            };
            out.push(SeenMetric {
                service_name: service_name.clone(),
                resource: resource.clone(),
                name: m.name.clone(),
                unit: m.unit.clone(),
                kind,
                data_points,
            });
        }
    }
    out
}
