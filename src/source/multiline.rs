//! Joins physical lines into records (`[[files]].multiline`), and says how far the
//! source may checkpoint: never past the start of a record still waiting for its
//! continuation, so a restart neither loses it nor ships half of it twice.
//!
//! (Stub: issue 7 fills in `auto` and `{ start = REGEX }`; for now every line is a
//! record, as with `multiline = "none"`.)

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Multiline;

/// A finished record: its lines joined with `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    pub text: String,
    /// Byte offset in the source just past the record's last line (its newline).
    pub end_offset: u64,
}

/// Bounds of one record.
#[derive(Clone, Debug)]
pub struct JoinerSettings {
    pub mode: Multiline,
    /// At most this many lines in one record (`multiline_max_lines`).
    pub max_lines: usize,
    /// At most this many bytes in one record (`max_line_bytes`).
    pub max_bytes: usize,
    /// A pending record is finished after this silence (`multiline_timeout`).
    pub timeout: Duration,
}

/// The joining state of one source (one file, or one exec stream).
#[derive(Debug)]
pub struct Joiner {
    settings: JoinerSettings,
}

impl Joiner {
    pub fn new(settings: JoinerSettings) -> Self {
        Self { settings }
    }

    /// Feeds one line (already rendered, without its newline) that ends at
    /// `end_offset`; appends to `out` every record this line finishes.
    pub fn push(&mut self, text: String, end_offset: u64, _now: Instant, out: &mut Vec<Joined>) {
        let _ = &self.settings;
        out.push(Joined { text, end_offset });
    }

    /// Finishes the pending record if it has waited `timeout` since its last line.
    pub fn flush_due(&mut self, _now: Instant, _out: &mut Vec<Joined>) {}

    /// Finishes the pending record now (end of input, shutdown).
    pub fn flush(&mut self, _out: &mut Vec<Joined>) {}

    /// When the pending record becomes due, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        None
    }

    /// The offset where the pending record starts: checkpoints stop there.
    pub fn pending_start(&self) -> Option<u64> {
        None
    }
}
