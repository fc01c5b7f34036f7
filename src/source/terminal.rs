//! What a terminal would show: turns the raw bytes of one physical line (as a tmux
//! pane or a program writing to a tty printed them) into the text to ship.
//!
//! Promises, for any input bytes (no panic, whatever they are):
//! - the output holds no escape sequence and no control character but TAB: CSI
//!   (with private modes such as `ESC[?2004h`, SGR colours, cursor moves, erases),
//!   OSC (ended by BEL or ST), DCS/SOS/PM/APC strings, charset designations
//!   (`ESC(B`), two-byte escapes (`ESC=`, `ESC7`, `ESCM`…) and the C1 controls in
//!   their UTF-8 form (U+009B as CSI…) are removed, each counted once in
//!   [`RenderStats::sequences_stripped`];
//! - other control characters (NUL, BEL, DEL, stray C1) are dropped and counted in
//!   [`RenderStats::controls_dropped`]: a NUL in a log line is noise from a
//!   preallocated or crashed writer, never text a reader wants, and a NUL would
//!   make the line awkward for every consumer downstream;
//! - a carriage return moves the cursor to column 0 and later text overwrites
//!   from there, so a progress bar redrawn with `\r` ships as its last state; where
//!   the new text is shorter, the rest of the old text stays visible as it would on
//!   screen, unless an erase (`ESC[K`, `ESC[2K`) removed it. A trailing `\r` (the
//!   `\r\n` of a tty) changes nothing;
//! - a backspace moves the cursor one column left; at the end of the text it
//!   removes the character before it (the issue's rule: `abc\b` ships `ab`), in the
//!   middle of the text it only moves, and the next character overwrites, as on a
//!   terminal. Horizontal cursor moves (`ESC[nC`, `ESC[nD`, `ESC[nG`), save and
//!   restore (`ESC7`/`ESC8`, `ESC[s`/`ESC[u`), erase, delete and insert of
//!   characters (`ESC[K`, `ESC[nX`, `ESC[nP`, `ESC[n@`) act on the line the same way;
//!   vertical moves cannot be shown on one line and are only removed;
//! - overwriting works on characters (UTF-8 scalar values), one column each: wide
//!   characters are not measured, a TAB is one column;
//! - invalid UTF-8 is replaced with U+FFFD and the line counted in
//!   [`RenderStats::invalid_utf8_lines`];
//! - bounded work: linear in the line's length. A line holding no control byte is
//!   copied as it is after one vectorisable scan; otherwise the cursor never moves
//!   past the line's length in columns (so the output is at most twice as many
//!   characters as the input has bytes), and the work that fills, pads or shifts
//!   cells is drawn from a budget of a few times the line's length: past it such
//!   an edit is skipped (the sequence is still removed), so no `\r` or erase storm
//!   turns quadratic.
//!
//! A hand-written state machine rather than the `vte` crate: we need the line model
//! (cursor, overwrite, erase) on top of any parser anyway, the states we need are
//! few, and working on runs lets plain text between two colour codes be copied with
//! one `push_str` instead of one callback per character. It follows ECMA-48's
//! shape as `vte` does: C0 controls inside a sequence act, CAN/SUB cancel it, an
//! ESC inside a string ends it and starts a new sequence.
//!
//! This file holds the fast path and the line being drawn (cursor, overwrite,
//! erase); [`vt`] holds the state machine that reads the escape sequences.

use std::borrow::Cow;

pub mod mark;
#[cfg(test)]
mod tests;
mod vt;

use vt::{CsiParams, State, Step};

/// Counts of what `render` changed, for the tailer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenderStats {
    /// Lines that held invalid UTF-8 (replaced with U+FFFD).
    pub invalid_utf8_lines: u64,
    /// Escape sequences removed.
    pub sequences_stripped: u64,
    /// Control characters dropped (NUL, BEL, DEL, stray C1 controls…); TAB is kept,
    /// carriage return and backspace act on the line.
    pub controls_dropped: u64,
}

/// The text a terminal would show for `line` (no trailing `\n`; a trailing `\r` is
/// dropped). Never fails: invalid UTF-8 is replaced and counted in `stats`.
pub fn render(line: &[u8], stats: &mut RenderStats) -> String {
    if let Some(text) = plain(line) {
        return text;
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text: Cow<'_, str> = match simdutf8::basic::from_utf8(line) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            stats.invalid_utf8_lines += 1;
            String::from_utf8_lossy(line)
        }
    };
    match first_special(text.as_bytes()) {
        None => text.into_owned(),
        Some(at) => Screen::new(line.len(), stats).render(&text, at),
    }
}

/// `line` itself when it is valid UTF-8 holding no byte a terminal acts on
/// (what [`render`] gives for it, nothing counted); `None` for any other line,
/// found at its first control byte. A plain line holds no ESC, so no run mark
/// either ([`mark`]).
pub fn plain(line: &[u8]) -> Option<String> {
    // The `\r` of a tty's `\r\n` only moves the cursor after the last character:
    // nothing visible changes, and dropping it keeps such lines plain.
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if first_special(line).is_some() {
        return None;
    }
    // simdutf8 answers as `std::str::from_utf8` does, in about half the
    // instructions on a line of 64 bytes or more (decision 030).
    simdutf8::basic::from_utf8(line).ok().map(str::to_owned)
}

/// Is `b` a byte the fast path cannot copy: a C0 control but TAB, DEL, or 0xC2
/// (the lead byte of the C1 controls U+0080..U+009F, and of some printable
/// characters, which [`first_special`] then lets through).
#[inline(always)]
fn maybe_special(b: u8) -> u8 {
    ((b < 0x20) & (b != b'\t')) as u8 | (b == 0x7f) as u8 | (b == 0xc2) as u8
}

/// Is `b` outside printable ASCII (`0x20..=0x7e`): TAB, the other controls, DEL
/// and every byte of a non-ASCII character. One comparison, where
/// [`maybe_special`] takes five: the screen a chunk of plain ASCII passes.
#[inline(always)]
fn outside_printable_ascii(b: u8) -> u8 {
    (b.wrapping_sub(0x20) > 0x7e - 0x20) as u8
}

/// Offset of the first byte in `bytes` that is not plain text, if any. Scans in
/// fixed chunks with a branch-free fold so the compiler vectorises it.
fn first_special(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let at = from + first_candidate(&bytes[from..])?;
        // 0xC2 starts a C1 control only when the next byte is 0x80..=0x9F;
        // otherwise it is a printable character such as `©` or `°`.
        if bytes[at] != 0xc2 || matches!(bytes.get(at + 1), Some(0x80..=0x9f)) {
            return Some(at);
        }
        from = at + 1;
    }
}

/// Bytes [`first_candidate`] looks at in one step (four SSE2 vectors).
const CHUNK: usize = 64;

/// Offset of the first byte of `bytes` for which [`maybe_special`] holds. Whole
/// chunks only, so no byte is looked at one by one unless its chunk holds a
/// candidate: a line shorter than a chunk is scanned as a copy padded with
/// spaces, and the bytes after the last whole chunk as the last `CHUNK` bytes of
/// the line (those before them were found plain already, so a candidate there
/// is the first).
fn first_candidate(bytes: &[u8]) -> Option<usize> {
    let Some(last) = bytes.last_chunk::<CHUNK>() else {
        let mut padded = [b' '; CHUNK];
        padded[..bytes.len()].copy_from_slice(bytes);
        return chunk_candidate(&padded);
    };
    let (chunks, rest) = bytes.as_chunks::<CHUNK>();
    for (i, chunk) in chunks.iter().enumerate() {
        if let Some(at) = chunk_candidate(chunk) {
            return Some(i * CHUNK + at);
        }
    }
    if rest.is_empty() {
        return None;
    }
    chunk_candidate(last).map(|at| bytes.len() - CHUNK + at)
}

/// [`first_candidate`] in one chunk. Plain ASCII passes the cheap screen; a
/// chunk with a TAB or a non-ASCII character takes the exact test, and only a
/// chunk holding a candidate is searched byte by byte.
#[inline(always)]
fn chunk_candidate(chunk: &[u8; CHUNK]) -> Option<usize> {
    let any = |f: fn(u8) -> u8| chunk.iter().fold(0u8, |acc, &b| acc | f(b)) != 0;
    if !any(outside_printable_ascii) || !any(maybe_special) {
        return None;
    }
    chunk.iter().position(|&b| maybe_special(b) != 0)
}

/// One terminal line being drawn.
///
/// Two representations: while the cursor has only ever been at the end of the text
/// (the common case: colours, no `\r`), characters are appended to `text`; the
/// first move back switches to `cells`, one `char` per column, overwritable.
struct Screen<'s> {
    stats: &'s mut RenderStats,
    text: String,
    cells: Vec<char>,
    overwrite: bool,
    /// Column of the cursor (in `cells` mode; in append mode it is the end).
    cursor: usize,
    /// Saved cursor column (`ESC7`, `ESC[s`).
    saved: usize,
    /// Moves never take the cursor past this column (the input's length in bytes).
    max_cols: usize,
    /// Cells still allowed to be filled, padded or shifted (see the module doc).
    budget: usize,
    params: CsiParams,
}

impl<'s> Screen<'s> {
    fn new(len: usize, stats: &'s mut RenderStats) -> Self {
        Self {
            stats,
            text: String::with_capacity(len),
            cells: Vec::new(),
            overwrite: false,
            cursor: 0,
            saved: 0,
            max_cols: len,
            budget: len.saturating_mul(4).saturating_add(1024),
            params: CsiParams::default(),
        }
    }

    /// Draws `text`, whose first `plain` bytes hold no control byte.
    fn render(mut self, text: &str, plain: usize) -> String {
        let bytes = text.as_bytes();
        self.print(&text[..plain]);
        let mut state = State::Ground;
        let mut i = plain;
        while i < bytes.len() {
            if state == State::Ground {
                let run_end = first_special(&bytes[i..]).map_or(bytes.len(), |k| i + k);
                if run_end > i {
                    self.print(&text[i..run_end]);
                    i = run_end;
                    continue;
                }
            }
            let Some(c) = text[i..].chars().next() else {
                break;
            };
            match self.step(state, c) {
                Step::Next(next) => {
                    state = next;
                    i += c.len_utf8();
                }
                // The sequence was cut short by `c`, which starts over in ground.
                Step::Again(next) => state = next,
            }
        }
        if self.overwrite {
            self.cells.into_iter().collect()
        } else {
            self.text
        }
    }

    fn print(&mut self, s: &str) {
        if self.overwrite {
            for c in s.chars() {
                self.put(c);
            }
        } else {
            self.text.push_str(s);
        }
    }

    fn put(&mut self, c: char) {
        if self.cursor < self.cells.len() {
            self.cells[self.cursor] = c;
        } else {
            let gap = self.cursor - self.cells.len();
            if gap > 0 && self.spend(gap) {
                self.cells.resize(self.cursor, ' ');
            } else {
                self.cursor = self.cells.len();
            }
            self.cells.push(c);
        }
        self.cursor += 1;
    }

    /// Takes `cost` cells of work from the budget, if it has them.
    fn spend(&mut self, cost: usize) -> bool {
        match self.budget.checked_sub(cost) {
            Some(rest) => {
                self.budget = rest;
                true
            }
            None => false,
        }
    }

    /// Switches to overwritable cells, with the cursor at the end of the text.
    fn cells_mode(&mut self) {
        if !self.overwrite {
            self.overwrite = true;
            self.cells = self.text.chars().collect();
            self.cursor = self.cells.len();
            self.text = String::new();
        }
    }

    fn column(&mut self) -> usize {
        self.cells_mode();
        self.cursor
    }

    fn move_to(&mut self, col: usize) {
        self.cells_mode();
        self.cursor = col.min(self.max_cols);
    }

    fn carriage_return(&mut self) {
        // Nothing drawn yet (`ESC[?2004l\r` before a line): the cursor is at 0.
        if !self.overwrite && self.text.is_empty() {
            return;
        }
        self.move_to(0);
    }

    fn backspace(&mut self) {
        if !self.overwrite {
            self.text.pop();
        } else if self.cursor > 0 {
            if self.cursor == self.cells.len() {
                self.cells.pop();
            }
            self.cursor -= 1;
        }
    }

    fn save_cursor(&mut self) {
        self.saved = self.column();
    }

    fn restore_cursor(&mut self) {
        self.move_to(self.saved);
    }

    /// `ESC[K` (0: cursor to end), `ESC[1K` (start to cursor), `ESC[2K` (all).
    fn erase_in_line(&mut self, mode: usize) {
        if !self.overwrite && mode == 0 {
            return; // the cursor is at the end: nothing after it
        }
        self.cells_mode();
        let len = self.cells.len();
        match mode {
            0 => self.cells.truncate(self.cursor),
            1 if self.cursor + 1 >= len => self.cells.clear(),
            1 => {
                if self.spend(self.cursor + 1) {
                    self.cells[..=self.cursor].fill(' ');
                }
            }
            // The cursor stays: text printed next starts at its column.
            _ => self.cells.clear(),
        }
    }

    /// `ESC[nX`: blanks `n` characters from the cursor on.
    fn erase_chars(&mut self, n: usize) {
        if !self.overwrite {
            return;
        }
        let end = self.cursor.saturating_add(n);
        if end >= self.cells.len() {
            self.cells.truncate(self.cursor);
        } else if self.spend(n) {
            self.cells[self.cursor..end].fill(' ');
        }
    }

    /// `ESC[nP`: deletes `n` characters at the cursor; the rest shifts left.
    fn delete_chars(&mut self, n: usize) {
        if !self.overwrite || self.cursor >= self.cells.len() {
            return;
        }
        let end = self.cursor.saturating_add(n).min(self.cells.len());
        if self.spend(self.cells.len() - self.cursor) {
            self.cells.drain(self.cursor..end);
        }
    }

    /// `ESC[n@`: inserts `n` blanks at the cursor; the rest shifts right.
    fn insert_blanks(&mut self, n: usize) {
        if !self.overwrite || self.cursor >= self.cells.len() {
            return;
        }
        let n = n.min(self.max_cols);
        if self.spend(self.cells.len() - self.cursor + n) {
            self.cells
                .splice(self.cursor..self.cursor, std::iter::repeat_n(' ', n));
            self.cells.truncate(self.max_cols);
        }
    }
}
