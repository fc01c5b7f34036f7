//! Sinks: where records go.

pub mod console;
