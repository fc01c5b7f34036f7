//! `GET /tap[?source=file|exec|otlp][&job=J][&level=L]`: the log records the
//! daemon appends to its Loki spool, as they are appended, one JSON line each
//! (the `--dry-run` line with a `source` first), until the client goes away or
//! the daemon stops ([`crate::tap`] keeps each tap's bounded buffer).
//!
//! Who may tap: the daemon runs as root in a VM other users log into, and the
//! endpoint answers any local user. Root and the daemon's own user see every
//! record; another local user sees only the records that are theirs (lines of
//! files they own, their `exec` runs, OTLP logs their programs sent): what they
//! could read anyway. The user is the owner of the client's loopback socket, as
//! the kernel lists it (`/proc/net/tcp`); a client whose user cannot be told
//! (another host) is refused with 403. The answer's `x-wisp-tap-scope` header
//! says which: `all` or `own`.

use std::sync::{Arc, RwLock};

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use serde::Deserialize;

use super::Endpoint;
use crate::listen::{Peer, Streaming};
use crate::tap::{SourceKind, Subscription, TapFilter};

/// Records written into one chunk of the answer at most, so a burst is sent
/// in pieces of bounded size.
const CHUNK_RECORDS: usize = 256;

/// The filters, as query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TapQuery {
    source: Option<String>,
    job: Option<String>,
    level: Option<String>,
}

/// Who sees what, from the peer's uid: `None` (every record) for root and the
/// daemon's own user, `Some(uid)` (their own records) for another user; `Err`
/// for a peer whose user cannot be told.
pub(super) fn scope(peer: Option<u32>, daemon: u32) -> Result<Option<u32>, ()> {
    match peer {
        None => Err(()),
        Some(uid) if uid == 0 || uid == daemon => Ok(None),
        Some(uid) => Ok(Some(uid)),
    }
}

pub(super) async fn serve(
    State(current): State<Arc<RwLock<Arc<Endpoint>>>>,
    peer: Option<Extension<Arc<Peer>>>,
    Query(query): Query<TapQuery>,
) -> Response {
    let endpoint = Endpoint::now(&current);
    let Some(logs) = &endpoint.sources.logs else {
        return (
            StatusCode::NOT_FOUND,
            "no log records to tap: loki.enabled = false (the daemon relays OTLP only)\n",
        )
            .into_response();
    };
    let source = match query.source.as_deref().map(SourceKind::parse) {
        None => None,
        Some(Some(kind)) => Some(kind),
        Some(None) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "source must be file, exec or otlp, found {:?}\n",
                    crate::parse::labels::escape_controls(query.source.as_deref().unwrap_or(""))
                ),
            )
                .into_response()
        }
    };
    let uid = peer.as_ref().and_then(|Extension(p)| p.uid());
    let daemon = rustix::process::geteuid().as_raw();
    let Ok(owner_uid) = scope(uid, daemon) else {
        return (
            StatusCode::FORBIDDEN,
            "the tap answers local users only, and the user of this connection cannot be told \
             (connect over loopback from this machine)\n",
        )
            .into_response();
    };
    let filter = TapFilter {
        source,
        job: query.job,
        level: query.level,
        owner_uid,
    };
    let subscription = match logs.tap.subscribe(filter) {
        Ok(s) => s,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    let cancel = endpoint.cancel.clone();
    let body = futures_util::stream::unfold(
        (subscription, cancel),
        |(mut subscription, cancel)| async move {
            let first = tokio::select! {
                _ = cancel.cancelled() => return None,
                first = subscription.recv() => first?,
            };
            let chunk = chunk(first, &mut subscription);
            Some((
                Ok::<_, std::convert::Infallible>(chunk),
                (subscription, cancel),
            ))
        },
    );
    let mut response = axum::body::Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        "x-wisp-tap-scope",
        HeaderValue::from_static(if owner_uid.is_none() { "all" } else { "own" }),
    );
    response.extensions_mut().insert(Streaming);
    response
}

/// `first` and the records queued after it (at most [`CHUNK_RECORDS`]) as
/// JSON lines, then `{"dropped":N}` when the tap lost records meanwhile.
fn chunk(first: Arc<crate::tap::Tapped>, subscription: &mut Subscription) -> Bytes {
    let mut out = Vec::with_capacity(4096);
    let mut next = Some(first);
    let mut n = 0;
    while let Some(t) = next {
        // Writing into a Vec fails only on serialisation errors, which a
        // record of strings does not have.
        let _ = crate::sink::console::write_tapped(&mut out, t.source.as_str(), &t.record);
        n += 1;
        next = if n < CHUNK_RECORDS {
            subscription.try_recv()
        } else {
            None
        };
    }
    let dropped = subscription.take_dropped();
    if dropped > 0 {
        out.extend_from_slice(format!("{{\"dropped\":{dropped}}}\n").as_bytes());
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::scope;

    #[test]
    fn root_and_the_daemons_user_see_all_others_their_own_an_unknown_peer_nothing() {
        assert_eq!(scope(Some(0), 998), Ok(None));
        assert_eq!(scope(Some(998), 998), Ok(None));
        assert_eq!(scope(Some(1000), 998), Ok(Some(1000)));
        assert_eq!(scope(Some(1000), 0), Ok(Some(1000)));
        assert_eq!(scope(None, 0), Err(()));
    }
}
