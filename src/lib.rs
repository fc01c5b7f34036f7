//! wisp-agent: a small telemetry agent for developer VMs.
//!
//! It discovers the host's telemetry stack, tails log files, labels each line with
//! its level, and ships logs to Loki and OTLP to the host's collector through a
//! durable buffer, so nothing is lost while the host is away. `src/main.rs` is a
//! thin shell over this library; `docs/ARCHITECTURE.md` describes the pipeline.

pub mod admin;
pub mod app;
pub mod cli;
pub mod command;
pub mod config;
pub mod discovery;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod http_client;
pub(crate) mod listen;
pub mod log;
pub mod metric;
pub mod notify;
pub mod parse;
pub(crate) mod procfs;
pub mod record;
pub mod relay;
pub mod run;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod spool;
pub(crate) mod state_file;
pub mod status;
pub mod tap;
pub mod users;
