//! The commands other than `run`, each in a room of its own: what the command
//! does, from the parsed command line to its exit status. `run`, the daemon,
//! is in [`crate::run`]; `app` only dispatches to these.

pub mod config;
pub mod exec;
pub mod probe;
// `status` joins them here: `pub mod status;`.
