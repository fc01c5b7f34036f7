//! The runs the server continues across connections: their resume-point keys,
//! how far the spool holds each (kept in the spool's commits), the per-user bound
//! on unfinished runs, and what is done once a run has ended (its span, the
//! handled list).

use std::collections::HashMap;
use std::io;

use super::super::protocol::Hello;
use super::Ctx;
use crate::record::{OtlpPayload, OtlpSignal, Owner};
use crate::source::exec::metrics::CountedRun;
use crate::source::exec::spans::{span_request, RunSpan};
use crate::spool::ResumeState;

/// Resume-point keys of exec runs start so (file keys are 16 bytes of device and
/// inode: they never start so and are never this long).
pub(super) const KEY_PREFIX: &[u8] = b"wisp-exec\0";

/// How far the spool holds an unfinished run: its resume point, `seq` then
/// `started_ms` (little-endian u64 each), then, once a line of the run reported
/// one, the last cost (an f64's bits): kept in the same commit as the lines it
/// came from, so a run continued after a restart keeps its cost. An older
/// daemon's 16-byte points read with no cost; an older daemon reads the first
/// 16 bytes of these.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Progress {
    pub(super) seq: u64,
    pub(super) started_ms: u64,
    pub(super) cost_usd: Option<f64>,
}

impl Progress {
    pub(super) fn encode(self) -> Vec<u8> {
        let mut v = self.seq.to_le_bytes().to_vec();
        v.extend_from_slice(&self.started_ms.to_le_bytes());
        if let Some(cost) = self.cost_usd {
            v.extend_from_slice(&cost.to_bits().to_le_bytes());
        }
        v
    }

    pub(super) fn decode(v: &[u8]) -> Option<Progress> {
        let u64_at = |at: usize| Some(u64::from_le_bytes(v.get(at..at + 8)?.try_into().ok()?));
        Some(Progress {
            seq: u64_at(0)?,
            started_ms: u64_at(8).unwrap_or(0),
            cost_usd: u64_at(16).map(f64::from_bits).filter(|c| c.is_finite()),
        })
    }
}

/// At most this many unfinished runs of one user are remembered (their resume
/// points live in every spool snapshot); past it the oldest is forgotten, and
/// should its capture still come, it is shipped again from its start.
pub const MAX_UNFINISHED_RUNS_PER_USER: usize = 256;

/// The exec runs the spool holds lines of, by run key, from its resume state.
pub(super) fn durable_runs(resume: &ResumeState) -> HashMap<Vec<u8>, Progress> {
    resume
        .iter()
        .filter(|(k, _)| k.starts_with(KEY_PREFIX))
        .filter_map(|(k, v)| Some((k.clone(), Progress::decode(v)?)))
        .collect()
}

/// The uid part of a run key.
fn key_uid(key: &[u8]) -> Option<&[u8]> {
    key.get(KEY_PREFIX.len()..KEY_PREFIX.len() + 4)
}

/// When a new run of `key`'s user would exceed
/// [`MAX_UNFINISHED_RUNS_PER_USER`]: forgets that user's oldest and returns its
/// key, for the spool to forget too.
pub(super) fn make_room(map: &mut HashMap<Vec<u8>, Progress>, key: &[u8]) -> Option<Vec<u8>> {
    let uid = key_uid(key)?;
    let mine: Vec<(&Vec<u8>, &Progress)> = map
        .iter()
        .filter(|(k, _)| key_uid(k) == Some(uid))
        .collect();
    if mine.len() < MAX_UNFINISHED_RUNS_PER_USER {
        return None;
    }
    let oldest = mine
        .into_iter()
        .min_by_key(|(_, p)| p.started_ms)
        .map(|(k, _)| k.clone())?;
    map.remove(&oldest);
    Some(oldest)
}

/// The uid and the trace id a run key names.
pub(super) fn key_run(key: &[u8]) -> Option<(u32, &str)> {
    let uid = u32::from_le_bytes(key_uid(key)?.try_into().ok()?);
    let at = KEY_PREFIX.len() + 4;
    let trace_id = std::str::from_utf8(key.get(at..at + 32)?).ok()?;
    Some((uid, trace_id))
}

pub(super) fn run_key(uid: u32, hello: &Hello) -> Vec<u8> {
    let mut key = KEY_PREFIX.to_vec();
    key.extend_from_slice(&uid.to_le_bytes());
    key.extend_from_slice(hello.trace_id.as_bytes());
    key.extend_from_slice(hello.span_id.as_bytes());
    key
}

/// Hands the run's span on (with `[otlp]`), lists the run as handled and
/// counts it (`wisp_exec_*`): once per run, as its span.
pub(super) async fn finish_run(
    ctx: &Ctx,
    uid: u32,
    run: &RunSpan,
    handled_key: String,
) -> Result<(), String> {
    if let Some(intake) = &ctx.intake {
        match span_request(run, &ctx.span) {
            Some(body) => intake
                .store(
                    OtlpPayload {
                        signal: OtlpSignal::Traces,
                        body: body.into(),
                    },
                    Owner::exec(uid),
                )
                .await
                .map_err(|e| format!("cannot buffer the run's span: {e}"))?,
            None => tracing::warn!("exec run {handled_key} has invalid ids; no span for it"),
        }
    }
    let handled = ctx.handled.clone();
    let now = super::super::now_ms();
    let written = tokio::task::spawn_blocking(move || match handled.lock() {
        Ok(mut h) => h.insert(handled_key, now),
        Err(_) => Err(io::Error::other("the handled list is poisoned")),
    })
    .await
    .map_err(|e| e.to_string())?;
    // The span is in the spool either way: a replay would send it again, no worse.
    if let Err(e) = written {
        tracing::warn!("cannot record a handled exec run: {e}");
    }
    ctx.counters.count(&CountedRun {
        job: &run.job,
        exit: run.exit,
        seconds: run.ended_ms.saturating_sub(run.started_ms) as f64 / 1000.0,
        cost_usd: run.cost_usd,
    });
    Ok(())
}
