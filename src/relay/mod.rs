//! The OTLP relay's data path, below the wiring (`run/otlp.rs`): where OTLP data
//! enters the OTLP spool ([`Intake`]: the receivers' requests, host metrics,
//! `exec` spans), a run's spans and log records joined to the run's trace as
//! the receivers take them ([`run`]), and, with `[otlp] logs_to_loki`, a logs
//! request's records converted and stored in the Loki spool ([`to_loki`]).

mod intake;
pub mod run;
pub mod to_loki;

pub use intake::Intake;
pub use to_loki::{LogsToLoki, ToLokiSettings};
