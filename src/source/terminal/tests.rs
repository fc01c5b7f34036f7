//! Unit tests and properties of the terminal renderer.

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

/// What [`first_special`] answers, byte by byte: the chunked scan must agree.
fn first_special_byte_by_byte(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find(|&i| match bytes[i] {
        b'\t' => false,
        0x00..=0x1f | 0x7f => true,
        0xc2 => matches!(bytes.get(i + 1), Some(0x80..=0x9f)),
        _ => false,
    })
}

/// Lines of every length around the scan's chunk size (shorter than a chunk,
/// whole chunks, whole chunks and a few bytes), with one special byte at each
/// position: the first one is found wherever it falls, in the overlapping last
/// chunk too.
#[test]
fn a_control_byte_is_found_at_every_position_of_every_chunk() {
    for text in ["x", "é", "日本"] {
        for len in (0..=3 * CHUNK + 2).filter(|n| n % 64 < 3 || n % 64 > 61 || n % 16 == 7) {
            let plain: Vec<u8> = text.bytes().cycle().take(len).collect();
            assert_eq!(first_special(&plain), None, "{text:?} x {len}");
            for at in 0..len {
                for special in [b"\x00", b"\x1b", b"\r", b"\x7f"] {
                    let mut line = plain.clone();
                    line[at] = special[0];
                    assert_eq!(
                        first_special(&line),
                        Some(at),
                        "{special:?} at {at} of {len}"
                    );
                }
                let mut line = plain.clone();
                line[at] = b'\t';
                assert_eq!(first_special(&line), None, "tab at {at} of {len}");
            }
        }
    }
}

#[test]
fn c1_controls_are_found_and_printable_c2_characters_passed_over() {
    for len in [0, 1, 30, 62, 63, 64, 65, 127, 128, 129, 200] {
        for at in 0..len {
            let mut line = vec![b'a'; len + 2];
            line[at..at + 2].copy_from_slice("\u{85}".as_bytes());
            assert_eq!(first_special(&line), Some(at), "U+0085 at {at} of {len}");
            line[at..at + 2].copy_from_slice("©".as_bytes());
            assert_eq!(first_special(&line), None, "© at {at} of {len}");
            // A C1 control after a printable 0xC2 character, in any later chunk.
            for later in [at + 2, at + 3, len] {
                let mut l = line.clone();
                l.extend_from_slice(b"bb");
                l[later..later + 2].copy_from_slice("\u{9b}".as_bytes());
                assert_eq!(first_special(&l), Some(later), "© at {at}, CSI at {later}");
            }
        }
    }
    // The last byte of the line a lone 0xC2 (invalid UTF-8, never rendered so):
    // not a C1 control.
    assert_eq!(first_special(b"abc\xc2"), None);
}

#[test]
fn plain_lines_are_their_own_text_and_others_are_left_to_render() {
    let long = "x".repeat(1000) + "© é" + &"y".repeat(77);
    for (line, want) in [
        (&b""[..], Some("")),
        (b"a\tb\r", Some("a\tb")),
        (long.as_bytes(), Some(long.as_str())),
        (b"a\x1b[31mb", None),
        (b"a\rb", None),
        (b"\r\r", None),
        ("x\u{85}".as_bytes(), None),
        (b"a\xffb", None),
    ] {
        assert_eq!(plain(line).as_deref(), want, "{line:?}");
    }
}

proptest::proptest! {
    #[test]
    fn the_chunked_scan_agrees_with_a_byte_by_byte_one(
        line in proptest::collection::vec(
            proptest::prop_oneof![
                8 => 0x20u8..0x7f,
                1 => proptest::prelude::any::<u8>(),
                1 => proptest::prelude::Just(0xc2u8),
            ],
            0..300,
        )
    ) {
        proptest::prop_assert_eq!(first_special(&line), first_special_byte_by_byte(&line));
    }

    #[test]
    fn a_plain_line_is_what_render_makes_of_it_without_a_change(
        line in proptest::collection::vec(
            proptest::prop_oneof![
                8 => 0x20u8..0x7f,
                1 => proptest::prelude::any::<u8>(),
            ],
            0..300,
        )
    ) {
        let mut stats = RenderStats::default();
        let rendered = render(&line, &mut stats);
        let unchanged = stats == RenderStats::default()
            && rendered.as_bytes() == line.strip_suffix(b"\r").unwrap_or(&line)
            && !line.iter().any(|&b| b < 0x20 && b != b'\t' && b != b'\r');
        match plain(&line) {
            Some(text) => proptest::prop_assert_eq!(text, rendered),
            None => proptest::prop_assert!(!unchanged || line.contains(&b'\r'), "{:?}", line),
        }
    }
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
