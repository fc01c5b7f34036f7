//! Sources: where records come from.

pub mod exec;
pub mod file;
pub mod host_metrics;
pub mod known_runs;
pub mod multiline;
pub mod otlp;
pub mod terminal;
