//! Sources: where records come from.

pub mod exec;
pub mod exec_spans;
pub mod file;
pub mod host_metrics;
pub mod multiline;
pub mod otlp;
pub mod terminal;
