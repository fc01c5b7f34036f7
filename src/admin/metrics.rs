//! `/metrics`: one `prometheus-client` collector writes a reading of
//! [`AgentMetrics`] (the readers the stages registered) at each scrape, in
//! the Prometheus text format 0.0.4
//! (`# TYPE wisp_loki_retries_total counter`).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::metric::{write, AgentMetrics};

/// The content type of the text exposition format 0.0.4.
pub(super) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The page's collector: one reading of [`AgentMetrics`], written out.
#[derive(Debug)]
struct Scrape(AgentMetrics);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        write(&mut encoder, &self.0.read())
    }
}

/// The registry of the page: one collector over `metrics`.
pub(super) fn registry(metrics: AgentMetrics) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(Scrape(metrics)));
    r
}

/// The whole `/metrics` page.
pub(super) fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, registry).is_err() {
        // Only a collector can fail, and ours do not: serve what was written.
        tracing::warn!("/metrics: a collector failed; the page is incomplete");
    }
    out
}
