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

use std::borrow::Cow;

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
    // The `\r` of a tty's `\r\n` only moves the cursor after the last character:
    // nothing visible changes, and dropping it keeps such lines on the fast path.
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text: Cow<'_, str> = match std::str::from_utf8(line) {
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

/// Is `b` a byte the fast path cannot copy: a C0 control but TAB, DEL, or 0xC2
/// (the lead byte of the C1 controls U+0080..U+009F, and of some printable
/// characters, which [`first_special`] then lets through).
#[inline(always)]
fn maybe_special(b: u8) -> u8 {
    ((b < 0x20) & (b != b'\t')) as u8 | (b == 0x7f) as u8 | (b == 0xc2) as u8
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

fn first_candidate(bytes: &[u8]) -> Option<usize> {
    const CHUNK: usize = 32;
    let mut chunks = bytes.chunks_exact(CHUNK);
    let mut base = 0;
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, &b| acc | maybe_special(b)) != 0 {
            return chunk
                .iter()
                .position(|&b| maybe_special(b) != 0)
                .map(|i| base + i);
        }
        base += CHUNK;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| maybe_special(b) != 0)
        .map(|i| base + i)
}

/// Where the parser is within an escape sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Ground,
    /// After ESC.
    Esc,
    /// After ESC and an intermediate byte (`ESC(` of `ESC(B`), before the final.
    EscIntermediate,
    /// Inside a control sequence (`ESC[` or U+009B), before its final byte.
    Csi,
    /// Inside an OSC string, ended by BEL or ST.
    Osc,
    /// Inside a DCS, SOS, PM or APC string, ended by ST.
    Str,
    /// After an ESC inside a string: `\` makes it ST, anything else a new escape.
    StrEsc,
}

/// Parameters of a control sequence; bounded (16 values, each capped).
#[derive(Default)]
struct CsiParams {
    values: [u16; 16],
    len: usize,
    /// A private marker (`?`, `<`, `=`, `>`) or an intermediate byte: such a
    /// sequence is only removed, never interpreted.
    private: bool,
}

impl CsiParams {
    fn clear(&mut self) {
        self.values = [0; 16];
        self.len = 0;
        self.private = false;
    }

    fn digit(&mut self, d: u8) {
        if self.len == 0 {
            self.len = 1;
        }
        if let Some(v) = self.values.get_mut(self.len - 1) {
            *v = v.saturating_mul(10).saturating_add(u16::from(d)).min(9999);
        }
    }

    fn separator(&mut self) {
        // An empty first parameter still counts as one (`ESC[;5H`).
        self.len = (self.len.max(1) + 1).min(self.values.len());
    }

    /// Parameter `i`, with 0 or absent meaning `default`.
    fn get(&self, i: usize, default: usize) -> usize {
        match self.values.get(i) {
            Some(&v) if i < self.len && v != 0 => usize::from(v),
            _ => default,
        }
    }
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

    fn step(&mut self, state: State, c: char) -> Step {
        match state {
            State::Ground => self.ground(c),
            State::Esc => self.esc(c),
            State::EscIntermediate => match c {
                '\x20'..='\x2f' => Step::Next(State::EscIntermediate),
                '\x30'..='\x7e' => Step::Next(State::Ground),
                _ => self.in_sequence(state, c),
            },
            State::Csi => self.csi(c),
            State::Osc => match c {
                '\x07' | '\u{9c}' => Step::Next(State::Ground),
                '\x1b' => Step::Next(State::StrEsc),
                '\x18' | '\x1a' => Step::Next(State::Ground),
                _ => Step::Next(State::Osc),
            },
            State::Str => match c {
                '\u{9c}' | '\x18' | '\x1a' => Step::Next(State::Ground),
                '\x1b' => Step::Next(State::StrEsc),
                _ => Step::Next(State::Str),
            },
            State::StrEsc => match c {
                '\\' => Step::Next(State::Ground),
                // The string ended without ST, and this ESC starts a new sequence.
                _ => {
                    self.stats.sequences_stripped += 1;
                    Step::Again(State::Esc)
                }
            },
        }
    }

    fn ground(&mut self, c: char) -> Step {
        let next = match c {
            '\x1b' => State::Esc,
            '\u{9b}' => {
                self.params.clear();
                State::Csi
            }
            '\u{9d}' => State::Osc,
            '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => State::Str,
            _ => {
                self.control(c);
                return Step::Next(State::Ground);
            }
        };
        self.stats.sequences_stripped += 1;
        Step::Next(next)
    }

    fn esc(&mut self, c: char) -> Step {
        match c {
            '[' => {
                self.params.clear();
                Step::Next(State::Csi)
            }
            ']' => Step::Next(State::Osc),
            'P' | 'X' | '^' | '_' => Step::Next(State::Str),
            '\x20'..='\x2f' => Step::Next(State::EscIntermediate),
            '7' => {
                self.save_cursor();
                Step::Next(State::Ground)
            }
            '8' => {
                self.restore_cursor();
                Step::Next(State::Ground)
            }
            // Two-byte escapes (`ESC=`, `ESC>`, `ESCM`, `ESCc`, a stray ST `ESC\`):
            // none changes what one line shows.
            '\x30'..='\x7e' => Step::Next(State::Ground),
            _ => self.in_sequence(State::Esc, c),
        }
    }

    fn csi(&mut self, c: char) -> Step {
        match c {
            '0'..='9' => self.params.digit(c as u8 - b'0'),
            ';' | ':' => self.params.separator(),
            '<' | '=' | '>' | '?' | '\x20'..='\x2f' => self.params.private = true,
            '\x40'..='\x7e' => {
                if !self.params.private {
                    self.dispatch_csi(c);
                }
                return Step::Next(State::Ground);
            }
            _ => return self.in_sequence(State::Csi, c),
        }
        Step::Next(State::Csi)
    }

    /// What a character that does not belong to the sequence does inside one.
    fn in_sequence(&mut self, state: State, c: char) -> Step {
        match c {
            // CAN and SUB cancel the sequence.
            '\x18' | '\x1a' => Step::Next(State::Ground),
            // ESC abandons it and starts a new one.
            '\x1b' => {
                self.stats.sequences_stripped += 1;
                Step::Next(State::Esc)
            }
            '\x7f' => Step::Next(state),
            // Other C0 controls act as in ground, and the sequence goes on.
            '\0'..='\x1f' => {
                self.control(c);
                Step::Next(state)
            }
            // Anything else is not part of any sequence: it is shown.
            _ => Step::Again(State::Ground),
        }
    }

    /// A control character outside a sequence.
    fn control(&mut self, c: char) {
        match c {
            '\r' => self.carriage_return(),
            '\x08' => self.backspace(),
            _ => self.stats.controls_dropped += 1,
        }
    }

    fn dispatch_csi(&mut self, final_byte: char) {
        let n = self.params.get(0, 1);
        match final_byte {
            'K' => self.erase_in_line(self.params.get(0, 0)),
            'J' => match self.params.get(0, 0) {
                0 => self.erase_in_line(0),
                1 => self.erase_in_line(1),
                _ => self.erase_in_line(2),
            },
            'C' | 'a' => {
                let col = self.column().saturating_add(n);
                self.move_to(col);
            }
            'D' => {
                let col = self.column().saturating_sub(n);
                self.move_to(col);
            }
            'G' | '`' => self.move_to(n - 1),
            'X' => self.erase_chars(n),
            'P' => self.delete_chars(n),
            '@' => self.insert_blanks(n),
            's' => self.save_cursor(),
            'u' => self.restore_cursor(),
            // SGR, vertical moves, modes, scrolling…: removed only.
            _ => {}
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

/// What the parser does after a character.
enum Step {
    /// The character was consumed; go on in this state.
    Next(State),
    /// The character was not consumed; look at it again in this state.
    Again(State),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(line: &[u8]) -> (String, RenderStats) {
        let mut stats = RenderStats::default();
        let text = render(line, &mut stats);
        (text, stats)
    }

    /// Real lines from `shared/fixtures/tmux/refly-api.log` and what a user sees.
    #[test]
    fn fixture_lines_render_as_the_pane_showed_them() {
        let cases: &[(&[u8], &str, u64)] = &[
            (
                b"\x1b[?2004l\r\x1b[32m[Nest] 3846  - \x1b[39m11/22/2026, 10:00:00 PM \x1b[32m    LOG\x1b[39m \x1b[33m[NestFactory]\x1b[39m \x1b[32mStarting Nest application...\x1b[39m\r",
                "[Nest] 3846  - 11/22/2026, 10:00:00 PM     LOG [NestFactory] Starting Nest application...",
                9,
            ),
            (
                b"[22:59:44.776] \x1b[90mTRACE\x1b[39m (3859): \x1b[36mloading config from /app/.env\x1b[39m\r",
                "[22:59:44.776] TRACE (3859): loading config from /app/.env",
                4,
            ),
            (
                b"    \x1b[35mmodule\x1b[39m: \"boot\"\r",
                "    module: \"boot\"",
                2,
            ),
            (
                b"[22:59:44.779] \x1b[41mFATAL\x1b[49m (3859): \x1b[36mshutting down worker\x1b[39m\r",
                "[22:59:44.779] FATAL (3859): shutting down worker",
                4,
            ),
            (
                b"\x1b[31mError: ECONNREFUSED 127.0.0.1:5432\x1b[0m\r",
                "Error: ECONNREFUSED 127.0.0.1:5432",
                2,
            ),
            (
                b"\x1b[?2004h\x1b[1;32mdev@refly-vm\x1b[0m:\x1b[1;34m/home/dev/refly-api\x1b[0m$ node app.js 2>&1 | ./node_modules/.bin/pino-pretty\r",
                "dev@refly-vm:/home/dev/refly-api$ node app.js 2>&1 | ./node_modules/.bin/pino-pretty",
                5,
            ),
            (
                b"{\"level\":30,\"time\":1795388381727,\"msg\":\"Nest application successfully started\"}\r",
                "{\"level\":30,\"time\":1795388381727,\"msg\":\"Nest application successfully started\"}",
                0,
            ),
            (
                "{\"msg2\":\"ünïcödé — 日本語 🚀\"}\r".as_bytes(),
                "{\"msg2\":\"ünïcödé — 日本語 🚀\"}",
                0,
            ),
        ];
        for (raw, want, sequences) in cases {
            let (got, stats) = show(raw);
            assert_eq!(&got, want, "for {:?}", String::from_utf8_lossy(raw));
            assert_eq!(stats.sequences_stripped, *sequences, "for {got:?}");
            assert_eq!(stats.invalid_utf8_lines, 0);
        }
    }

    #[test]
    fn every_kind_of_escape_sequence_is_removed() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("sgr", b"a\x1b[1;38;5;208mb\x1b[0mc", "abc"),
            ("sgr reset short", b"a\x1b[mb", "ab"),
            ("bracketed paste on", b"\x1b[?2004hprompt$ ", "prompt$ "),
            ("cursor hidden and shown", b"\x1b[?25lbusy\x1b[?25h", "busy"),
            ("vertical move", b"\x1b[2Aup\x1b[3Bdown", "updown"),
            ("absolute position", b"\x1b[5;10Hhere", "here"),
            (
                "osc title ended by bel",
                b"\x1b]0;user@host: ~\x07$ ls",
                "$ ls",
            ),
            ("osc title ended by st", b"\x1b]2;title\x1b\\text", "text"),
            (
                "osc hyperlink",
                b"\x1b]8;;http://x/\x1b\\link\x1b]8;;\x1b\\",
                "link",
            ),
            ("dcs string", b"a\x1bPq#0;2;0;0;0#0~~\x1b\\b", "ab"),
            ("apc string", b"a\x1b_Gf=24;AAAA\x1b\\b", "ab"),
            (
                "pm and sos strings",
                b"a\x1b^pm\x1b\\b\x1bXsos\x1b\\c",
                "abc",
            ),
            ("charset designation", b"\x1b(Bplain\x1b)0", "plain"),
            ("keypad modes", b"\x1b=a\x1b>b", "ab"),
            ("reverse index and reset", b"\x1bMa\x1bcb", "ab"),
            (
                "c1 csi in utf-8",
                "a\u{9b}31mred\u{9b}0m".as_bytes(),
                "ared",
            ),
            ("c1 osc in utf-8", "\u{9d}0;t\u{9c}x".as_bytes(), "x"),
            ("csi with a space intermediate", b"\x1b[2 qcursor", "cursor"),
            ("window ops", b"\x1b[22;0;0tx", "x"),
            ("stray st", b"a\x1b\\b", "ab"),
            ("escape at end of line", b"abc\x1b", "abc"),
            ("unfinished csi at end", b"abc\x1b[31", "abc"),
            ("can cancels a sequence", b"a\x1b[3\x18b", "ab"),
            ("escape restarts a sequence", b"a\x1b[3\x1b[0mb", "ab"),
            ("string ended by a new escape", b"a\x1b]0;t\x1b[0mb", "ab"),
            ("non-ascii aborts a csi", "a\x1b[3é".as_bytes(), "aé"),
        ];
        for (what, raw, want) in cases {
            let (got, stats) = show(raw);
            assert_eq!(&got, want, "{what}");
            assert!(stats.sequences_stripped > 0, "{what}: counted");
        }
    }

    #[test]
    fn carriage_returns_and_backspaces_show_the_last_state() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("crlf", b"done\r", "done"),
            (
                "progress bar",
                b"[#   ] 25%\r[##  ] 50%\r[####] 100%",
                "[####] 100%",
            ),
            (
                "shorter text leaves the rest",
                b"downloading 100%\rok",
                "okwnloading 100%",
            ),
            ("erase after cr", b"downloading 100%\rok\x1b[K", "ok"),
            ("erase line then cr", b"downloading 100%\x1b[2K\rok", "ok"),
            ("cr then erase line", b"old text\r\x1b[2Knew", "new"),
            ("cr at line start", b"\rstart", "start"),
            ("several trailing crs", b"text\r\r", "text"),
            ("backspace removes at end", b"abc\x08", "ab"),
            ("backspace then overwrite", b"abc\x08d", "abd"),
            ("two backspaces at end", b"abc\x08\x08X", "aX"),
            ("readline erase", b"lss\x08 \x08", "ls"),
            ("backspace at column zero", b"\x08\x08a", "a"),
            (
                "backspace in the middle moves",
                b"abcdef\r\x1b[3C\x08X",
                "abXdef",
            ),
            ("cursor back and overwrite", b"50%\x1b[3D75%", "75%"),
            ("cursor forward pads", b"a\x1b[3Cb", "a   b"),
            ("column absolute", b"hello world\x1b[7GW", "hello World"),
            (
                "save and restore",
                b"\x1b7loading...\x1b8done\x1b[K",
                "done",
            ),
            ("csi save and restore", b"x \x1b[sabc\x1b[uZ", "x Zbc"),
            ("erase to start", b"abcdef\x1b[3D\x1b[1K", "    ef"),
            ("erase chars", b"abcdef\r\x1b[2X", "  cdef"),
            ("delete chars", b"abcdef\r\x1b[2P", "cdef"),
            ("insert blanks", b"abcdef\r\x1b[2@", "  abcdef"),
            ("tab is kept", b"a\tb\r\x1b[2Cc", "a\tc"),
            ("unicode overwrite by char", "日本語\rx".as_bytes(), "x本語"),
        ];
        for (what, raw, want) in cases {
            assert_eq!(&show(raw).0, want, "{what}");
        }
    }

    #[test]
    fn control_characters_are_dropped_and_counted_but_tab_is_kept() {
        let (got, stats) = show(b"a\0b\x07c\x7fd\te\x0bf");
        assert_eq!(got, "abcd\tef");
        assert_eq!(stats.controls_dropped, 4);
        let (got, stats) = show("x\u{85}y\u{9c}z".as_bytes());
        assert_eq!(got, "xyz");
        assert_eq!(stats.controls_dropped, 2);
    }

    #[test]
    fn printable_c2_characters_stay_on_the_fast_path() {
        let (got, stats) = show("© 20° ±1".as_bytes());
        assert_eq!(got, "© 20° ±1");
        assert_eq!(stats, RenderStats::default());
    }

    #[test]
    fn invalid_utf8_is_replaced_and_counted_once() {
        let (got, stats) = show(b"a\xffb\xfe\x1b[31mc");
        assert_eq!(got, "a\u{fffd}b\u{fffd}c");
        assert_eq!(stats.invalid_utf8_lines, 1);
        // A raw 8-bit CSI byte is invalid UTF-8, not a sequence: it shows as U+FFFD.
        let (got, _) = show(b"a\x9b31mb");
        assert_eq!(got, "a\u{fffd}31mb");
    }

    #[test]
    fn plain_lines_are_copied_unchanged() {
        let long = "x".repeat(1000) + "é" + &"y".repeat(77);
        for line in ["", "a", "tab\tseparated", long.as_str()] {
            let (got, stats) = show(line.as_bytes());
            assert_eq!(got, line);
            assert_eq!(stats, RenderStats::default());
        }
    }

    #[test]
    fn escape_storms_stay_bounded_and_short() {
        // Each of these would be quadratic if every edit touched every cell.
        let line = "x".repeat(20_000);
        let mut storm = line.clone().into_bytes();
        for _ in 0..20_000 {
            storm.extend_from_slice(b"\r\x1b[19000C\x1b[1K");
        }
        let (got, _) = show(&storm);
        assert_eq!(got.chars().count(), 20_000);
        let mut storm = line.into_bytes();
        for _ in 0..20_000 {
            storm.extend_from_slice(b"\r\x1b[P\x1b[@");
        }
        let (got, _) = show(&storm);
        assert!(got.chars().count() <= 20_000);
        let (got, _) = show(b"\x1b[9999Cx");
        assert!(
            got.len() <= 9,
            "cursor bounded by the line's length: {got:?}"
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn interesting_bytes() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                Just(b"\x1b".to_vec()),
                Just(b"\x1b[".to_vec()),
                Just(b"\r".to_vec()),
                Just(b"\x08".to_vec()),
                Just(b"\x1b]0;".to_vec()),
                Just(b"\x1bP".to_vec()),
                Just(b"\x1b\\".to_vec()),
                Just(b"\x07".to_vec()),
                Just("\u{9b}".as_bytes().to_vec()),
                Just("\u{9d}".as_bytes().to_vec()),
                Just(b"\xc2".to_vec()),
                Just(b"\x1b[2K".to_vec()),
                Just(b"\x1b[5D".to_vec()),
                Just(b"\x1b[9999C".to_vec()),
                Just(b"\x1b[3P".to_vec()),
                Just(b"\x1b[4@".to_vec()),
                Just(b"\x1b[1K".to_vec()),
                Just(b"\x1b8".to_vec()),
                "[ -~]{0,8}".prop_map(String::into_bytes),
                "\\PC{0,4}".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..8),
            ];
            proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
        }

        fn assert_shown_text_only(out: &str) {
            for c in out.chars() {
                assert!(
                    c == '\t' || !(c.is_control()),
                    "control {c:?} in output {out:?}"
                );
            }
        }

        proptest! {
            #[test]
            fn any_bytes_render_to_text_without_controls(line in any::<Vec<u8>>()) {
                let mut stats = RenderStats::default();
                let out = render(&line, &mut stats);
                assert_shown_text_only(&out);
                prop_assert!(out.chars().count() <= 2 * line.len());
            }

            #[test]
            fn sequence_soup_renders_to_text_without_controls(line in interesting_bytes()) {
                let mut stats = RenderStats::default();
                let out = render(&line, &mut stats);
                assert_shown_text_only(&out);
                prop_assert!(out.chars().count() <= 2 * line.len());
                // What was rendered is plain text: rendering it again changes nothing.
                let mut again = RenderStats::default();
                prop_assert_eq!(render(out.as_bytes(), &mut again), out);
                prop_assert_eq!(again, RenderStats::default());
            }

            #[test]
            fn text_without_controls_is_copied(line in "[^\\p{Cc}]{0,200}") {
                let mut stats = RenderStats::default();
                prop_assert_eq!(render(line.as_bytes(), &mut stats), line);
                prop_assert_eq!(stats, RenderStats::default());
            }
        }
    }
}
