//! Joins physical lines into records (`[[files]].multiline`), and says how far the
//! source may checkpoint: never past the start of a record still waiting for its
//! continuation, so a restart neither loses it nor ships half of it twice.
//!
//! The modes (`crate::config::Multiline`):
//! - `none`: every line is a record, emitted at once; nothing is ever pending.
//! - `auto` (the default): a line that starts with a space or a tab joins the
//!   record before it (pino-pretty fields, `    at …` stack frames, the indented
//!   lines of a Python traceback); a line that starts with `}` or `]` joins too, so
//!   a pretty-printed JSON object (`{`, indented fields, `}`) stays whole; any other
//!   line starts a record. A line that starts with `{` always starts a record, and
//!   when it also ends with `}` it is a complete JSON document (a Pino line): it is
//!   emitted at once and nothing joins it, so JSON lines are never joined to each
//!   other nor to an indented line after them (such as the rest of a line two
//!   writers interleaved), and a stream of Pino lines never waits for a timeout.
//!   Note that a Python traceback's last line (`ValueError: x`) is not indented:
//!   with `auto` it is a record of its own; a `start` pattern that matches the
//!   program's log prefix joins it to the traceback.
//! - `{ start = REGEX }`: a record starts at a line matching the pattern; any other
//!   line joins the record before it. Lines before the first match are records of
//!   their own.
//!
//! A joined record is its lines joined with `\n`. Bounds: at most `max_lines`
//! lines and `max_bytes` bytes (newlines included). A line that would take a record
//! past either bound is neither cut nor dropped: the record is finished without it
//! and the line becomes the first line of the next record (which then collects the
//! continuation lines after it). A record that can no longer grow (it reached a
//! bound) is emitted at once instead of waiting. A single line longer than
//! `max_bytes` is a record by itself: cutting lines is the reader's job.
//!
//! A pending record is finished by the next line that starts a record, by
//! [`Joiner::flush_due`] once `timeout` has passed since its last line (the caller
//! wakes at [`Joiner::deadline`]), or by [`Joiner::flush`] at end of input or
//! shutdown. Time is passed in, so tests need no sleeping.
//!
//! Offsets: each line is pushed with its `end_offset` (just past its `\n`); a line
//! starts where the line pushed before it ended, and the first line after
//! [`Joiner::new`] starts at 0, after [`Joiner::reset`] at the offset given (a
//! checkpoint resumed, or a file truncated or replaced). Records are emitted in
//! the order of their lines, so their end offsets only grow, and
//! [`Joiner::pending_start`] is where the caller's checkpoint must stop.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{FileConfig, Multiline};

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

impl JoinerSettings {
    /// The settings of one `[[files]]` entry.
    pub fn from_file_config(file: &FileConfig) -> Self {
        Self {
            mode: file.multiline.clone(),
            max_lines: file.multiline_max_lines,
            max_bytes: file.max_line_bytes.as_usize(),
            timeout: file.multiline_timeout.get(),
        }
    }
}

/// The joining state of one source (one file, or one exec stream).
#[derive(Debug)]
pub struct Joiner {
    settings: JoinerSettings,
    /// Where the next pushed line starts: the end of the line pushed before it.
    next_start: u64,
    /// `start` mode: has a line matched yet? Before that, lines stand alone.
    seen_start: bool,
    /// The record still open to continuation lines. Never one that cannot grow.
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    text: String,
    lines: usize,
    /// Offset of the record's first line: checkpoints stop here.
    start: u64,
    end: u64,
    last_line_at: Instant,
}

/// What a line does to the record before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A record by itself, finished at once (mode `none`, a complete JSON line).
    Alone,
    /// Starts a record that later lines may join.
    Head,
    /// Joins the pending record, or heads one when there is none.
    Continuation,
}

impl Joiner {
    /// A joiner whose first line starts at offset 0; see [`Joiner::reset`] to start
    /// elsewhere.
    pub fn new(settings: JoinerSettings) -> Self {
        Self {
            settings,
            next_start: 0,
            seen_start: false,
            pending: None,
        }
    }

    /// Starts over at `start_offset` (a resumed checkpoint, a truncated or
    /// replaced file): the next line pushed starts there. A pending record is
    /// discarded, so call [`Joiner::flush`] first to ship it.
    pub fn reset(&mut self, start_offset: u64) {
        self.next_start = start_offset;
        self.seen_start = false;
        self.pending = None;
    }

    /// Feeds one line (already rendered, without its newline) that ends at
    /// `end_offset`; appends to `out` every record this line finishes (the pending
    /// one, and this line's own when it cannot grow).
    pub fn push(&mut self, text: String, end_offset: u64, now: Instant, out: &mut Vec<Joined>) {
        let start = std::mem::replace(&mut self.next_start, end_offset);
        match self.role(&text) {
            Role::Alone => {
                self.flush(out);
                out.push(Joined { text, end_offset });
            }
            Role::Head => {
                self.flush(out);
                self.begin(text, start, end_offset, now, out);
            }
            Role::Continuation => {
                let max_lines = self.settings.max_lines;
                let max_bytes = self.settings.max_bytes;
                match &mut self.pending {
                    Some(p)
                        if p.lines < max_lines && p.text.len() + 1 + text.len() <= max_bytes =>
                    {
                        p.text.push('\n');
                        p.text.push_str(&text);
                        p.lines += 1;
                        p.end = end_offset;
                        p.last_line_at = now;
                        if !self.can_grow() {
                            self.flush(out);
                        }
                    }
                    // Nothing to join, or past a bound: this line heads a record.
                    _ => {
                        self.flush(out);
                        self.begin(text, start, end_offset, now, out);
                    }
                }
            }
        }
    }

    /// Finishes the pending record if it has waited `timeout` since its last line.
    pub fn flush_due(&mut self, now: Instant, out: &mut Vec<Joined>) {
        if self.deadline().is_some_and(|due| now >= due) {
            self.flush(out);
        }
    }

    /// Finishes the pending record now (end of input, shutdown).
    pub fn flush(&mut self, out: &mut Vec<Joined>) {
        if let Some(p) = self.pending.take() {
            out.push(Joined {
                text: p.text,
                end_offset: p.end,
            });
        }
    }

    /// When the pending record becomes due, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .map(|p| p.last_line_at + self.settings.timeout)
    }

    /// The offset where the pending record starts: checkpoints stop there.
    pub fn pending_start(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.start)
    }

    /// Is a record waiting for its continuation? A pending record can always still
    /// grow: one that cannot (a bound reached, mode `none`, a complete JSON line)
    /// is emitted at once. So when this is false, every line pushed so far has been
    /// emitted and nothing needs a timer.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    fn role(&mut self, text: &str) -> Role {
        match &self.settings.mode {
            Multiline::None => Role::Alone,
            Multiline::Auto => match text.as_bytes().first() {
                Some(b' ' | b'\t' | b'}' | b']') => Role::Continuation,
                Some(b'{') if ends_with_brace(text) => Role::Alone,
                _ => Role::Head,
            },
            Multiline::Start(pattern) => {
                if pattern.is_match(text) {
                    self.seen_start = true;
                    Role::Head
                } else if self.seen_start {
                    Role::Continuation
                } else {
                    Role::Alone
                }
            }
        }
    }

    fn begin(
        &mut self,
        text: String,
        start: u64,
        end_offset: u64,
        now: Instant,
        out: &mut Vec<Joined>,
    ) {
        self.pending = Some(Pending {
            text,
            lines: 1,
            start,
            end: end_offset,
            last_line_at: now,
        });
        if !self.can_grow() {
            self.flush(out);
        }
    }

    /// Could a continuation line still join the pending record? The shortest one
    /// is `\n` plus one character in `auto` (it starts with a space), `\n` alone
    /// with a `start` pattern (an empty line may join).
    fn can_grow(&self) -> bool {
        let shortest = match self.settings.mode {
            Multiline::Start(_) => 1,
            _ => 2,
        };
        self.pending.as_ref().is_some_and(|p| {
            p.lines < self.settings.max_lines
                && p.text.len().saturating_add(shortest) <= self.settings.max_bytes
        })
    }
}

/// Does `text` end with `}`, trailing ASCII blanks aside? Looks at bytes from the
/// end only: this runs on every JSON line, and `auto` must cost next to nothing.
fn ends_with_brace(text: &str) -> bool {
    text.as_bytes()
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace())
        == Some(&b'}')
}

#[cfg(test)]
mod tests;
