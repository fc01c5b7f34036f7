//! Sources: where records come from.

pub mod exec;
pub mod file;
pub mod multiline;
pub mod terminal;
