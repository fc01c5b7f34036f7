//! `GET /status`: the daemon's [`Status`] as JSON (`"version": 1`), built from
//! a reading of the same [`AgentMetrics`] `/metrics` renders, `/healthz`'s
//! verdict and the sinks' last errors ([`crate::status::build`]); and the same
//! status for the line `run` logs ([`snapshots`]).

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{Endpoint, Sources};
use crate::metric::AgentMetrics;
use crate::status::{self, Extras, Status};

pub(super) async fn serve(State(current): State<Arc<RwLock<Arc<Endpoint>>>>) -> Response {
    let endpoint = Endpoint::now(&current);
    let status = snapshot(&endpoint.sources, &endpoint.metrics);
    // A plain struct of numbers and strings always serialises.
    let body = serde_json::to_string_pretty(&status).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body + "\n").into_response()
}

/// The status now, from a reading of `metrics` and `sources`.
fn snapshot(sources: &Sources, metrics: &AgentMetrics) -> Status {
    let last = |m: &std::sync::Mutex<Option<String>>| m.lock().ok().and_then(|l| l.clone());
    let at = |millis: &std::sync::atomic::AtomicU64| {
        let ms = millis.load(std::sync::atomic::Ordering::Relaxed);
        (ms > 0).then(|| ms as f64 / 1e3)
    };
    let extras = Extras {
        problem: sources.problem(),
        loki_last_error: sources.logs.as_ref().and_then(|l| last(&l.loki.last_error)),
        loki_last_error_at: sources
            .logs
            .as_ref()
            .and_then(|l| at(&l.loki.last_error_unix_millis)),
        otlp_last_error: sources
            .relay
            .as_ref()
            .and_then(|r| last(&r.exporter.last_error)),
        otlp_last_error_at: sources
            .relay
            .as_ref()
            .and_then(|r| at(&r.exporter.last_error_unix_millis)),
        logs: sources.logs.is_some(),
        relay: sources.relay.is_some(),
    };
    status::build(&metrics.read(), &extras, SystemTime::now())
}

/// A status source for `run`'s periodic line, over the same readers (so it
/// works with the endpoint off).
pub fn snapshots(
    sources: Sources,
    metrics: AgentMetrics,
) -> impl Fn() -> Status + Send + Sync + 'static {
    move || snapshot(&sources, &metrics)
}
