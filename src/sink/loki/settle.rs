//! What becomes of the entries of a push Loki took in part, once it is known
//! which it refused and why ([`super::refusal`]), and how that is logged.
//!
//! Promises ([`plan`], a plain function of its inputs):
//! - stored entries are shipped;
//! - refused as too old or too far behind: with `loki.refused_entries =
//!   "rewrite"` sent again at the time Loki refused them (plus a nanosecond per
//!   entry, so none of them collapse into another), their own time kept in the
//!   structured metadata `original_timestamp` (RFC 3339 with nanoseconds); the
//!   push in flight is marked with that time first, so a restart's check finds
//!   them; an entry already sent again that way and refused again for its time
//!   is dropped (the clocks disagree: sending it again would not end). With
//!   `"drop"`, dropped;
//! - too long: cut to the limit Loki named (at a character boundary) and sent
//!   again;
//! - over a rate or stream limit: sent again unchanged, after the backoff;
//! - anything else: dropped;
//! - refused without a cause the answer tells (it hid it): sent again
//!   unchanged once, for Loki to tell; refused so again, dropped as `other`.
//!
//! Every refusal is counted by cause, every change and drop too; the log has
//! one line for the first refusal of each cause, with Loki's words on one line,
//! then a line every [`SUMMARY_EVERY`] summing up the refusals since.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use super::refusal::{Answer, Cause};
use super::replay::ORIGINAL_TIMESTAMP;
use crate::config::RefusedEntries;
use crate::event::Repeated;
use crate::record::{LogRecord, Timestamp};
use crate::sink::retry::{bounded_text, one_line};

/// Refusals after the first of their cause are summed up in one log line this
/// often (when there were some).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// What Loki did with one entry of a push it took in part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Stored,
    Refused(Cause),
    /// Not stored, and the answer does not say why.
    Unexplained,
}

/// Counts of one settled push, by cause.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub shipped: u64,
    pub refused: BTreeMap<Cause, u64>,
    /// Refusals of an earlier push whose cause Loki did not tell, told by this
    /// one (by the cause it told; `other` for entries it took this time).
    pub hidden: BTreeMap<Cause, u64>,
    /// Sent again changed: at a new time, or cut.
    pub rewritten: BTreeMap<Cause, u64>,
    /// Lost.
    pub dropped: BTreeMap<Cause, u64>,
    /// Sent again for Loki to say why it refused them.
    pub second_looks: u64,
    /// An entry already sent again at a new time was refused again for its time.
    pub clocks_disagree: bool,
}

impl Counts {
    fn add(map: &mut BTreeMap<Cause, u64>, cause: Cause) {
        *map.entry(cause).or_default() += 1;
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

/// What to do next.
#[derive(Debug)]
pub struct Plan {
    pub resend: Vec<LogRecord>,
    /// The time the first entry sent again at a new time got.
    pub mark: Option<u64>,
    /// Something is sent again for a rate or stream limit: after the backoff.
    pub wait: bool,
    pub counts: Counts,
}

/// Decides the fate of each record of a push (`fates`, in the records' order).
/// `line_limit` is the limit Loki named for lines; `now` the time refused
/// entries are sent again at; `looked` the records already sent again for
/// Loki to say why it refused them (by [`record_key`]).
pub fn plan(
    records: Vec<LogRecord>,
    fates: Vec<Fate>,
    line_limit: Option<usize>,
    mode: RefusedEntries,
    now: Timestamp,
    looked: &mut HashSet<u64>,
) -> Plan {
    let mut plan = Plan {
        resend: Vec::new(),
        mark: None,
        wait: false,
        counts: Counts::default(),
    };
    let mut next_ns = now.as_nanos();
    for (mut r, fate) in records.into_iter().zip(fates) {
        let c = &mut plan.counts;
        let key = record_key(&r);
        // Sent again for Loki to tell why it refused it: that refusal counts
        // now, by the cause Loki tells.
        let second_look = looked.contains(&key);
        let cause = match fate {
            Fate::Stored => {
                c.shipped += 1;
                if second_look {
                    Counts::add(&mut c.hidden, Cause::Other);
                }
                continue;
            }
            Fate::Unexplained if !second_look => {
                looked.insert(key);
                c.second_looks += 1;
                plan.resend.push(r);
                continue;
            }
            Fate::Unexplained => Cause::Other,
            Fate::Refused(cause) => cause,
        };
        Counts::add(&mut c.refused, cause);
        if second_look {
            Counts::add(&mut c.hidden, cause);
        }
        match cause {
            Cause::TooOld | Cause::TooFarBehind => {
                let rewritten = r
                    .structured_metadata
                    .iter()
                    .any(|(k, _)| k == ORIGINAL_TIMESTAMP);
                if mode == RefusedEntries::Drop || rewritten {
                    c.clocks_disagree |= rewritten;
                    Counts::add(&mut c.dropped, cause);
                    continue;
                }
                r.structured_metadata
                    .push((ORIGINAL_TIMESTAMP.to_string(), r.timestamp.to_string()));
                r.timestamp = Timestamp(next_ns);
                plan.mark
                    .get_or_insert(u64::try_from(next_ns).unwrap_or(1).max(1));
                next_ns = next_ns.saturating_add(1);
                Counts::add(&mut c.rewritten, cause);
                plan.resend.push(r);
            }
            Cause::TooLong => match line_limit.and_then(|limit| cut(&r.line, limit)) {
                Some(at) => {
                    r.line.truncate(at);
                    Counts::add(&mut c.rewritten, cause);
                    plan.resend.push(r);
                }
                None => Counts::add(&mut c.dropped, cause),
            },
            Cause::RateLimited | Cause::StreamLimit => {
                plan.wait = true;
                plan.resend.push(r);
            }
            Cause::Other => Counts::add(&mut c.dropped, cause),
        }
    }
    plan
}

/// Where to cut `line` to at most `limit` bytes (a character boundary), when
/// that leaves something and shortens it.
fn cut(line: &str, limit: usize) -> Option<usize> {
    if line.len() <= limit {
        return None;
    }
    let mut at = limit;
    while at > 0 && !line.is_char_boundary(at) {
        at -= 1;
    }
    (at > 0).then_some(at)
}

/// A record's identity for [`plan`]'s `looked`: stream, time and line.
pub fn record_key(r: &LogRecord) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    r.labels.hash(&mut h);
    r.timestamp.hash(&mut h);
    r.line.hash(&mut h);
    h.finish()
}

/// The log of refusals: the first of each cause in full, then a summary every
/// [`SUMMARY_EVERY`].
#[derive(Debug)]
pub struct RefusalLog {
    /// The first refusal of each cause, logged in full.
    firsts: Repeated<Cause>,
    pending: Counts,
    since: Instant,
    /// Loki refusing for its time an entry sent again at its time, logged once.
    clocks: Repeated,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            firsts: Repeated::once(),
            pending: Counts::default(),
            since: Instant::now(),
            clocks: Repeated::once(),
        }
    }
}

impl RefusalLog {
    /// Logs what one settled push of `entries` entries refused (`answer` is
    /// Loki's, `body` as received); returns the line for `status`' last error.
    pub fn note(
        &mut self,
        counts: &Counts,
        answer: &Answer,
        body: &[u8],
        entries: usize,
        line_limit: Option<usize>,
    ) -> Option<String> {
        for (&cause, &n) in &counts.hidden {
            *self.pending.refused.entry(cause).or_default() += n;
        }
        if counts.refused_total() == 0 {
            self.summary_if_due();
            return None;
        }
        let said = |cause: Cause| {
            answer
                .text_of(cause)
                .map(one_line)
                .unwrap_or_else(|| bounded_text(body))
        };
        let mut causes = Vec::new();
        for (&cause, &n) in &counts.refused {
            causes.push(format!("{cause} {n}"));
            let logged = self.firsts.warn(cause, || {
                format!(
                    "loki refused {n} of the {entries} entries of a push as {cause} (status {}): \
                     {}; further refusals are summed up every {} s; loki said: {}",
                    answer.status,
                    action(cause, counts, line_limit),
                    SUMMARY_EVERY.as_secs(),
                    said(cause)
                )
            });
            if !logged {
                *self.pending.refused.entry(cause).or_default() += n;
                for (from, to) in [
                    (&counts.rewritten, &mut self.pending.rewritten),
                    (&counts.dropped, &mut self.pending.dropped),
                ] {
                    if let Some(&k) = from.get(&cause) {
                        *to.entry(cause).or_default() += k;
                    }
                }
            }
        }
        if counts.clocks_disagree {
            self.clocks.warn("clocks", || {
                "loki refused for its time an entry already sent again at the time loki had \
                 refused it: the agent's clock and loki's seem to disagree; dropping such \
                 entries (counted in wisp_loki_records_dropped_total)"
                    .to_string()
            });
        }
        self.summary_if_due();
        let first = counts
            .refused
            .keys()
            .next()
            .copied()
            .unwrap_or(Cause::Other);
        Some(format!(
            "status {}: loki refused {} of the {entries} entries of a push ({}): {}",
            answer.status,
            counts.refused_total(),
            causes.join(", "),
            said(first)
        ))
    }

    /// Logs the refusals summed up since the last summary, when one is due.
    pub fn summary_if_due(&mut self) {
        if self.since.elapsed() < SUMMARY_EVERY {
            return;
        }
        self.since = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        if pending.refused_total() == 0 {
            return;
        }
        let parts: Vec<String> = pending
            .refused
            .iter()
            .map(|(&cause, &n)| {
                let changed = pending.rewritten.get(&cause).copied().unwrap_or(0);
                let dropped = pending.dropped.get(&cause).copied().unwrap_or(0);
                let mut what = Vec::new();
                if changed > 0 {
                    what.push(match cause {
                        Cause::TooLong => format!("{changed} cut"),
                        _ => format!("{changed} sent again at a new time"),
                    });
                }
                if dropped > 0 {
                    what.push(format!("{dropped} dropped"));
                }
                if n > changed + dropped {
                    what.push(format!("{} sent again", n - changed - dropped));
                }
                format!("{cause} {n} ({})", what.join(", "))
            })
            .collect();
        tracing::warn!(
            "loki refused {} entries in the last {} s: {}",
            pending.refused_total(),
            SUMMARY_EVERY.as_secs(),
            parts.join(", ")
        );
    }
}

/// What became of the entries refused for `cause`, in words.
fn action(cause: Cause, counts: &Counts, line_limit: Option<usize>) -> String {
    let changed = counts.rewritten.get(&cause).copied().unwrap_or(0);
    let dropped = counts.dropped.get(&cause).copied().unwrap_or(0);
    let mut what = Vec::new();
    if changed > 0 {
        what.push(match cause {
            Cause::TooLong => format!(
                "{changed} cut to loki's limit of {} bytes and sent again",
                line_limit.unwrap_or(0)
            ),
            _ => format!(
                "{changed} sent again at the time loki refused them, with their own time \
                 in the structured metadata {ORIGINAL_TIMESTAMP} (loki.refused_entries = \"rewrite\")"
            ),
        });
    }
    if dropped > 0 {
        what.push(match cause {
            Cause::TooOld | Cause::TooFarBehind if changed == 0 => format!(
                "{dropped} dropped (loki.refused_entries = \"drop\", or already sent again at a \
                 new time), counted in wisp_loki_records_dropped_total"
            ),
            _ => format!("{dropped} dropped, counted in wisp_loki_records_dropped_total"),
        });
    }
    if cause.passes() {
        what.push("sent again after the backoff".to_string());
    }
    what.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Labels;

    fn rec(ts: i64, line: &str) -> LogRecord {
        LogRecord {
            timestamp: Timestamp(ts),
            labels: Labels::from_pairs([("job", "app")]),
            structured_metadata: Vec::new(),
            line: line.into(),
        }
    }

    #[test]
    fn each_fate_has_its_end_and_is_counted() {
        let records = vec![
            rec(1, "stored"),
            rec(2, "old"),
            rec(3, "behind"),
            rec(4, "éé long"),
            rec(5, "limited"),
            rec(6, "other"),
            rec(7, "unexplained"),
        ];
        let fates = vec![
            Fate::Stored,
            Fate::Refused(Cause::TooOld),
            Fate::Refused(Cause::TooFarBehind),
            Fate::Refused(Cause::TooLong),
            Fate::Refused(Cause::RateLimited),
            Fate::Refused(Cause::Other),
            Fate::Unexplained,
        ];
        let mut looked = HashSet::new();
        let now = Timestamp(1_000);
        let p = plan(
            records.clone(),
            fates.clone(),
            Some(3),
            RefusedEntries::Rewrite,
            now,
            &mut looked,
        );
        type Sent<'a> = (i64, &'a str, Vec<(String, String)>);
        let sent: Vec<Sent> = p
            .resend
            .iter()
            .map(|r| {
                (
                    r.timestamp.0,
                    r.line.as_str(),
                    r.structured_metadata.clone(),
                )
            })
            .collect();
        let orig = |ts: i64| vec![(ORIGINAL_TIMESTAMP.to_string(), Timestamp(ts).to_string())];
        assert_eq!(
            sent,
            [
                (1_000, "old", orig(2)),
                (1_001, "behind", orig(3)),
                // "é" is two bytes: the cut falls back to a character boundary.
                (4, "é", vec![]),
                (5, "limited", vec![]),
                (7, "unexplained", vec![]),
            ]
        );
        assert_eq!(p.mark, Some(1_000));
        assert!(p.wait);
        let c = &p.counts;
        assert_eq!(c.shipped, 1);
        assert_eq!(c.second_looks, 1);
        assert_eq!(c.refused.values().sum::<u64>(), 5);
        assert_eq!(c.rewritten.len(), 3);
        assert_eq!(c.dropped, BTreeMap::from([(Cause::Other, 1)]));
        assert!(c.hidden.is_empty());

        // Unexplained a second time: dropped as other, its first refusal
        // counted with it. Dropped when so configured.
        let p = plan(
            vec![rec(7, "unexplained"), rec(2, "old")],
            vec![Fate::Unexplained, Fate::Refused(Cause::TooOld)],
            None,
            RefusedEntries::Drop,
            now,
            &mut looked,
        );
        assert!(p.resend.is_empty());
        assert_eq!(p.mark, None);
        assert_eq!(
            p.counts.dropped,
            BTreeMap::from([(Cause::TooOld, 1), (Cause::Other, 1)])
        );
        assert_eq!(p.counts.hidden, BTreeMap::from([(Cause::Other, 1)]));
    }

    #[test]
    fn a_refusal_loki_hid_counts_by_the_cause_it_tells_on_the_second_try() {
        let mut looked = HashSet::new();
        let first = plan(
            vec![rec(2, "old"), rec(3, "passing")],
            vec![Fate::Unexplained, Fate::Unexplained],
            None,
            RefusedEntries::Rewrite,
            Timestamp(1_000),
            &mut looked,
        );
        assert_eq!(first.resend.len(), 2);
        assert!(first.counts.refused.is_empty());
        let second = plan(
            first.resend,
            vec![Fate::Refused(Cause::TooOld), Fate::Stored],
            None,
            RefusedEntries::Rewrite,
            Timestamp(2_000),
            &mut looked,
        );
        assert_eq!(second.counts.refused, BTreeMap::from([(Cause::TooOld, 1)]));
        assert_eq!(
            second.counts.hidden,
            BTreeMap::from([(Cause::TooOld, 1), (Cause::Other, 1)])
        );
        assert_eq!(second.counts.shipped, 1);
    }

    #[test]
    fn an_entry_sent_again_at_a_new_time_and_refused_again_for_its_time_is_dropped() {
        let mut looked = HashSet::new();
        let first = plan(
            vec![rec(2, "old")],
            vec![Fate::Refused(Cause::TooOld)],
            None,
            RefusedEntries::Rewrite,
            Timestamp(1_000),
            &mut looked,
        );
        let again = plan(
            first.resend,
            vec![Fate::Refused(Cause::TooOld)],
            None,
            RefusedEntries::Rewrite,
            Timestamp(2_000),
            &mut looked,
        );
        assert!(again.resend.is_empty());
        assert!(again.counts.clocks_disagree);
        assert_eq!(again.counts.dropped, BTreeMap::from([(Cause::TooOld, 1)]));
    }

    #[test]
    fn a_line_is_cut_only_when_that_shortens_it_and_leaves_something() {
        assert_eq!(cut("abcdef", 4), Some(4));
        assert_eq!(cut("abc", 4), None);
        assert_eq!(cut("éé", 1), None);
        assert_eq!(cut("éé", 3), Some(2));
    }
}
