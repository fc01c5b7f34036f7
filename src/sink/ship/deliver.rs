//! Sending one group of records until the service takes it, settling what it
//! took in part, checking what a failed try may have left stored.

use std::future::Future;
use std::task::Poll;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::read::ReadAhead;
use super::{
    without_stored, BatchLimits, Check, Event, Loop, Outcome, Partial, Reach, Service, Shipper,
    MARK,
};
use crate::config::{fill_host, redact_url};
use crate::discovery::current_host;
use crate::spool::SpoolReader;

/// Encodes and sends one group until it is taken or refused for good, checking
/// what a failed try may have left stored before trying again. False when
/// `stop` fired first.
pub(super) async fn deliver_group<S: Service>(
    sh: &mut Shipper<S>,
    state: &mut Loop,
    mut records: Vec<S::Record>,
    mut encoded: Option<S::Request>,
    stop: &CancellationToken,
    ahead: &mut ReadAhead<S::Record, S::Request>,
) -> bool {
    loop {
        let Some(request) = encoded.take().or_else(|| sh.service.encode(&records)) else {
            return true;
        };
        match deliver(sh, state, &request, stop, ahead).await {
            Delivery::Done => return true,
            Delivery::Stopped => return false,
            Delivery::MaybeStored => {
                let Some(missing) = without_stored(sh, records, Check::Retry, stop).await else {
                    return false;
                };
                records = missing;
                if records.is_empty() {
                    return true;
                }
            }
            Delivery::Partial(answer) => {
                let after = answer.after;
                let reach = Reach {
                    url: &sh.settings.url,
                    host: &mut sh.host,
                    health: &sh.health,
                    stop,
                    mark: None,
                };
                let Some(settled) = sh.service.settle(records, answer, reach).await else {
                    return false;
                };
                if settled.resend.is_empty() {
                    state.backoff.reset();
                    return true;
                }
                if let Some(mark) = settled.mark {
                    mark_in_flight(sh, state, mark);
                }
                if settled.wait {
                    let delay = after.unwrap_or_default().max(state.backoff.next_delay());
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return false,
                    }
                } else {
                    state.backoff.reset();
                }
                records = settled.resend;
            }
        }
    }
}

/// Marks the push in flight (before records of it go again in another form).
fn mark_in_flight<S: Service>(sh: &mut Shipper<S>, state: &mut Loop, mark: u64) {
    if let Err(e) = tokio::task::block_in_place(|| sh.reader.mark_in_flight(mark)) {
        // Sending anyway keeps the lines flowing; only a stop before this
        // push is acknowledged would then send them again in their first form.
        state.failing.warn(MARK, || {
            format!(
                "cannot mark the {} {} in flight in {} ({e}); should the agent stop before \
                 it is acknowledged, the records {} sent again changed may be sent once more",
                S::WORDING.name,
                S::WORDING.request,
                S::WORDING.spool,
                S::WORDING.name,
            )
        });
        return;
    }
    state.failing.clear(&MARK);
}

/// How [`deliver`] ended.
enum Delivery {
    /// Taken, or refused for good (counted).
    Done,
    /// `stop` fired first.
    Stopped,
    /// A try failed in a way that may have left the request stored; the backoff
    /// delay has been waited. Check before trying again.
    MaybeStored,
    /// Taken in part: to be settled.
    Partial(Partial),
}

/// Sends one request until the service takes it or refuses it for good, or
/// until a try fails in a way that may have left it stored.
async fn deliver<S: Service>(
    sh: &mut Shipper<S>,
    state: &mut Loop,
    request: &S::Request,
    stop: &CancellationToken,
    ahead: &mut ReadAhead<S::Record, S::Request>,
) -> Delivery {
    let words = S::WORDING;
    let limits = sh.settings.batch;
    loop {
        let Some(host) = current_host(&mut sh.host, stop).await else {
            return Delivery::Stopped;
        };
        let url = fill_host(&sh.settings.url, &host);
        // What the log shows: a password in the URL's userinfo never is.
        let shown = redact_url(&url);
        let started = Instant::now();
        let send = send_reading_ahead(
            &mut sh.service,
            &url,
            request,
            &mut sh.reader,
            &mut *ahead,
            limits,
        );
        let outcome = tokio::select! {
            o = send => o,
            _ = stop.cancelled() => return Delivery::Stopped,
        };
        let took = started.elapsed();
        match outcome {
            Outcome::Delivered { note } => {
                sh.service.count(Event::Delivered { request, took });
                if let Some((key, warning)) = note {
                    state.notes.warn(key, || warning);
                }
                if state.backoff.attempts() > 0 {
                    tracing::info!("{} at {shown} takes {} again", words.name, words.requests);
                }
                state.backoff.reset();
                sh.health.report_success();
                return Delivery::Done;
            }
            Outcome::Rejected { cause, reason } => {
                sh.service.count(Event::Rejected {
                    request,
                    cause,
                    reason: &reason,
                    shown: &shown,
                });
                state.backoff.reset();
                sh.health.report_success();
                return Delivery::Done;
            }
            Outcome::Partial(answer) => {
                if state.backoff.attempts() > 0 {
                    tracing::info!("{} at {shown} takes {} again", words.name, words.requests);
                }
                sh.health.report_success();
                return Delivery::Partial(answer);
            }
            Outcome::Retry {
                after,
                reason,
                maybe_stored,
            } => {
                sh.service.count(Event::Retried { reason: &reason });
                sh.health.report_failure();
                let delay = after.unwrap_or_default().max(state.backoff.next_delay());
                if state.backoff.attempts() <= 1 {
                    tracing::warn!(
                        "{} {shown} failed ({reason}); retrying with backoff, {} in the buffer",
                        words.sending,
                        words.waiting
                    );
                } else {
                    tracing::debug!(
                        "{} {shown} failed again ({reason}); next try in {delay:?}",
                        words.sending
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return Delivery::Stopped,
                }
                if maybe_stored && S::CHECKS_STORED {
                    return Delivery::MaybeStored;
                }
            }
        }
    }
}

/// Sends `request`, and while its answer is awaited works on the next batch
/// ([`ReadAhead::work`]), on this core, idle otherwise until the answer
/// comes. The request goes first: one poll hands it to the connection, and a
/// yield lets the connection's task write it (it runs next on this worker)
/// before the spool is read.
async fn send_reading_ahead<S: Service>(
    service: &mut S,
    url: &str,
    request: &S::Request,
    reader: &mut SpoolReader<S::Record>,
    ahead: &mut ReadAhead<S::Record, S::Request>,
    limits: BatchLimits,
) -> Outcome {
    let mut send = std::pin::pin!(service.send(url, request));
    if let Poll::Ready(outcome) =
        std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await
    {
        return outcome;
    }
    tokio::task::yield_now().await;
    tokio::task::block_in_place(|| ahead.work(reader, limits));
    send.await
}
