//! After a restart: which records of the push that was in flight when the agent
//! stopped does Loki already hold? The sink sends only the others, because Loki
//! 3.x stores a replayed entry again (it only drops an entry identical to its
//! stream's last one).
//!
//! Promises: one `GET /loki/api/v1/query_range` per stream of the push (more when
//! a page is full), with the stream's exact selector, `start` its smallest
//! timestamp, `end` its largest + 1 ns, `direction=forward`, at most
//! [`QUERY_LIMIT`] entries a page and about [`MAX_PAGE_BYTES`] of answer. Records
//! are compared as a multiset of (timestamp, line) per stream: a record counts as
//! stored only as many times as Loki holds its pair. Any answer that cannot be
//! read is a [`CheckError`], never a guess: the caller then sends everything.
//! The paging logic ([`Tally`]) is a plain function of the pages it is
//! given, so it is tested without a server.
//!
//! Records Loki refused and the sink sent again in another form count as held
//! in that form ([`ORIGINAL_TIMESTAMP`]): an entry sent again at a new time
//! carries its own time in the structured metadata `original_timestamp`, and
//! is compared by that time; a line cut to Loki's limit is compared as the
//! start of the record's line. When the push in flight at a stop had records
//! sent again at a new time, at or after `rewritten_since`, one more query per
//! stream (`| original_timestamp != ""`, from then to now) finds them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::client::{LokiClient, QueryError};
use crate::parse::timestamp::from_rfc3339;
use crate::record::{Labels, LogRecord, Timestamp};

/// The structured metadata that holds the time of an entry the sink sent
/// again at another time (RFC 3339 with nanoseconds).
pub const ORIGINAL_TIMESTAMP: &str = "original_timestamp";

/// The second query of a restart's check reaches this far past now (entries
/// sent again were stamped with the time they were sent, before now).
const REWRITTEN_SLACK: Duration = Duration::from_secs(60);

/// Entries asked for per page: real Loki's default `max_entries_limit_per_query`.
pub const QUERY_LIMIT: usize = 5000;

/// A page's answer is read up to this many bytes; the page size is lowered for
/// long lines so a page of them stays below it (see [`page_limit`]).
pub const MAX_PAGE_BYTES: usize = 32 << 20;

const PUSH_PATH: &str = "/loki/api/v1/push";
const QUERY_PATH: &str = "/loki/api/v1/query_range";

/// Why Loki could not tell which records it holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("the query failed: {0}")]
    Query(#[from] QueryError),
    #[error("the query's answer does not parse: {0}")]
    Parse(String),
    #[error(
        "more than {limit} entries share the timestamp {timestamp_ns} ns: cannot page past them"
    )]
    Stuck { limit: usize, timestamp_ns: i64 },
    #[error("loki.url does not contain {PUSH_PATH}, so the query url cannot be derived from it")]
    NoQueryUrl,
    #[error("the check took longer than {0:?}")]
    TimedOut(Duration),
}

impl CheckError {
    /// Asking again will not help (no read access, no query path, an answer of
    /// another shape), as opposed to a query that could not connect, timed out,
    /// or failed on the way or with a 5xx/429.
    pub fn is_lasting(&self) -> bool {
        match self {
            CheckError::Query(QueryError::Status { status, .. }) => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            CheckError::Query(_) | CheckError::TimedOut(_) => false,
            CheckError::Parse(_) | CheckError::Stuck { .. } | CheckError::NoQueryUrl => true,
        }
    }
}

/// One entry of a query's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub timestamp_ns: i64,
    pub line: String,
    /// Whether the entry's stream carries the checked stream's labels. Loki 3.x
    /// may add labels of its own (`service_name`), and without the
    /// categorize-labels flag shows structured metadata as labels: extra labels
    /// are allowed, different values of ours are not.
    pub ours: bool,
    /// Its `original_timestamp` (the sink sent it again at a new time).
    pub original_ns: Option<i64>,
}

impl Found {
    /// The time it is compared by: its own, else the time it was stored at.
    fn key(&self) -> i64 {
        self.original_ns.unwrap_or(self.timestamp_ns)
    }
}

/// The time a record is compared by: its `original_timestamp` when the sink
/// rewrote it, else its own.
pub fn original_time(record: &LogRecord) -> i64 {
    record
        .structured_metadata
        .iter()
        .find(|(k, _)| k == ORIGINAL_TIMESTAMP)
        .and_then(|(_, v)| from_rfc3339(v))
        .map_or(record.timestamp.as_nanos(), Timestamp::as_nanos)
}

/// The query URL for a push URL: its `/loki/api/v1/push` (the last one) replaced
/// by `/loki/api/v1/query_range`.
pub fn query_url(push_url: &str) -> Result<String, CheckError> {
    let at = push_url.rfind(PUSH_PATH).ok_or(CheckError::NoQueryUrl)?;
    Ok(format!(
        "{}{QUERY_PATH}{}",
        &push_url[..at],
        &push_url[at + PUSH_PATH.len()..]
    ))
}

/// Entries per page for a stream whose longest line is `longest_line` bytes:
/// [`QUERY_LIMIT`], fewer when lines are long (a JSON-escaped line may take
/// about twice its bytes), never under 16.
pub fn page_limit(longest_line: usize) -> usize {
    (MAX_PAGE_BYTES / (2 * (longest_line + 64))).clamp(16, QUERY_LIMIT)
}

/// A query time: integer nanoseconds, zero-padded, because Loki reads an integer
/// of 10 digits or fewer as seconds.
fn query_time(ns: i64) -> String {
    format!("{ns:020}")
}

/// Which of `records` (the records of one push in one stream) Loki holds, in
/// the records' order, from the pages `fetch` gives over the records' time
/// range (see [`Tally::page_through`]).
pub async fn stored_in_loki<F, Fut>(
    records: &[&LogRecord],
    limit: usize,
    fetch: F,
) -> Result<Vec<bool>, CheckError>
where
    F: FnMut(i64, i64) -> Fut,
    Fut: Future<Output = Result<Vec<Found>, CheckError>>,
{
    let mut tally = Tally::new(records);
    if let Some((start, end)) = time_range(records) {
        tally
            .page_through(start, end, limit, fetch, |_| true)
            .await?;
    }
    Ok(tally.finish(records))
}

/// `[smallest, largest + 1)` of the records' times.
fn time_range(records: &[&LogRecord]) -> Option<(i64, i64)> {
    let first = records.iter().map(|r| r.timestamp.as_nanos()).min()?;
    let last = records.iter().map(|r| r.timestamp.as_nanos()).max()?;
    Some((first, last.saturating_add(1)))
}

/// What Loki was found to hold of one stream's records, over one or more
/// queries.
pub struct Tally<'a> {
    counts: Counts<'a>,
}

impl<'a> Tally<'a> {
    pub fn new(records: &[&'a LogRecord]) -> Self {
        let mut counts = Counts::default();
        for r in records {
            counts.want(original_time(r), &r.line);
        }
        Tally { counts }
    }

    /// Counts the entries of `[start, end)` that `keep` keeps. `fetch(start,
    /// end)` returns one page: the first `limit` entries with `start <=
    /// timestamp < end`, in timestamp order. A full page is followed by the
    /// next, from its last timestamp; the entries at that timestamp are taken
    /// from the next page only, so entries sharing a timestamp across the page
    /// boundary are counted once.
    pub async fn page_through<F, Fut>(
        &mut self,
        start: i64,
        end: i64,
        limit: usize,
        mut fetch: F,
        keep: impl Fn(&Found) -> bool,
    ) -> Result<(), CheckError>
    where
        F: FnMut(i64, i64) -> Fut,
        Fut: Future<Output = Result<Vec<Found>, CheckError>>,
    {
        let limit = limit.max(1);
        let mut start = start;
        loop {
            let page = fetch(start, end).await?;
            let boundary = if page.len() >= limit {
                let newest = page.iter().map(|f| f.timestamp_ns).max().unwrap_or(start);
                if newest <= start {
                    // The whole page is at `start`: the next one would be the same.
                    return Err(CheckError::Stuck {
                        limit,
                        timestamp_ns: start,
                    });
                }
                Some(newest)
            } else {
                None
            };
            for f in page.iter().filter(|f| f.ours && keep(f)) {
                let ts = f.timestamp_ns;
                if ts < start || ts >= end || boundary.is_some_and(|b| ts >= b) {
                    continue;
                }
                self.counts.found(f.key(), &f.line);
            }
            match boundary {
                Some(b) => start = b,
                None => return Ok(()),
            }
        }
    }

    /// Per record, in order: whether Loki holds it.
    pub fn finish(mut self, records: &[&LogRecord]) -> Vec<bool> {
        records
            .iter()
            .map(|r| self.counts.take_found(original_time(r), &r.line))
            .collect()
    }
}

/// The multiset of the records' (time, line) pairs: per pair, how many
/// records have it and how many of those Loki was found to hold. Keyed by the
/// line's hash so a page's lines are looked up without copying the records'.
#[derive(Default)]
struct Counts<'a> {
    pairs: HashMap<(i64, u64), Vec<Pair<'a>>>,
    /// The pairs' lines by time, for a stored line that is the start of one
    /// (a line cut to Loki's limit).
    by_time: HashMap<i64, Vec<(u64, usize)>>,
}

struct Pair<'a> {
    line: &'a str,
    wanted: usize,
    found: usize,
}

fn line_hash(line: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    line.hash(&mut h);
    h.finish()
}

impl<'a> Counts<'a> {
    fn pair(&mut self, ts: i64, line: &str) -> Option<&mut Pair<'a>> {
        self.pairs
            .get_mut(&(ts, line_hash(line)))?
            .iter_mut()
            .find(|p| p.line == line)
    }

    fn want(&mut self, ts: i64, line: &'a str) {
        match self.pair(ts, line) {
            Some(p) => p.wanted += 1,
            None => {
                let hash = line_hash(line);
                let at = self.pairs.entry((ts, hash)).or_default();
                at.push(Pair {
                    line,
                    wanted: 1,
                    found: 0,
                });
                let index = at.len() - 1;
                self.by_time.entry(ts).or_default().push((hash, index));
            }
        }
    }

    /// Loki holds one more of this pair (beyond what the records have, it is
    /// ignored), or of a record whose line starts with `line` (cut).
    fn found(&mut self, ts: i64, line: &str) {
        if let Some(p) = self.pair(ts, line) {
            p.found = (p.found + 1).min(p.wanted);
            return;
        }
        if line.is_empty() {
            return;
        }
        let Some(at) = self.by_time.get(&ts) else {
            return;
        };
        for &(hash, index) in at {
            let Some(p) = self
                .pairs
                .get_mut(&(ts, hash))
                .and_then(|v| v.get_mut(index))
            else {
                continue;
            };
            if p.found < p.wanted && p.line.len() > line.len() && p.line.starts_with(line) {
                p.found += 1;
                return;
            }
        }
    }

    /// Whether one more record of this pair is held by Loki (and counts it).
    fn take_found(&mut self, ts: i64, line: &str) -> bool {
        match self.pair(ts, line) {
            Some(p) if p.found > 0 => {
                p.found -= 1;
                true
            }
            _ => false,
        }
    }
}

/// Which of `records` Loki at `push_url` already holds, in the records' order:
/// each stream checked with [`Tally`] through `client` (the push's
/// credentials, tenant, CA and proxy), over the records' time range, and, with
/// `rewritten_since`, over the time since then for entries sent again at a new
/// time. Not bounded in time here: the caller is.
pub async fn check(
    client: &LokiClient,
    push_url: &str,
    records: &[LogRecord],
    rewritten_since: Option<i64>,
) -> Result<Vec<bool>, CheckError> {
    let url = query_url(push_url)?;
    let mut streams: BTreeMap<&Labels, Vec<usize>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        streams.entry(&r.labels).or_default().push(i);
    }
    let now = Timestamp::from_system_time(SystemTime::now() + REWRITTEN_SLACK).as_nanos();
    let mut stored = vec![false; records.len()];
    for (labels, at) in streams {
        let of_stream: Vec<&LogRecord> = at.iter().map(|&i| &records[i]).collect();
        let longest = of_stream.iter().map(|r| r.line.len()).max().unwrap_or(0);
        let limit = page_limit(longest);
        let selector = labels.to_string();
        let url = url.as_str();
        let fetch = |query: String| {
            move |start: i64, end: i64| {
                let params = [
                    ("query", query.clone()),
                    ("start", query_time(start)),
                    ("end", query_time(end)),
                    ("limit", limit.to_string()),
                    ("direction", "forward".to_string()),
                ];
                async move {
                    let body = client.query(url, &params, MAX_PAGE_BYTES).await?;
                    parse_page(&body, labels)
                }
            }
        };
        let mut tally = Tally::new(&of_stream);
        // Entries sent again since `rewritten_since` are counted by the second
        // query only, even where the first one's range reaches them.
        let rewritten = rewritten_since.map(|since| (since, now.max(since.saturating_add(1))));
        let counted_later = |f: &Found| {
            f.original_ns.is_some()
                && rewritten.is_some_and(|(s, e)| (s..e).contains(&f.timestamp_ns))
        };
        if let Some((start, end)) = time_range(&of_stream) {
            tally
                .page_through(start, end, limit, fetch(selector.clone()), |f| {
                    !counted_later(f)
                })
                .await?;
        }
        if let Some((start, end)) = rewritten {
            let query = format!("{selector} | {ORIGINAL_TIMESTAMP} != \"\"");
            tally
                .page_through(start, end, limit, fetch(query), |f| f.original_ns.is_some())
                .await?;
        }
        for (i, s) in at.into_iter().zip(tally.finish(&of_stream)) {
            stored[i] = s;
        }
    }
    Ok(stored)
}

/// The entries of a `query_range` answer for streams (`resultType` `streams`),
/// each marked whether its stream carries `labels` (see [`Found::ours`]). A
/// label of ours with an empty value matches a stream without it, as in LogQL.
pub fn parse_page(body: &[u8], labels: &Labels) -> Result<Vec<Found>, CheckError> {
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| CheckError::Parse(e.to_string()))?;
    if answer.status != "success" {
        return Err(CheckError::Parse(format!("status {:?}", answer.status)));
    }
    if answer.data.result_type != "streams" {
        return Err(CheckError::Parse(format!(
            "resultType {:?}, expected \"streams\"",
            answer.data.result_type
        )));
    }
    let mut out = Vec::new();
    for stream in answer.data.result {
        let ours = labels
            .iter()
            .all(|(k, v)| stream.stream.get(k).map_or("", String::as_str) == v);
        // Without categorized labels, structured metadata shows as labels.
        let of_stream = stream.stream.get(ORIGINAL_TIMESTAMP).cloned();
        out.extend(stream.values.into_iter().map(|v| {
            Found {
                timestamp_ns: v.timestamp_ns,
                line: v.line,
                ours,
                original_ns: v
                    .original
                    .as_deref()
                    .or(of_stream.as_deref())
                    .and_then(from_rfc3339)
                    .map(Timestamp::as_nanos),
            }
        }));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    data: AnswerData,
}

#[derive(Deserialize)]
struct AnswerData {
    #[serde(rename = "resultType")]
    result_type: String,
    #[serde(default)]
    result: Vec<AnswerStream>,
}

#[derive(Deserialize)]
struct AnswerStream {
    #[serde(default)]
    stream: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<AnswerValue>,
}

/// `["<ns>", "<line>"]`, or with a third element (Loki 3.x with categorize-labels:
/// the entry's structured metadata and parsed labels), of which only
/// `original_timestamp` is kept.
struct AnswerValue {
    timestamp_ns: i64,
    line: String,
    original: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Categorized {
    #[serde(rename = "structuredMetadata")]
    structured_metadata: BTreeMap<String, String>,
}

impl<'de> Deserialize<'de> for AnswerValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnswerValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of a timestamp string and a line")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnswerValue, A::Error> {
                let ts: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let line: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                // Anything else than a map of maps of strings there is not ours.
                let original = seq
                    .next_element::<serde_json::Value>()?
                    .and_then(|v| serde_json::from_value::<Categorized>(v).ok())
                    .and_then(|mut c| c.structured_metadata.remove(ORIGINAL_TIMESTAMP));
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                let timestamp_ns = ts.parse().map_err(|_| {
                    de::Error::custom(format!("timestamp {ts:?} is not nanoseconds"))
                })?;
                Ok(AnswerValue {
                    timestamp_ns,
                    line,
                    original,
                })
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests;
