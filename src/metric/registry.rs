//! The agent's metric readers: each stage registers a reader of its own
//! counters ([`Registry::add`]) where it is wired, and [`AgentMetrics`] reads
//! them all at each scrape of `/metrics`, each `/status`, each status line and
//! each OTLP push of the agent's own metrics, so all of them say the same.
//!
//! Promises: the families are read in one order whatever order the stages
//! registered in ([`ORDER`]); readers registered under one slot (both spools,
//! every listener) are instances of the same families, and each family's
//! samples stay together, instance after instance, in the order the slot
//! declared its families. A reader never blocks a stage: it loads the
//! counters the stage already keeps.

use std::fmt;
use std::sync::Arc;

use super::family::{Family, Reading};

/// The slots in the order they are served; a slot not named here comes
/// after these, in the order registered.
pub const ORDER: &[&str] = &[
    "host",
    "config",
    "tail",
    "parse",
    "spool",
    "loki",
    "tap",
    "otlp_receiver",
    "otlp_exporter",
    "listener",
    "exec",
    "process",
];

/// A reader of one instance's families, run at each reading; an error is a
/// reader's own failure (ours do not fail).
type Read = Box<dyn Fn(&mut Vec<Reading>) -> fmt::Result + Send + Sync>;

/// A slot: the families it declares, in the order served, and a reader per
/// instance.
struct Slot {
    name: &'static str,
    families: Vec<&'static str>,
    instances: Vec<Read>,
}

/// The readers as the stages register them; [`Registry::finish`] fixes the
/// order and makes the [`AgentMetrics`] everyone reads.
#[derive(Default)]
pub struct Registry {
    slots: Vec<Slot>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.slots.iter().map(|s| (s.name, s.instances.len())))
            .finish()
    }
}

impl Registry {
    /// Adds a reader under `slot` of the families named `families` (in the
    /// order served). A second reader under the same slot is another
    /// instance of them (its samples carry its own labels, `spool` or
    /// `listener`), read after the first.
    pub fn add<F>(
        &mut self,
        slot: &'static str,
        families: impl IntoIterator<Item = &'static str>,
        read: F,
    ) where
        F: Fn(&mut Vec<Reading>) -> fmt::Result + Send + Sync + 'static,
    {
        match self.slots.iter_mut().find(|s| s.name == slot) {
            Some(s) => s.instances.push(Box::new(read)),
            None => self.slots.push(Slot {
                name: slot,
                families: families.into_iter().collect(),
                instances: vec![Box::new(read)],
            }),
        }
    }

    /// The readers in the order served ([`ORDER`]).
    pub fn finish(mut self) -> AgentMetrics {
        let rank = |name: &str| ORDER.iter().position(|o| *o == name).unwrap_or(ORDER.len());
        // A stable sort: unnamed slots keep the order they came in.
        self.slots.sort_by_key(|s| rank(s.name));
        AgentMetrics(Arc::new(self))
    }
}

/// The names of `families`, in their order: what [`Registry::add`] declares.
pub fn names<T>(families: &[Family<T>]) -> impl Iterator<Item = &'static str> + '_ {
    families.iter().map(|f| f.name)
}

/// Every family the agent serves, read from the stages' counters at each
/// [`AgentMetrics::read`]: what `/metrics` renders, what `/status` and the
/// status line are built from, and what the host-metrics task pushes over
/// OTLP (`[host_metrics] agent_metrics`), one reading code for all. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct AgentMetrics(Arc<Registry>);

impl AgentMetrics {
    /// Every family's samples now, in the order served; families without
    /// samples are left out.
    pub fn read(&self) -> Vec<Reading> {
        let mut out = Vec::new();
        for slot in &self.0.slots {
            if let [only] = slot.instances.as_slice() {
                run(slot.name, only, &mut out);
                continue;
            }
            let mut each = Vec::new();
            for read in &slot.instances {
                run(slot.name, read, &mut each);
            }
            merge(&slot.families, each, &mut out);
        }
        out
    }
}

/// Runs one reader into `out`; should it fail, the others still count.
fn run(slot: &str, read: &Read, out: &mut Vec<Reading>) {
    if read(out).is_err() {
        tracing::warn!("metrics: the {slot} reader failed; its families are incomplete");
    }
}

/// The instances' readings of one slot into `out`, one reading per family in
/// the order `families` declares, each with every instance's samples in
/// instance order; a family none declared comes last.
fn merge(families: &[&'static str], each: Vec<Reading>, out: &mut Vec<Reading>) {
    let rank = |name: &str| {
        families
            .iter()
            .position(|f| *f == name)
            .unwrap_or(families.len())
    };
    let mut merged: Vec<Reading> = Vec::new();
    for reading in each {
        match merged.iter_mut().find(|m| m.name == reading.name) {
            Some(m) => m.samples.extend(reading.samples),
            None => merged.push(reading),
        }
    }
    merged.sort_by_key(|m| rank(m.name));
    out.extend(merged);
}
