//! Sinks: where records go.

pub mod console;
pub mod loki;
pub mod otlp;
pub mod retry;
pub mod ship;
