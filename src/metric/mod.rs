//! The metric vocabulary every stage speaks: how a stage declares its
//! families once beside its counters ([`Family`], `family.rs`), a reading of
//! them ([`Reading`]) and its Prometheus text encoding, and the registry the
//! stages register their readers into ([`Registry`], [`AgentMetrics`]).
//!
//! Promises: the ground floor. It imports nothing of the stages, the admin
//! endpoint or the status (only std and crates), so any of them may import
//! it; who serves a reading (`/metrics`, `/status`, the OTLP push) is not its
//! business.

mod family;
mod registry;

pub use family::*;
pub use registry::{names, AgentMetrics, Registry, ORDER};
