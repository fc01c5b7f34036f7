//! Classifies a request's answer (acknowledge, retry later, or drop) and paces retries.
//!
//! This is the one place that decides retry policy. An HTTP answer becomes a
//! [`PushOutcome`], a gRPC status an [`Outcome`], and the shipper matches on
//! [`Outcome`], the one thing every service's `send` answers, whose refusals
//! carry a typed [`Cause`]. Promises: 2xx is delivered; 408, 429 and 5xx,
//! timeouts and connection errors are retried (honouring `Retry-After`, in
//! seconds or as an HTTP date, bounded by [`MAX_RETRY_AFTER`]); any other 4xx is
//! rejected with the server's own words as the reason, cut to
//! [`MAX_REASON_BYTES`]. gRPC follows the OTLP specification's table of
//! retryable codes. Retrying is the default for anything not understood (1xx,
//! 3xx: the client follows no redirects, since a redirected POST loses its
//! body): a batch kept is never lost.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};

/// A `Retry-After` beyond this is taken as this: a misconfigured proxy must not
/// park the sink for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The server's answer kept as a rejection reason is cut to this many bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// What an HTTP answer (or its absence) means for the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// 2xx: acknowledge the batch.
    Delivered,
    /// 429, 5xx, timeouts, connection errors: push the same batch again, after
    /// `after` when the server said when, else after the backoff's next delay.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Other 4xx (and anything else that is not a success): the server will never
    /// take this batch; drop it, count it, log the reason.
    Rejected { status: u16, reason: String },
}

/// Why a service refused a request for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// An HTTP status (`400`).
    Status(u16),
    /// A gRPC status code other than the retryable ones.
    Grpc(tonic::Code),
    /// A stored request that could not be converted for the wire.
    Undecodable,
}

impl std::fmt::Display for Cause {
    /// `400`, `grpc_invalid_argument`, `undecodable`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Status(status) => write!(f, "{status}"),
            Cause::Grpc(code) => write!(f, "grpc_{}", snake(&format!("{code:?}"))),
            Cause::Undecodable => f.write_str("undecodable"),
        }
    }
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A service's answer that it took part of a request and refused the rest:
/// only the service can tell which, from the request's records (the shipper's
/// `Service::settle`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    pub status: u16,
    /// The answer's body as received, up to a bound.
    pub body: bytes::Bytes,
    /// `body` is the whole answer.
    pub complete: bool,
    /// When the service said to come back (`Retry-After`).
    pub after: Option<Duration>,
}

/// What became of one request: what every service's `send` answers the shipper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Taken. `note` is a warning to log once per key (a partial success).
    Delivered { note: Option<(String, String)> },
    /// Refused for good: dropped and counted by `cause`, logged once per cause.
    Rejected { cause: Cause, reason: String },
    /// May succeed later. `maybe_stored`: the try may have left the request (or
    /// part of it) stored, so it is checked before it is sent again.
    Retry {
        after: Option<Duration>,
        reason: String,
        maybe_stored: bool,
    },
    /// Taken in part: settled by the service.
    Partial(Partial),
}

impl Outcome {
    /// Retry without having reached the service.
    pub fn retry(reason: String) -> Self {
        Outcome::Retry {
            after: None,
            reason,
            maybe_stored: false,
        }
    }

    /// The OTLP specification's retryable gRPC codes; the rest are permanent.
    pub fn from_grpc_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        let code = status.code();
        let reason = format!("grpc {:?}: {}", code, status.message());
        match code {
            Code::Cancelled
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss => Outcome::retry(reason),
            _ => Outcome::Rejected {
                cause: Cause::Grpc(code),
                reason,
            },
        }
    }
}

impl PushOutcome {
    /// What the shipper is told of an HTTP answer; `maybe_stored` as for
    /// [`Outcome::Retry`].
    pub fn into_outcome(self, maybe_stored: bool) -> Outcome {
        match self {
            PushOutcome::Delivered => Outcome::Delivered { note: None },
            PushOutcome::Retry { after, reason } => Outcome::Retry {
                after,
                reason,
                maybe_stored,
            },
            PushOutcome::Rejected { status, reason } => Outcome::Rejected {
                cause: Cause::Status(status),
                reason,
            },
        }
    }

    /// Classifies an HTTP answer.
    pub fn from_response(status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        Self::from_response_at(status, headers, body, SystemTime::now())
    }

    /// As [`from_response`](Self::from_response), with the clock injected (an HTTP
    /// date in `Retry-After` is relative to it).
    pub fn from_response_at(
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Self {
        match status {
            200..=299 => PushOutcome::Delivered,
            // 408: the server gave up waiting for our body; a transient failure.
            408 | 429 | 500..=599 => PushOutcome::Retry {
                after: retry_after(headers, now),
                reason: with_body(format!("status {status}"), body),
            },
            400..=499 => PushOutcome::Rejected {
                status,
                reason: reason_from_body(status, body),
            },
            // A redirect means loki.url is wrong (http to https, a proxy's login
            // page): keep the data and say where the server points.
            _ => PushOutcome::Retry {
                after: None,
                reason: match headers.get(LOCATION).and_then(|v| v.to_str().ok()) {
                    Some(to) => format!(
                        "unexpected status {status}, redirect to {}",
                        bounded_text(to.as_bytes())
                    ),
                    None => with_body(format!("unexpected status {status}"), body),
                },
            },
        }
    }

    /// Classifies a request that got no answer. Timeouts and connection errors
    /// are retried; so is everything else, since an error of ours (a bad URL)
    /// is fixed by a configuration change and must not cost the data meanwhile.
    pub fn from_transport_error(err: &reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "cannot connect"
        } else if err.is_request() {
            "request failed"
        } else if err.is_body() {
            "cannot send body"
        } else {
            "transport error"
        };
        PushOutcome::Retry {
            after: None,
            reason: format!("{kind}: {}", error_chain(err)),
        }
    }

    pub fn is_delivered(&self) -> bool {
        matches!(self, PushOutcome::Delivered)
    }
}

/// The error and its sources, `a: b: c`, as reqwest's own Display hides the cause
/// ("error sending request") that says what went wrong.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    // Bounded: error chains are short, but a cyclic one must not spin.
    for _ in 0..8 {
        let Some(s) = source else { break };
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date, capped.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let after = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let when = httpdate::parse_http_date(value).ok()?;
        // A date in the past means "now".
        when.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(after.min(MAX_RETRY_AFTER))
}

fn with_body(head: String, body: &[u8]) -> String {
    let text = bounded_text(body);
    if text.is_empty() {
        head
    } else {
        format!("{head}: {text}")
    }
}

fn reason_from_body(status: u16, body: &[u8]) -> String {
    let text = bounded_text(body);
    if text.is_empty() {
        format!("status {status}")
    } else {
        text
    }
}

/// The body as trimmed text on one line ([`one_line`]), lossy UTF-8, cut at a
/// character boundary.
pub(crate) fn bounded_text(body: &[u8]) -> String {
    let head = &body[..body.len().min(MAX_REASON_BYTES + 4)];
    let text = String::from_utf8_lossy(head);
    let text = text.trim();
    if text.len() <= MAX_REASON_BYTES {
        return one_line(text);
    }
    let mut cut = MAX_REASON_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", one_line(&text[..cut]))
}

/// `text` on one line: newlines, tabs and other control characters escaped
/// (`\n`, `\t`, `\u{1b}`), so a log line never runs onto the next.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// Exponential backoff with full jitter: the n-th delay is drawn uniformly from
/// `0..=min(max, initial * 2^n)`. Full jitter spreads agents that lost the same
/// host apart, so they do not all come back in the same second.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self::with_rng(initial, max, fastrand::Rng::new())
    }

    /// With a seeded generator, for reproducible tests.
    pub fn with_rng(initial: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng,
        }
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay before the next retry; each call doubles the ceiling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.u64(0..=nanos))
    }

    /// After a success: the next failure starts again from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn a_redirect_is_kept_for_retry_and_names_where_it_points() {
        let mut h = HeaderMap::new();
        h.insert(LOCATION, HeaderValue::from_static("https://loki/push"));
        assert_eq!(
            PushOutcome::from_response(301, &h, b""),
            PushOutcome::Retry {
                after: None,
                reason: "unexpected status 301, redirect to https://loki/push".into()
            }
        );
    }

    fn headers(retry_after: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn statuses_are_classified_as_spec_says() {
        let now = httpdate::parse_http_date("Sun, 22 Nov 2026 10:00:00 GMT").unwrap();
        type Expect = fn(&PushOutcome) -> bool;
        let table: &[(u16, Option<&str>, &[u8], Expect)] = &[
            (200, None, b"", |o| *o == PushOutcome::Delivered),
            (204, None, b"", |o| *o == PushOutcome::Delivered),
            (429, Some("7"), b"slow down", |o| {
                *o == PushOutcome::Retry {
                    after: Some(Duration::from_secs(7)),
                    reason: "status 429: slow down".into(),
                }
            }),
            (503, None, b"", |o| {
                *o == PushOutcome::Retry {
                    after: None,
                    reason: "status 503".into(),
                }
            }),
            (
                500,
                Some("Sun, 22 Nov 2026 10:00:30 GMT"),
                b"",
                |o| matches!(o, PushOutcome::Retry { after: Some(d), .. } if *d == Duration::from_secs(30)),
            ),
            (
                502,
                Some("Sun, 22 Nov 2026 09:00:00 GMT"),
                b"",
                |o| matches!(o, PushOutcome::Retry { after: Some(d), .. } if d.is_zero()),
            ),
            (
                503,
                Some("86400"),
                b"",
                |o| matches!(o, PushOutcome::Retry { after: Some(d), .. } if *d == MAX_RETRY_AFTER),
            ),
            (503, Some("soon"), b"", |o| {
                matches!(o, PushOutcome::Retry { after: None, .. })
            }),
            (
                400,
                None,
                b"  entry too far behind for stream {job=\"a\"}\n",
                |o| {
                    *o == PushOutcome::Rejected {
                        status: 400,
                        reason: "entry too far behind for stream {job=\"a\"}".into(),
                    }
                },
            ),
            (401, None, b"", |o| {
                *o == PushOutcome::Rejected {
                    status: 401,
                    reason: "status 401".into(),
                }
            }),
            (413, None, b"too big", |o| {
                matches!(o, PushOutcome::Rejected { status: 413, .. })
            }),
            (408, None, b"", |o| {
                matches!(o, PushOutcome::Retry { after: None, .. })
            }),
            (404, None, b"404 page not found", |o| {
                *o == PushOutcome::Rejected {
                    status: 404,
                    reason: "404 page not found".into(),
                }
            }),
            (
                308,
                None,
                b"",
                |o| matches!(o, PushOutcome::Retry { after: None, reason } if reason == "unexpected status 308"),
            ),
        ];
        for (status, ra, body, expect) in table {
            let got = PushOutcome::from_response_at(*status, &headers(*ra), body, now);
            assert!(expect(&got), "status {status} retry-after {ra:?}: {got:?}");
        }
    }

    #[test]
    fn a_long_body_is_cut_at_a_character_boundary() {
        let body = "é".repeat(MAX_REASON_BYTES);
        let PushOutcome::Rejected { reason, .. } =
            PushOutcome::from_response(400, &HeaderMap::new(), body.as_bytes())
        else {
            panic!("not rejected");
        };
        assert!(reason.len() <= MAX_REASON_BYTES + '…'.len_utf8());
        assert!(reason.ends_with('…'));
    }

    #[test]
    fn a_body_of_several_lines_is_a_reason_on_one_line() {
        let PushOutcome::Rejected { reason, .. } = PushOutcome::from_response(
            400,
            &HeaderMap::new(),
            b"entry with timestamp x ignored,\nuser 'fake', total ignored: 1 out of 2\n",
        ) else {
            panic!("not rejected");
        };
        assert_eq!(
            reason,
            "entry with timestamp x ignored,\\nuser 'fake', total ignored: 1 out of 2"
        );
        assert_eq!(one_line("a\nb\tc\r\u{1b}[0m é"), "a\\nb\\tc\\r\\u{1b}[0m é");
    }

    #[test]
    fn backoff_ceiling_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::with_rng(
            Duration::from_millis(100),
            Duration::from_secs(1),
            fastrand::Rng::with_seed(7),
        );
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d <= c, "{d:?} > {c:?}");
            ceilings.push(c.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn backoff_never_overflows_after_many_failures() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }

    #[test]
    fn backoff_delays_are_jittered() {
        let mut b = Backoff::with_rng(
            Duration::from_secs(10),
            Duration::from_secs(10),
            fastrand::Rng::with_seed(1),
        );
        let delays: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
