//! The bytes of OTLP requests in flight across both listeners, bounded by
//! [`BODY_BYTES_IN_FLIGHT`], and reading a body within that bound.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::BODY_BYTES_IN_FLIGHT;

/// The bytes of requests in flight, bounded by [`BODY_BYTES_IN_FLIGHT`]. Cheap
/// to clone; every clone shares the bound.
#[derive(Clone)]
pub(crate) struct BodyBudget(Arc<Semaphore>);

/// Bytes taken from a [`BodyBudget`]; given back when dropped.
pub(crate) struct Held(Option<OwnedSemaphorePermit>);

impl BodyBudget {
    pub(crate) fn new(bytes: usize) -> BodyBudget {
        BodyBudget(Arc::new(Semaphore::new(bytes)))
    }

    /// Takes `bytes` more into `held`; false (and nothing taken) when the
    /// budget has not that much left.
    pub(crate) fn take(&self, held: &mut Held, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        match self.0.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                match &mut held.0 {
                    Some(h) => h.merge(p),
                    None => held.0 = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }
}

impl Held {
    pub(crate) fn none() -> Held {
        Held(None)
    }
}

/// Why a request body was not read to its end.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyRefusal {
    #[error(
        "the request body is larger than {limit} bytes, the most this receiver takes: \
         send smaller batches (e.g. a lower max export batch size in the SDK)"
    )]
    TooLarge { limit: usize },
    #[error(
        "the receiver's requests in flight are at their bound ({BODY_BYTES_IN_FLIGHT} bytes): retry shortly"
    )]
    Busy,
    #[error("cannot read the request body: {0}")]
    Read(String),
}

/// Reads `body` to its end, at most `limit` bytes, taking each piece from the
/// budget as it arrives: a slow body holds only what it sent.
pub(super) async fn read_body(
    body: Body,
    declared: Option<u64>,
    limit: usize,
    budget: &BodyBudget,
    held: &mut Held,
) -> Result<Bytes, BodyRefusal> {
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyRefusal::TooLarge { limit });
    }
    let mut stream = body.into_data_stream();
    let mut out: Vec<u8> = Vec::new();
    let mut first: Option<Bytes> = None;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| BodyRefusal::Read(e.to_string()))?;
        let len = out.len() + first.as_ref().map_or(0, Bytes::len) + piece.len();
        if len > limit {
            return Err(BodyRefusal::TooLarge { limit });
        }
        if !budget.take(held, piece.len()) {
            return Err(BodyRefusal::Busy);
        }
        // A body in one piece is kept as it came, without a copy.
        match first.take() {
            None if out.is_empty() => first = Some(piece),
            None => out.extend_from_slice(&piece),
            Some(f) => {
                let want = declared.map_or(len, |d| d as usize).clamp(len, limit);
                out.reserve_exact(want);
                out.extend_from_slice(&f);
                out.extend_from_slice(&piece);
            }
        }
    }
    Ok(first.unwrap_or_else(|| out.into()))
}
