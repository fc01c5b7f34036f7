//! The serializable report of `probe`: what `--json` prints, field by field
//! (the shape is documented in [`super`] and `docs/probe.md`, and stable).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::discovery::{CandidateReport, Chosen};

/// Everything `probe` found; printed as a table or, with `--json`, as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub version: &'static str,
    pub config: String,
    pub candidates: Vec<CandidateReport>,
    pub chosen: Option<Chosen>,
    pub verdict: Verdict,
    pub diagnoses: Vec<Diagnosis>,
    pub push: Option<PushReport>,
    pub elapsed_ms: u64,
}

/// The answer to "does it work?": `ok` is exit status 0.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub ok: bool,
    pub summary: String,
}

/// One known failure, named, with what to do about it.
#[derive(Clone, Debug, Serialize)]
pub struct Diagnosis {
    pub kind: &'static str,
    /// The candidate it is about, if any.
    pub candidate: Option<String>,
    pub message: String,
}

/// What `--push` did.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    /// The unique text in the test line (and the span's `wisp.probe.token`).
    pub token: String,
    pub loki: PushStep,
    pub otlp: PushStep,
}

#[derive(Clone, Debug, Serialize)]
pub struct PushStep {
    pub status: PushStatus,
    pub detail: String,
    pub latency_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushStatus {
    Ok,
    Failed,
    Skipped,
}

impl PushStep {
    pub(super) fn skipped(detail: &str) -> Self {
        PushStep {
            status: PushStatus::Skipped,
            detail: detail.to_string(),
            latency_ms: 0,
        }
    }

    pub(super) fn failed(detail: String, started: Instant) -> Self {
        PushStep {
            status: PushStatus::Failed,
            detail,
            latency_ms: ms(started.elapsed()),
        }
    }
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
