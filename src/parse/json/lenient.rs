//! What the reader adds to serde_json to keep the parser's promises: the depth
//! bound on skipped values (serde_json skips ignored values iteratively, with no
//! limit), and the leniency for raw control characters inside strings and leading
//! zeros in numbers (both rejected by serde_json, accepted by the agent since
//! issue 3).
//!
//! The leniency is a retry, paid only by a line serde_json rejects: a copy of the
//! line of the same length, in which each raw control character inside a string
//! becomes a space and the extra leading zeros of a number become spaces (a sign
//! moves right to stay next to the digits). Offsets are the same in both, so the
//! reader takes every value it keeps from the original line at the copy's offsets:
//! what a user's fields hold is their own text, control characters and zeros
//! included.

/// The copy described above, or `None` when the line holds neither (a retry would
/// fail the same way).
pub(super) fn copy_for_retry(line: &str) -> Option<String> {
    let b = line.as_bytes();
    let mut copy: Option<Vec<u8>> = None;
    let set = |copy: &mut Option<Vec<u8>>, at: usize, to: u8| {
        if let Some(slot) = copy.get_or_insert_with(|| b.to_vec()).get_mut(at) {
            *slot = to;
        }
    };
    let mut in_string = false;
    // The last byte outside strings and whitespace: a number is a value after
    // `:`, `[` or `,` only (elsewhere a zero is an error either way).
    let mut prev = 0u8;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => {
                    in_string = false;
                    prev = b'"';
                }
                0..=0x1f => set(&mut copy, i, b' '),
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                i += 1;
            }
            b'-' | b'0'..=b'9' if matches!(prev, b':' | b'[' | b',') => {
                prev = b'0';
                let start = i;
                let mut digits = if c == b'-' { i + 1 } else { i };
                let zeros = digits;
                while b.get(digits) == Some(&b'0')
                    && b.get(digits + 1).is_some_and(u8::is_ascii_digit)
                {
                    digits += 1;
                }
                if digits > zeros {
                    for at in start..digits {
                        set(&mut copy, at, b' ');
                    }
                    if c == b'-' {
                        set(&mut copy, digits - 1, b'-');
                    }
                }
                i = digits;
                while let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') = b.get(i) {
                    i += 1;
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            _ => {
                prev = c;
                i += 1;
            }
        }
    }
    // Only ASCII bytes were replaced, by ASCII bytes: still UTF-8.
    copy.and_then(|c| String::from_utf8(c).ok())
}

/// Whether `text` (JSON, possibly cut off) nests containers deeper than `limit`
/// anywhere, strings left out.
pub(super) fn nests_deeper_than(text: &str, limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &c in text.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}
