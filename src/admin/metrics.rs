//! `/metrics`: [`AgentMetrics`], a reader per stage, built once at start,
//! reads the stages' counters into the families each stage declares
//! ([`super::family`]); one `prometheus-client` collector writes a reading
//! at each scrape in the Prometheus text format 0.0.4
//! (`# TYPE wisp_loki_retries_total counter`), and the host-metrics task
//! pushes the same readings over OTLP.
//!
//! Declared here, because no stage owns them: build and host info, the
//! spools' bound (a setting, served beside each spool's counters), and the
//! process metrics read from `/proc`.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::family::{
    counter, encode, gauge, labelled, maybe, one, single, write, Family, Kind, Reading,
};
use super::{process_metrics, Proc, ProcessStats, Sources};
use crate::discovery::Chosen;
use crate::listen::ListenerCounters;
use crate::parse::ParseCountersSnapshot;
use crate::sink::loki::LokiCounters;
use crate::sink::otlp::OtlpCounters;
use crate::source::exec::metrics::ExecCounters;
use crate::source::file::TailStats;
use crate::source::otlp::ReceiverCounters;
use crate::spool::SpoolCountersSnapshot;

/// The content type of the text exposition format 0.0.4.
pub(super) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The agent's build and the host discovery chose.
const HOST: &[Family<Option<Chosen>>] = &[
    gauge("wisp_build_info", "The agent's version, as a label; always 1.", |_| {
        vec![labelled([("version", env!("CARGO_PKG_VERSION").into())], 1)]
    }),
    gauge(
        "wisp_host_chosen",
        "1 while discovery has a host to ship to, 0 while no candidate answered yet.",
        |c| one(u64::from(c.is_some())),
    ),
    gauge(
        "wisp_host_info",
        "The host discovery chose: the candidate as configured and its address; always 1, absent while none answers.",
        |c| {
            c.iter()
                .map(|c| {
                    labelled(
                        // A candidate is a name or an address as configured; should
                        // one be written as a URL with credentials, they stay out
                        // of the scrape.
                        [
                            ("candidate", crate::config::redact_text(&c.name).into()),
                            ("host", c.address.to_string().into()),
                        ],
                        1,
                    )
                })
                .collect()
        },
    ),
];

/// A spool's bound, served after `wisp_spool_bytes_buffered`.
const SPOOL_MAX_BYTES: &[Family<u64>] = &[gauge(
    "wisp_spool_max_bytes",
    "The buffer's bound, its share of buffer.max_bytes; past it the oldest data of the owner holding the most is dropped.",
    |max| one(*max),
)];

/// The process's own figures, as the Prometheus clients name them.
const PROCESS: &[Family<ProcessStats>] = &[
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        |p| maybe(p.resident_memory_bytes),
    ),
    gauge(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        |p| maybe(p.virtual_memory_bytes),
    ),
    counter(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        |p| maybe(p.cpu_seconds),
    ),
    gauge(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch in seconds.",
        |p| maybe(p.start_time_seconds),
    ),
    gauge(
        "process_open_fds",
        "Number of open file descriptors.",
        |p| maybe(p.open_fds),
    ),
    gauge(
        "process_max_fds",
        "Maximum number of open file descriptors (the soft limit).",
        |p| maybe(p.max_fds),
    ),
];

/// Where `wisp_spool_max_bytes` goes among the spool families.
fn spool_split() -> usize {
    SpoolCountersSnapshot::FAMILIES
        .iter()
        .position(|f| f.name == "wisp_spool_bytes_buffered")
        .map_or(0, |i| i + 1)
}

/// Every family the endpoint can serve, with its type, in the order served:
/// the same tables the collectors encode, so the reference can be checked
/// against it.
pub fn families() -> Vec<(&'static str, &'static str)> {
    fn of<T>(f: &[Family<T>]) -> impl Iterator<Item = (&'static str, Kind)> + '_ {
        f.iter().map(|f| (f.name, f.kind))
    }
    let (spool_a, spool_b) = SpoolCountersSnapshot::FAMILIES.split_at(spool_split());
    of(HOST)
        .chain(of(TailStats::FAMILIES))
        .chain(of(ParseCountersSnapshot::FAMILIES))
        .chain(of(spool_a))
        .chain(of(SPOOL_MAX_BYTES))
        .chain(of(spool_b))
        .chain(of(LokiCounters::FAMILIES))
        .chain(of(ReceiverCounters::FAMILIES))
        .chain(of(OtlpCounters::FAMILIES))
        .chain(of(ListenerCounters::FAMILIES))
        .chain(of(ExecCounters::FAMILIES))
        .chain(of(PROCESS))
        .map(|(name, kind)| (name, kind.as_str()))
        .collect()
}

/// A reader of one stage's families, run at each reading.
type Read = Box<dyn Fn(&mut Vec<Reading>) -> fmt::Result + Send + Sync>;

/// The readers of every stage present, in the order served; `.0` names each
/// in debug output.
#[derive(Default)]
pub(super) struct Readers(Vec<(&'static str, Read)>);

impl fmt::Debug for Readers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

fn collect<F>(readers: &mut Readers, name: &'static str, f: F)
where
    F: Fn(&mut Vec<Reading>) -> fmt::Result + Send + Sync + 'static,
{
    readers.0.push((name, Box::new(f)));
}

/// Every family the agent serves, read from the stages' counters at each
/// [`AgentMetrics::read`]: what `/metrics` renders and what the host-metrics
/// task pushes over OTLP (`[host_metrics] agent_metrics`), one reading code
/// for both. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AgentMetrics(Arc<Readers>);

impl AgentMetrics {
    /// The families of `sources` (and of the admin endpoint's own
    /// connections, when it runs), with `/proc` read from the real one.
    pub fn new(sources: &Sources, admin: Option<Arc<ListenerCounters>>) -> Self {
        Self::with_proc(sources, admin, Box::new(super::ProcFs))
    }

    pub(super) fn with_proc(
        sources: &Sources,
        admin: Option<Arc<ListenerCounters>>,
        proc: Box<dyn Proc>,
    ) -> Self {
        AgentMetrics(Arc::new(readers(sources, admin, proc)))
    }

    /// Every family's samples now, in the order served; families without
    /// samples are left out.
    pub fn read(&self) -> Vec<Reading> {
        let mut out = Vec::new();
        for (name, read) in &self.0 .0 {
            // Our readers do not fail; should one, the others still count.
            if read(&mut out).is_err() {
                tracing::warn!("metrics: the {name} reader failed; its families are incomplete");
            }
        }
        out
    }
}

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

/// A reader per stage present (either pipeline may be off), each holding the
/// stage's shared counters. `admin` is the endpoint's own connection counts.
fn readers(s: &Sources, admin: Option<Arc<ListenerCounters>>, proc: Box<dyn Proc>) -> Readers {
    let mut r = Readers::default();
    let host = s.host.clone();
    collect(&mut r, "host", move |e| {
        let chosen = host.borrow().clone();
        encode(e, HOST, &single(&chosen))
    });
    if let Some(logs) = &s.logs {
        let (tail, parse) = (logs.tail.clone(), logs.parse.clone());
        collect(&mut r, "tail and parse", move |e| {
            encode(e, TailStats::FAMILIES, &single(&tail.snapshot()))?;
            encode(
                e,
                ParseCountersSnapshot::FAMILIES,
                &single(&parse.snapshot()),
            )
        });
    }
    // Both spools in one collector, so each family is described once.
    let mut spools = Vec::new();
    if let Some(logs) = &s.logs {
        spools.push(("loki", logs.spool.clone(), logs.spool_max_bytes));
    }
    if let Some(relay) = &s.relay {
        spools.push(("otlp", relay.spool.clone(), relay.spool_max_bytes));
    }
    if !spools.is_empty() {
        collect(&mut r, "spools", move |e| {
            let snapshots: Vec<_> = spools.iter().map(|(_, c, _)| c.snapshot()).collect();
            let counters: Vec<_> = spools
                .iter()
                .zip(&snapshots)
                .map(|((name, _, _), snap)| (vec![("spool", (*name).into())], snap))
                .collect();
            let bounds: Vec<_> = spools
                .iter()
                .map(|(name, _, max)| (vec![("spool", (*name).into())], max))
                .collect();
            let (a, b) = SpoolCountersSnapshot::FAMILIES.split_at(spool_split());
            encode(e, a, &counters)?;
            encode(e, SPOOL_MAX_BYTES, &bounds)?;
            encode(e, b, &counters)
        });
    }
    if let Some(logs) = &s.logs {
        let loki = logs.loki.clone();
        collect(&mut r, "loki", move |e| {
            encode(e, LokiCounters::FAMILIES, &single(loki.as_ref()))
        });
    }
    let mut listeners = Vec::new();
    if let Some(relay) = &s.relay {
        let (receiver, exporter) = (relay.receiver.clone(), relay.exporter.clone());
        collect(&mut r, "relay", move |e| {
            encode(e, ReceiverCounters::FAMILIES, &single(receiver.as_ref()))?;
            encode(e, OtlpCounters::FAMILIES, &single(exporter.as_ref()))
        });
        listeners.push(("otlp_grpc", relay.receiver.grpc_connections.clone()));
        listeners.push(("otlp_http", relay.receiver.http_connections.clone()));
    }
    listeners.extend(admin.map(|a| ("admin", a)));
    collect(&mut r, "listeners", move |e| {
        let each: Vec<_> = listeners
            .iter()
            .map(|(name, c)| (vec![("listener", (*name).into())], c.as_ref()))
            .collect();
        encode(e, ListenerCounters::FAMILIES, &each)
    });
    if let Some(exec) = s.exec.clone() {
        collect(&mut r, "exec", move |e| {
            encode(e, ExecCounters::FAMILIES, &single(exec.as_ref()))
        });
    }
    collect(&mut r, "process", move |e| {
        encode(e, PROCESS, &single(&process_metrics(proc.as_ref())))
    });
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
