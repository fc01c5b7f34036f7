//! Reading the shipper's batches from the spool.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{save_ack, spool_error, Service, Shipper, ACK_SAVE_DELAY};
use crate::spool::{ReadBatch, SpoolError, SpoolPosition};

/// Joins a read to the batch so far.
fn extend<R>(batch: &mut Option<ReadBatch<R>>, more: ReadBatch<R>) {
    match batch {
        Some(b) => {
            b.records.extend(more.records);
            b.end = more.end;
            b.bytes += more.bytes;
        }
        None => *batch = Some(more),
    }
}

fn counts<R>(batch: &Option<ReadBatch<R>>) -> (usize, usize) {
    batch
        .as_ref()
        .map_or((0, 0), |b| (b.records.len(), b.bytes as usize))
}

/// Reads the records up to `end` (the in-flight push), bounded as a batch is.
/// One record per read, so the batch never reaches past `end`. `None` when the
/// spool holds nothing more of the range.
pub(super) fn read_in_flight<S: Service>(
    sh: &mut Shipper<S>,
    end: SpoolPosition,
) -> Result<Option<ReadBatch<S::Record>>, SpoolError> {
    let limits = sh.settings.batch;
    let mut batch = None;
    while sh.reader.position() < end {
        let (have, have_bytes) = counts(&batch);
        if have >= limits.max_records || have_bytes >= limits.max_bytes {
            break;
        }
        let Some(more) = sh.reader.next_batch(1, 1)? else {
            break;
        };
        extend(&mut batch, more);
    }
    Ok(batch)
}

/// Reads the next batch: waits for the first record, then up to `max_wait` for
/// more to fill it. `None` once drained and caught up.
pub(super) async fn next_batch<S: Service>(
    sh: &mut Shipper<S>,
    drain: &CancellationToken,
) -> Option<ReadBatch<S::Record>> {
    let limits = sh.settings.batch;
    let mut batch = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let (have, have_bytes) = counts(&batch);
        if have >= limits.max_records || have_bytes >= limits.max_bytes {
            return batch;
        }
        let read = tokio::task::block_in_place(|| {
            sh.reader
                .next_batch(limits.max_records - have, limits.max_bytes - have_bytes)
        });
        match read {
            Ok(Some(more)) => {
                if batch.is_none() {
                    deadline = Some(tokio::time::Instant::now() + limits.max_wait);
                }
                extend(&mut batch, more);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                spool_error(sh, &e);
                if batch.is_some() {
                    return batch;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = drain.cancelled() => return None,
                }
                continue;
            }
        }
        // Caught up with the writer.
        if drain.is_cancelled() {
            return batch;
        }
        match deadline {
            Some(d) => {
                if tokio::time::Instant::now() >= d {
                    return batch;
                }
                tokio::select! {
                    _ = sh.reader.wait() => {}
                    _ = tokio::time::sleep_until(d) => return batch,
                    _ = drain.cancelled() => {}
                }
            }
            None => {
                // Nothing to send: a waiting acknowledgement goes to disk with
                // the next push, or after a moment without one (a burst pays
                // one ack-file write per push, an idle shipper one in all).
                tokio::select! {
                    _ = sh.reader.wait() => {}
                    _ = drain.cancelled() => {}
                    _ = tokio::time::sleep(ACK_SAVE_DELAY), if sh.reader.ack_pending() => {
                        save_ack(sh);
                    }
                }
            }
        }
    }
}
