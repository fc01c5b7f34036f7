//! The commands other than `run`, each in a room of its own: what the command
//! does, from the parsed command line to its exit status; clients of the
//! daemon or of the system. `run`, the daemon, is in [`crate::run`]; `app`
//! only dispatches to these.

pub mod config;
pub mod exec;
pub mod manpage;
pub mod probe;
pub mod status;
pub mod tap;
