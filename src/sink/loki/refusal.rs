//! Reading Loki's answer to a push it refused in part: which entries it
//! refused, and why.
//!
//! Loki 3.x answers 400 (429 for its rate and stream limits) to a push of which
//! it refused some entries, and stores the rest. Its distributor refuses an
//! entry too old (`reject_old_samples_max_age`), too new (`creation_grace_period`)
//! or too long (`max_line_size`), and a whole stream for its labels; its text is
//! those messages grouped by wording (`N errors like: …`, joined by `; `, in no
//! set order), naming the entry's time to the second at best. An ingester then
//! refuses, per stream, entries too far behind the stream's newest (half of
//! `max_chunk_age`), entries over the stream's rate limit, and a stream it
//! cannot create (`max_streams_per_user`); it lists at most 10 of a stream's
//! refused entries, each with its exact time, then `user 'T', total ignored: N
//! out of M for stream: {…}`. Loki answers with the ingester's text of the last
//! stream that had refusals, or, when no ingester refused any, with the
//! distributor's: one answer never tells of both, nor of two streams.
//!
//! Promises: [`Answer::parse`] never fails (what it does not understand is kept
//! as [`Answer::unknown`]); [`Answer::read_exactly`] says which records were
//! refused only when the answer leaves no doubt (one stream, every refusal
//! accounted for), else `None` and the caller asks Loki what it holds;
//! [`Answer::attribute`] names the cause of a record known to be refused, when
//! the answer tells it. The strings read are Loki's own
//! (`pkg/validation/validate.go`, `pkg/ingester/stream.go`,
//! `pkg/chunkenc/interface.go`, `pkg/util/errors.go`).

use std::collections::HashMap;
use std::fmt;

use crate::record::LogRecord;

mod words;

use words::{
    after, covers, number_before_quote, parse_label_set, parse_listed, rfc3339_s, split_grouped, NS,
};

/// Why Loki refused an entry: the `reason` label of the refusal counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// Older than `reject_old_samples_max_age` (7 days by default).
    TooOld,
    /// Older than its stream's newest entry less half of `max_chunk_age` (1 h
    /// by default), or out of order where Loki takes only ordered writes.
    TooFarBehind,
    /// Longer than `max_line_size` (256 KiB by default).
    TooLong,
    /// Over the tenant's or the stream's ingestion rate.
    RateLimited,
    /// Its stream could not be created: `max_streams_per_user`.
    StreamLimit,
    /// Anything else: too new, its labels, its structured metadata, a text not
    /// understood.
    Other,
}

impl Cause {
    pub const ALL: [Cause; 6] = [
        Cause::TooOld,
        Cause::TooFarBehind,
        Cause::TooLong,
        Cause::RateLimited,
        Cause::StreamLimit,
        Cause::Other,
    ];

    /// The label value: `too_old`, `too_far_behind`, `too_long`,
    /// `rate_limited`, `stream_limit`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::TooOld => "too_old",
            Cause::TooFarBehind => "too_far_behind",
            Cause::TooLong => "too_long",
            Cause::RateLimited => "rate_limited",
            Cause::StreamLimit => "stream_limit",
            Cause::Other => "other",
        }
    }

    /// Loki may take the entry later unchanged (its limits are rates).
    pub fn passes(self) -> bool {
        matches!(self, Cause::RateLimited | Cause::StreamLimit)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A label set as Loki writes it in its messages (`{a="b", c="d"}`).
pub type LabelSet = Vec<(String, String)>;

/// One message of the distributor (validation), with how many entries it
/// stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validation {
    /// `entry for stream '…' has timestamp too old: T, oldest acceptable
    /// timestamp is: C`; times to the second.
    TooOld {
        count: usize,
        stream: Option<LabelSet>,
        cutoff_s: Option<i64>,
    },
    /// `Max entry size 'L' bytes exceeded for stream '…' while adding an entry
    /// with length 'X' bytes`.
    TooLong {
        count: usize,
        stream: Option<LabelSet>,
        limit: usize,
        length: usize,
    },
    /// `entry for stream '…' has timestamp too new: T`.
    TooNew {
        count: usize,
        stream: Option<LabelSet>,
        entry_s: Option<i64>,
    },
    /// Structured metadata refused (disallowed, too large, too many): the
    /// entries of the stream that carry some.
    Metadata {
        count: usize,
        stream: Option<LabelSet>,
    },
    /// A whole stream refused for its labels.
    Stream {
        count: usize,
        stream: Option<LabelSet>,
    },
}

impl Validation {
    fn count(&self) -> usize {
        match self {
            Validation::TooOld { count, .. }
            | Validation::TooLong { count, .. }
            | Validation::TooNew { count, .. }
            | Validation::Metadata { count, .. }
            | Validation::Stream { count, .. } => *count,
        }
    }
}

/// An entry an ingester listed as refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub timestamp_ns: i64,
    pub cause: Cause,
    /// "oldest acceptable timestamp is", to the second, for an entry too far
    /// behind.
    pub cutoff_s: Option<i64>,
}

/// One stream's refusals as an ingester tells them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngesterReport {
    pub stream: Option<LabelSet>,
    /// At most 10 (Loki's `max_returned_stream_errors`).
    pub listed: Vec<Listed>,
    pub ignored: usize,
    /// The entries of the stream the ingester got (after the distributor's
    /// refusals).
    pub out_of: usize,
}

/// Loki's answer to a push, read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Loki refused the whole push before storing any of it: its ingestion
    /// rate limit (or ingestion blocked, `Other`).
    pub refused_whole: Option<Cause>,
    pub validation: Vec<Validation>,
    pub ingester: Option<IngesterReport>,
    /// Streams that could not be created (the stream limit): refused whole.
    pub stream_limit: Vec<Option<LabelSet>>,
    /// Parts of the text not understood.
    pub unknown: Vec<String>,
    /// The body was cut before its end.
    pub cut: bool,
    /// The first message of each cause, for the log.
    texts: Vec<(Cause, String)>,
}

impl Answer {
    /// Reads Loki's answer (`body` as received, `cut` when it was not read
    /// whole).
    pub fn parse(status: u16, body: &[u8], cut: bool) -> Answer {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let mut answer = Answer {
            status,
            cut,
            ..Answer::default()
        };
        if text.contains("total ignored: ") {
            answer.parse_ingester(text);
        } else {
            for part in split_grouped(text) {
                answer.parse_validation(part);
            }
        }
        answer
    }

    /// Whether any of the answer is Loki's account of refused entries (a 429
    /// that is not is a plain "slow down").
    pub fn tells_refusals(&self) -> bool {
        self.refused_whole.is_some()
            || self.ingester.is_some()
            || !self.stream_limit.is_empty()
            || !self.validation.is_empty()
    }

    /// Loki's first words for `cause`, as received.
    pub fn text_of(&self, cause: Cause) -> Option<&str> {
        self.texts
            .iter()
            .find(|(c, _)| *c == cause)
            .map(|(_, t)| t.as_str())
    }

    /// The smallest line limit Loki named.
    pub fn line_limit(&self) -> Option<usize> {
        self.validation
            .iter()
            .filter_map(|v| match v {
                Validation::TooLong { limit, .. } => Some(*limit),
                _ => None,
            })
            .min()
    }

    fn note(&mut self, cause: Cause, text: &str) {
        if !self.texts.iter().any(|(c, _)| *c == cause) {
            self.texts.push((cause, text.to_string()));
        }
    }

    fn parse_ingester(&mut self, text: &str) {
        let mut report = IngesterReport::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(listed) = parse_listed(line) {
                // Before 3.0 each entry named its stream.
                if report.stream.is_none() {
                    report.stream = line
                        .rfind(" for stream: ")
                        .and_then(|at| parse_label_set(&line[at + 13..]));
                }
                self.note(listed.cause, line);
                report.listed.push(listed);
            } else if let Some(at) = line.find("total ignored: ") {
                let rest = &line[at + 15..];
                let mut words = rest.split_whitespace();
                report.ignored = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                report.out_of = match (words.next(), words.next()) {
                    (Some("out"), Some("of")) => {
                        words.next().and_then(|n| n.parse().ok()).unwrap_or(0)
                    }
                    _ => 0,
                };
                if let Some(s) = rest.find("for stream: ") {
                    report.stream = parse_label_set(&rest[s + 12..]);
                }
            } else {
                self.unknown.push(line.to_string());
            }
        }
        self.ingester = Some(report);
    }

    fn parse_validation(&mut self, part: &str) {
        let (count, msg) = match part.split_once(" errors like: ") {
            Some((n, msg)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
                (n.parse().unwrap_or(1), msg)
            }
            _ => (1, part),
        };
        let stream = msg.find('{').and_then(|at| parse_label_set(&msg[at..]));
        if msg.contains("has timestamp too old: ") {
            let cutoff_s = after(msg, "oldest acceptable timestamp is: ").and_then(rfc3339_s);
            self.note(Cause::TooOld, msg);
            self.validation.push(Validation::TooOld {
                count,
                stream,
                cutoff_s,
            });
        } else if msg.contains("has timestamp too new: ") {
            let entry_s = after(msg, "has timestamp too new: ").and_then(rfc3339_s);
            self.note(Cause::Other, msg);
            self.validation.push(Validation::TooNew {
                count,
                stream,
                entry_s,
            });
        } else if let Some(rest) = msg.strip_prefix("Max entry size '") {
            let limit = number_before_quote(rest);
            let length = after(msg, "with length '").and_then(number_before_quote);
            match (limit, length) {
                (Some(limit), Some(length)) => {
                    self.note(Cause::TooLong, msg);
                    self.validation.push(Validation::TooLong {
                        count,
                        stream,
                        limit,
                        length,
                    });
                }
                _ => self.unknown.push(part.to_string()),
            }
        } else if msg.starts_with("Maximum active stream limit exceeded") {
            self.note(Cause::StreamLimit, msg);
            let stream = after(msg, "create stream ").and_then(parse_label_set);
            self.stream_limit.push(stream);
        } else if msg.starts_with("Ingestion rate limit exceeded") {
            self.note(Cause::RateLimited, msg);
            self.refused_whole = Some(Cause::RateLimited);
        } else if msg.starts_with("ingestion blocked for user") {
            self.note(Cause::Other, msg);
            self.refused_whole = Some(Cause::Other);
        } else if msg.contains("structured metadata") {
            self.note(Cause::Other, msg);
            self.validation.push(Validation::Metadata { count, stream });
        } else if [
            "at least one label pair is required",
            "Error parsing labels",
            "label names; limit",
            "has label name too long",
            "has label value too long",
            "has duplicate label name",
            "missing required labels",
        ]
        .iter()
        .any(|w| msg.contains(w))
        {
            self.note(Cause::Other, msg);
            self.validation.push(Validation::Stream { count, stream });
        } else if !msg.is_empty() {
            self.unknown.push(part.to_string());
        }
    }

    /// Which of `records` (the push, in its order) Loki refused, and why, when
    /// the answer leaves no doubt: `Some` with `None` for each record stored
    /// and the cause for each refused. `None` when Loki must be asked: the
    /// push had several streams (the answer tells of one), the ingester's text
    /// hides the distributor's refusals or lists fewer entries than it
    /// refused, times to the second are ambiguous, or anything was not
    /// understood.
    pub fn read_exactly(&self, records: &[LogRecord]) -> Option<Vec<Option<Cause>>> {
        if self.cut || !self.unknown.is_empty() || !self.tells_refusals() {
            return None;
        }
        if let Some(cause) = self.refused_whole {
            return Some(vec![Some(cause); records.len()]);
        }
        let first = records.first()?;
        if records.iter().any(|r| r.labels != first.labels) {
            return None;
        }
        let labels = &first.labels;
        let mut fate: Vec<Option<Cause>> = vec![None; records.len()];
        if let Some(report) = &self.ingester {
            let ours = report.stream.as_ref().is_none_or(|s| covers(s, labels));
            if !ours
                || report.out_of != records.len()
                || report.listed.len() != report.ignored
                || !self.validation.is_empty()
                || !self.stream_limit.is_empty()
            {
                return None;
            }
            // Each listed time must pick out as many records as it lists.
            let mut listed: HashMap<i64, Vec<Cause>> = HashMap::new();
            for l in &report.listed {
                listed.entry(l.timestamp_ns).or_default().push(l.cause);
            }
            for (ts, causes) in listed {
                let at: Vec<usize> = (0..records.len())
                    .filter(|&i| records[i].timestamp.as_nanos() == ts)
                    .collect();
                if at.len() != causes.len() {
                    return None;
                }
                for (i, cause) in at.into_iter().zip(causes) {
                    fate[i] = Some(cause);
                }
            }
            return Some(fate);
        }
        if !self.stream_limit.is_empty() {
            let ours = self
                .stream_limit
                .iter()
                .all(|s| s.as_ref().is_none_or(|s| covers(s, labels)));
            return (ours && self.validation.is_empty())
                .then(|| vec![Some(Cause::StreamLimit); records.len()]);
        }
        // The distributor's messages: Loki checks an entry's age first, then
        // whether it is too new, then its length, then its metadata.
        let mut total = 0;
        let mut old_count = 0;
        let mut cutoff = None;
        for v in &self.validation {
            total += v.count();
            match v {
                Validation::TooOld {
                    count, cutoff_s, ..
                } => {
                    old_count += count;
                    match (cutoff, cutoff_s) {
                        (_, None) => return None,
                        (None, Some(c)) => cutoff = Some(*c),
                        (Some(a), Some(b)) if a != *b => return None,
                        _ => {}
                    }
                }
                Validation::Stream { .. } => {
                    return (self.validation.len() == 1)
                        .then(|| vec![Some(Cause::Other); records.len()]);
                }
                _ => {}
            }
        }
        if let Some(c) = cutoff {
            // The cutoff is named to the second; Loki's own is within it.
            let certain: Vec<usize> = (0..records.len())
                .filter(|&i| records[i].timestamp.as_nanos() < c.saturating_mul(NS))
                .collect();
            let possible: Vec<usize> = (0..records.len())
                .filter(|&i| {
                    records[i].timestamp.as_nanos() < c.saturating_add(1).saturating_mul(NS)
                })
                .collect();
            let pick = if certain.len() == old_count {
                certain
            } else if possible.len() == old_count {
                possible
            } else {
                return None;
            };
            for i in pick {
                fate[i] = Some(Cause::TooOld);
            }
        }
        for v in &self.validation {
            match v {
                Validation::TooOld { .. } | Validation::Stream { .. } => {}
                Validation::TooNew { count, entry_s, .. } => {
                    let s = (*entry_s)?;
                    let at: Vec<usize> = (0..records.len())
                        .filter(|&i| {
                            fate[i].is_none() && records[i].timestamp.as_nanos().div_euclid(NS) == s
                        })
                        .collect();
                    if at.len() != *count {
                        return None;
                    }
                    for i in at {
                        fate[i] = Some(Cause::Other);
                    }
                }
                Validation::TooLong {
                    count,
                    limit,
                    length,
                    ..
                } => {
                    let at: Vec<usize> = (0..records.len())
                        .filter(|&i| {
                            fate[i].is_none()
                                && records[i].line.len() == *length
                                && *length > *limit
                        })
                        .collect();
                    if at.len() != *count {
                        return None;
                    }
                    for i in at {
                        fate[i] = Some(Cause::TooLong);
                    }
                }
                Validation::Metadata { count, .. } => {
                    let at: Vec<usize> = (0..records.len())
                        .filter(|&i| {
                            fate[i].is_none() && !records[i].structured_metadata.is_empty()
                        })
                        .collect();
                    if at.len() != *count {
                        return None;
                    }
                    for i in at {
                        fate[i] = Some(Cause::Other);
                    }
                }
            }
        }
        (fate.iter().flatten().count() == total).then_some(fate)
    }

    /// The cause of `record`'s refusal, known to have been refused (Loki was
    /// asked), when the answer tells it; `None` when it does not.
    pub fn attribute(&self, record: &LogRecord) -> Option<Cause> {
        if let Some(cause) = self.refused_whole {
            return Some(cause);
        }
        let labels = &record.labels;
        let ts = record.timestamp.as_nanos();
        let of_stream = |s: &Option<LabelSet>| s.as_ref().is_none_or(|s| covers(s, labels));
        if self.stream_limit.iter().any(&of_stream) {
            return Some(Cause::StreamLimit);
        }
        if let Some(report) = &self.ingester {
            if of_stream(&report.stream) {
                if let Some(l) = report.listed.iter().find(|l| l.timestamp_ns == ts) {
                    return Some(l.cause);
                }
            }
        }
        for v in &self.validation {
            match v {
                Validation::TooOld {
                    cutoff_s: Some(c), ..
                } if ts < c.saturating_add(1).saturating_mul(NS) => return Some(Cause::TooOld),
                Validation::Stream { stream, .. } if of_stream(stream) => {
                    return Some(Cause::Other)
                }
                _ => {}
            }
        }
        if let Some(limit) = self.line_limit() {
            if record.line.len() > limit {
                return Some(Cause::TooLong);
            }
        }
        // Past the listed ten: the ingester's cutoff, or its rate limit.
        if let Some(report) = &self.ingester {
            if of_stream(&report.stream) && report.listed.len() < report.ignored {
                let behind = report
                    .listed
                    .iter()
                    .filter_map(|l| l.cutoff_s)
                    .max()
                    .is_some_and(|c| ts < c.saturating_add(1).saturating_mul(NS));
                if behind {
                    return Some(Cause::TooFarBehind);
                }
                if report.listed.iter().any(|l| l.cause == Cause::RateLimited) {
                    return Some(Cause::RateLimited);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
