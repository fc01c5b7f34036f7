//! Timestamps unique within a source. Loki keeps one entry per identical
//! (stream, timestamp, line): three identical lines a program writes at once
//! (cloud-init's `ci-info: +-----+` rules), read in one batch and stamped with
//! one read time, would be stored once; so would two identical Pino lines of
//! one millisecond. Each source (a file, by device and inode; an `exec` run)
//! has a [`Clock`] that makes its stamps distinct, in read order:
//!
//! - a line without a time of its own (or whose own time is outside the
//!   window) gets its read time, or 1 ns past the last read time given in the
//!   source when that is not earlier: read times strictly increase;
//! - a line with its own time `t` gets `t`, unless `t` falls within the
//!   current run of own times (from the run's first own time to the last stamp
//!   given in it): then it gets that last stamp + 1 ns. So equal own times get
//!   `t`, `t + 1 ns`, `t + 2 ns` … in read order, and a time that goes on (or
//!   back before the run) starts a new run at itself.
//!
//! Streams are subsets of a source (the level is a label), so stamps unique in
//! a source are unique in each of its streams. Limit: an own time that goes
//! back before the current run is taken as it is, and an identical line stamped
//! at that very time earlier would meet it (a writer's clock going back).
//!
//! Deterministic across a crash: stamps are made once, here, and stored in the
//! spool with their records (a replay of the spool sends the same entries). A
//! source's clock is stored in the spool too, as a resume point of its own
//! (key [`KEY_PREFIX`] + the source's key) in the same commit as the records it
//! stamped; a restart loads it ([`Clocks::restore`]), so the lines read again
//! from the source's resume point are stamped on from exactly where the spool's
//! records end, never onto a stamp already shipped, and lines read again with
//! the same read times (an `exec` client sends its own) get the same stamps.
//! A forgotten source's clock is forgotten with it, so the clocks are as many
//! as the spool's resume points.
//!
//! Cost: a few integer comparisons per line; per batch, one map lookup and one
//! resume point (two small allocations).

use std::collections::HashMap;

use crate::record::{Ack, ResumePoint, Timestamp};
use crate::spool::ResumeState;

/// Resume-point keys of clocks start so, then the source's own key (file keys
/// are 16 bytes, exec run keys start `wisp-exec\0`: neither starts so).
pub const KEY_PREFIX: &[u8] = b"wisp-stamps\0";

/// The format version of a stored clock.
const VERSION: u8 = 1;
const ENCODED_LEN: usize = 25;

/// One source's clock (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// The last read time given, ns.
    read: i64,
    /// The current run of own times: its first own time and the last stamp
    /// given in it (`run_start > run_last`: no run yet).
    run_start: i64,
    run_last: i64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            read: i64::MIN,
            run_start: i64::MAX,
            run_last: i64::MIN,
        }
    }
}

impl Clock {
    /// The stamp of a line stamped with its read time `t`.
    pub fn read_time(&mut self, t: Timestamp) -> Timestamp {
        self.read = if t.0 > self.read {
            t.0
        } else {
            self.read.saturating_add(1)
        };
        Timestamp(self.read)
    }

    /// The stamp of a line whose own time is `t`.
    pub fn own_time(&mut self, t: Timestamp) -> Timestamp {
        if (self.run_start..=self.run_last).contains(&t.0) {
            self.run_last = self.run_last.saturating_add(1);
        } else {
            self.run_start = t.0;
            self.run_last = t.0;
        }
        Timestamp(self.run_last)
    }

    /// The version byte, then the three times (i64 LE each).
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(ENCODED_LEN);
        v.push(VERSION);
        for n in [self.read, self.run_start, self.run_last] {
            v.extend_from_slice(&n.to_le_bytes());
        }
        v
    }

    fn decode(v: &[u8]) -> Option<Clock> {
        if v.len() != ENCODED_LEN || v[0] != VERSION {
            return None;
        }
        let at = |i: usize| Some(i64::from_le_bytes(v.get(i..i + 8)?.try_into().ok()?));
        Some(Clock {
            read: at(1)?,
            run_start: at(9)?,
            run_last: at(17)?,
        })
    }
}

/// The clocks of all sources, by the key of the source's resume point. Sources
/// that store none (a probe's test line, unit tests) share one clock, kept in
/// memory only.
#[derive(Debug, Default)]
pub struct Clocks {
    by_source: HashMap<Vec<u8>, Clock>,
    loose: Clock,
}

/// The source a batch's lines come from: its ack's first resume point that
/// sets a state (a file's, an exec run's).
fn source_key(ack: &Ack) -> Option<&[u8]> {
    ack.resume_points()
        .iter()
        .find(|p| p.state.is_some())
        .map(|p| p.key.as_slice())
}

fn clock_key(source: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(KEY_PREFIX.len() + source.len());
    key.extend_from_slice(KEY_PREFIX);
    key.extend_from_slice(source);
    key
}

impl Clocks {
    /// Loads the clocks the spool's commits left (see the module doc).
    pub fn restore(&mut self, state: &ResumeState) {
        for (key, value) in state {
            if let (Some(source), Some(clock)) =
                (key.strip_prefix(KEY_PREFIX), Clock::decode(value))
            {
                self.by_source.insert(source.to_vec(), clock);
            }
        }
    }

    /// The clock to stamp the lines of the batch acknowledged by `ack` with
    /// (a copy: give it back with [`Clocks::settle`]).
    pub fn clock(&self, ack: &Ack) -> Clock {
        match source_key(ack) {
            Some(k) => self.by_source.get(k).copied().unwrap_or_default(),
            None => self.loose,
        }
    }

    /// Keeps `clock` as the batch's source's clock after its lines were
    /// stamped (when `stamped`), and adds it to `ack` to be stored with the
    /// batch; forgets the clocks of the sources `ack` forgets.
    pub fn settle(&mut self, mut ack: Ack, clock: Clock, stamped: bool) -> Ack {
        let mut points = Vec::new();
        for p in ack.resume_points() {
            if p.state.is_none() && self.by_source.remove(&p.key).is_some() {
                points.push(ResumePoint {
                    key: clock_key(&p.key),
                    state: None,
                });
            }
        }
        if stamped {
            match source_key(&ack) {
                Some(k) => {
                    match self.by_source.get_mut(k) {
                        Some(c) => *c = clock,
                        None => {
                            self.by_source.insert(k.to_vec(), clock);
                        }
                    }
                    points.push(ResumePoint {
                        key: clock_key(k),
                        state: Some(clock.encode()),
                    });
                }
                None => self.loose = clock,
            }
        }
        for p in points {
            ack = ack.with_resume(p);
        }
        ack
    }

    /// How many sources have a clock.
    pub fn len(&self) -> usize {
        self.by_source.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_795_388_400_000_000_000;

    #[test]
    fn read_times_strictly_increase() {
        let mut c = Clock::default();
        let got: Vec<i64> = [T, T, T, T + 1, T + 10, T - 5]
            .into_iter()
            .map(|t| c.read_time(Timestamp(t)).0 - T)
            .collect();
        assert_eq!(got, [0, 1, 2, 3, 10, 11]);
    }

    #[test]
    fn equal_own_times_get_a_nanosecond_each_in_read_order() {
        let mut c = Clock::default();
        let ms = 1_000_000;
        let got: Vec<i64> = [T, T, T, T + ms, T + ms, T + 1, T + 2 * ms]
            .into_iter()
            .map(|t| c.own_time(Timestamp(t)).0 - T)
            .collect();
        // A time before the current run (T + 1 after the run at T + 1 ms)
        // starts a run of its own.
        assert_eq!(got, [0, 1, 2, ms, ms + 1, 1, 2 * ms]);
        // A time inside the run, even one already given, goes after its last.
        let mut c = Clock::default();
        let got: Vec<i64> = [T, T, T + 1, T]
            .into_iter()
            .map(|t| c.own_time(Timestamp(t)).0 - T)
            .collect();
        assert_eq!(got, [0, 1, 2, 3]);
    }

    #[test]
    fn read_times_and_own_times_keep_separate_counts() {
        let mut c = Clock::default();
        assert_eq!(c.own_time(Timestamp(T)).0, T);
        assert_eq!(c.read_time(Timestamp(T)).0, T);
        assert_eq!(c.own_time(Timestamp(T)).0, T + 1);
        assert_eq!(c.read_time(Timestamp(T)).0, T + 1);
    }

    #[test]
    fn the_extremes_saturate_rather_than_wrap() {
        let mut c = Clock::default();
        assert_eq!(c.read_time(Timestamp(i64::MAX)).0, i64::MAX);
        assert_eq!(c.read_time(Timestamp(0)).0, i64::MAX);
        assert_eq!(c.own_time(Timestamp(i64::MAX)).0, i64::MAX);
        assert_eq!(c.own_time(Timestamp(i64::MAX)).0, i64::MAX);
        let mut c = Clock::default();
        assert_eq!(c.read_time(Timestamp(i64::MIN)).0, i64::MIN + 1);
    }

    #[test]
    fn a_clock_is_stored_with_its_batch_restored_and_forgotten_with_its_source() {
        let file = ResumePoint {
            key: vec![7; 16],
            state: Some(vec![1, 2, 3]),
        };
        let mut clocks = Clocks::default();
        let ack = Ack::none().with_resume(file.clone());
        let mut c = clocks.clock(&ack);
        c.read_time(Timestamp(T));
        c.read_time(Timestamp(T));
        let mut ack = clocks.settle(ack, c, true);
        let points = ack.take_resume();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0], file);
        assert_eq!(points[1].key, clock_key(&file.key));

        // A restart: the spool's state gives the clock back.
        let mut state = ResumeState::new();
        for p in &points {
            state.insert(p.key.clone(), p.state.clone().unwrap());
        }
        state.insert(b"wisp-exec\0other".to_vec(), vec![0; 16]);
        state.insert(clock_key(b"bad"), vec![9; 3]);
        let mut restored = Clocks::default();
        restored.restore(&state);
        assert_eq!(restored.len(), 1);
        let ack = Ack::none().with_resume(file.clone());
        assert_eq!(restored.clock(&ack).read_time(Timestamp(T)).0, T + 2);

        // A batch without lines stores no clock.
        let mut marker = restored.settle(ack, Clock::default(), false);
        assert_eq!(marker.take_resume(), vec![file.clone()]);

        // Forgetting the source forgets its clock, once.
        let forget = ResumePoint {
            key: file.key.clone(),
            state: None,
        };
        let ack = Ack::none().with_resume(forget.clone());
        let mut ack = restored.settle(ack, Clock::default(), false);
        let points = ack.take_resume();
        assert_eq!(points.len(), 2);
        assert_eq!(points[1].key, clock_key(&file.key));
        assert_eq!(points[1].state, None);
        assert!(restored.is_empty());
        let mut ack = restored.settle(Ack::none().with_resume(forget), Clock::default(), false);
        assert_eq!(ack.take_resume().len(), 1);
    }

    #[test]
    fn sources_without_a_resume_point_share_one_clock_in_memory() {
        let mut clocks = Clocks::default();
        let mut c = clocks.clock(&Ack::none());
        c.read_time(Timestamp(T));
        let mut ack = clocks.settle(Ack::none(), c, true);
        assert!(ack.take_resume().is_empty());
        assert_eq!(clocks.clock(&Ack::none()).read_time(Timestamp(T)).0, T + 1);
    }
}
