//! The escape-sequence state machine: which state a character leads to, and what
//! a complete control sequence does to the line being drawn ([`super::Screen`]).

use super::Screen;

/// Where the parser is within an escape sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
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

/// What the parser does after a character.
pub(super) enum Step {
    /// The character was consumed; go on in this state.
    Next(State),
    /// The character was not consumed; look at it again in this state.
    Again(State),
}

/// Parameters of a control sequence; bounded (16 values, each capped).
#[derive(Default)]
pub(super) struct CsiParams {
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

impl Screen<'_> {
    pub(super) fn step(&mut self, state: State, c: char) -> Step {
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
}
