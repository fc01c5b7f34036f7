//! Sources: where records come from.

pub mod exec;
pub mod file;
pub mod multiline;
pub mod otlp;
pub mod terminal;
