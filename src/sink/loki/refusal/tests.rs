//! Loki's answers, as Loki 3.x writes them, read.

use super::words::{go_time_ns, NS};
use super::*;
use crate::record::{Labels, Timestamp};

/// 2026-11-01T10:00:00Z.
const T0: i64 = 1_793_527_200 * NS;

fn labels() -> Labels {
    Labels::from_pairs([("job", "app"), ("level", "info")])
}

fn rec(ts: i64, line: &str) -> LogRecord {
    LogRecord {
        timestamp: Timestamp(ts),
        labels: labels(),
        structured_metadata: Vec::new(),
        line: line.into(),
    }
}

fn of(labels: Labels, ts: i64, line: &str) -> LogRecord {
    LogRecord {
        labels,
        ..rec(ts, line)
    }
}

/// As Loki's distributor writes them: a stream with the `service_name` label
/// Loki adds.
const STREAM: &str = r#"{job="app", level="info", service_name="app"}"#;

#[test]
fn causes_have_their_label_values() {
    let names: Vec<&str> = Cause::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "too_old",
            "too_far_behind",
            "too_long",
            "rate_limited",
            "stream_limit",
            "other"
        ]
    );
}

#[test]
fn the_distributors_grouped_text_is_read_and_counted_exactly() {
    let body = format!(
        "2 errors like: entry for stream '{STREAM}' has timestamp too old: 2026-10-25T09:00:00Z, oldest acceptable timestamp is: 2026-11-01T09:58:00Z; \
         1 errors like: Max entry size '1000' bytes exceeded for stream '{STREAM}' while adding an entry with length '1500' bytes\n"
    );
    let a = Answer::parse(400, body.as_bytes(), false);
    assert!(a.unknown.is_empty(), "{a:?}");
    assert_eq!(a.line_limit(), Some(1000));
    let old = T0 - 7 * 86_400 * NS;
    let records = [
        rec(old, "old a"),
        rec(T0, "good"),
        rec(T0 + 1, &"x".repeat(1500)),
        rec(old + 1, "old b"),
        rec(T0 + 2, &"y".repeat(999)),
    ];
    assert_eq!(
        a.read_exactly(&records),
        Some(vec![
            Some(Cause::TooOld),
            None,
            Some(Cause::TooLong),
            Some(Cause::TooOld),
            None
        ])
    );
    assert!(a
        .text_of(Cause::TooOld)
        .unwrap()
        .contains("has timestamp too old"));
}

#[test]
fn one_message_alone_has_no_count_and_is_one_entry() {
    let body = format!(
        "Max entry size '10' bytes exceeded for stream '{STREAM}' while adding an entry with length '12' bytes"
    );
    let a = Answer::parse(400, body.as_bytes(), false);
    let records = [rec(T0, "short"), rec(T0 + 1, "twelve bytes")];
    assert_eq!(
        a.read_exactly(&records),
        Some(vec![None, Some(Cause::TooLong)])
    );
}

#[test]
fn a_cutoff_to_the_second_that_leaves_doubt_means_asking_loki() {
    // Loki's cutoff lies somewhere in 09:58:00 .. 09:58:01; one refused.
    let body = format!(
        "entry for stream '{STREAM}' has timestamp too old: 2026-11-01T09:58:00Z, oldest acceptable timestamp is: 2026-11-01T09:58:00Z"
    );
    let a = Answer::parse(400, body.as_bytes(), false);
    let cut = T0 - 120 * NS;
    // Two records within that second: which one was refused?
    let records = [rec(cut + 10, "a"), rec(cut + 20, "b")];
    assert_eq!(a.read_exactly(&records), None);
    // One record in that second and one before: the count decides.
    let records = [rec(cut - NS, "a"), rec(cut + 20, "b")];
    assert_eq!(
        a.read_exactly(&records),
        Some(vec![Some(Cause::TooOld), None])
    );
    // Both refused were it to be asked: each is attributed.
    assert_eq!(a.attribute(&rec(cut + 20, "b")), Some(Cause::TooOld));
    assert_eq!(a.attribute(&rec(cut + NS, "c")), None);
}

#[test]
fn the_ingesters_text_lists_entries_by_their_exact_time() {
    let body = format!(
        "entry with timestamp 2026-11-01 09:00:00.000000123 +0000 UTC ignored, reason: 'entry too far behind, entry timestamp is: 2026-11-01T09:00:00Z, oldest acceptable timestamp is: 2026-11-01T09:30:00Z',\n\
         user 'fake', total ignored: 1 out of 3 for stream: {STREAM}\n"
    );
    let a = Answer::parse(400, body.as_bytes(), false);
    assert!(a.unknown.is_empty(), "{a:?}");
    let report = a.ingester.as_ref().unwrap();
    assert_eq!((report.ignored, report.out_of), (1, 3));
    assert_eq!(report.listed[0].timestamp_ns, T0 - 3600 * NS + 123);
    let records = [
        rec(T0 - 3600 * NS + 123, "behind"),
        rec(T0, "good"),
        rec(T0 + 1, "good too"),
    ];
    assert_eq!(
        a.read_exactly(&records),
        Some(vec![Some(Cause::TooFarBehind), None, None])
    );
    // The ingester got 3 of 4: the distributor refused one it does not name.
    let mut four = records.to_vec();
    four.push(rec(T0 - 30 * 86_400 * NS, "old"));
    assert_eq!(a.read_exactly(&four), None);
    assert_eq!(a.attribute(&four[0]), Some(Cause::TooFarBehind));
    assert_eq!(a.attribute(&four[3]), None);
}

#[test]
fn an_ingester_that_lists_ten_of_more_leaves_the_rest_to_its_cutoff() {
    let mut body = String::new();
    for i in 0..10 {
        body.push_str(&format!(
            "entry with timestamp 2026-11-01 09:00:0{i} +0000 UTC ignored, reason: 'entry too far behind, entry timestamp is: 2026-11-01T09:00:0{i}Z, oldest acceptable timestamp is: 2026-11-01T09:30:00Z',\n"
        ));
    }
    body.push_str(&format!(
        "user 'fake', total ignored: 12 out of 12 for stream: {STREAM}"
    ));
    let a = Answer::parse(400, body.as_bytes(), false);
    let records: Vec<LogRecord> = (0..12).map(|i| rec(T0 - 3600 * NS + i * NS, "x")).collect();
    assert_eq!(a.read_exactly(&records), None);
    assert_eq!(a.attribute(&records[11]), Some(Cause::TooFarBehind));
}

#[test]
fn several_streams_are_never_read_exactly() {
    let body = format!(
        "entry for stream '{STREAM}' has timestamp too old: 2026-10-01T00:00:00Z, oldest acceptable timestamp is: 2026-11-01T09:58:00Z"
    );
    let a = Answer::parse(400, body.as_bytes(), false);
    let other = Labels::from_pairs([("job", "app"), ("level", "error")]);
    let records = [rec(T0 - 86_400 * NS, "old"), of(other, T0, "good")];
    assert_eq!(a.read_exactly(&records), None);
}

#[test]
fn limits_of_rate_and_streams_are_read_from_their_429s() {
    let whole = Answer::parse(
        429,
        b"Ingestion rate limit exceeded for user fake (limit: 4194304 bytes/sec) while attempting to ingest '3' lines totaling '300' bytes, reduce log volume or contact your Loki administrator to see if the limit can be increased",
        false,
    );
    assert!(whole.tells_refusals());
    let records = [rec(T0, "a"), rec(T0 + 1, "b")];
    assert_eq!(
        whole.read_exactly(&records),
        Some(vec![Some(Cause::RateLimited); 2])
    );

    let streams = Answer::parse(
        429,
        format!("Maximum active stream limit exceeded when trying to create stream {STREAM}, reduce the number of active streams (reduce labels or reduce label values), or contact your Loki administrator to see if the limit can be increased, user: 'fake'").as_bytes(),
        false,
    );
    assert_eq!(
        streams.read_exactly(&records),
        Some(vec![Some(Cause::StreamLimit); 2])
    );
    let other = Labels::from_pairs([("job", "app"), ("level", "error")]);
    assert_eq!(streams.attribute(&of(other, T0, "x")), None);

    let per_stream = Answer::parse(
        429,
        format!("entry with timestamp 2026-11-01 10:00:00.000000001 +0000 UTC ignored, reason: 'Per stream rate limit exceeded (limit: 3MB/sec) while attempting to ingest for stream '{STREAM}' totaling 1B, consider splitting a stream via additional labels or contact your Loki administrator to see if the limit can be increased',\nuser 'fake', total ignored: 1 out of 2 for stream: {STREAM}").as_bytes(),
        false,
    );
    assert!(per_stream.unknown.is_empty(), "{per_stream:?}");
    assert_eq!(
        per_stream.read_exactly(&[rec(T0, "a"), rec(T0 + 1, "b")]),
        Some(vec![None, Some(Cause::RateLimited)])
    );

    let proxy = Answer::parse(429, b"<html>Too Many Requests</html>", false);
    assert!(!proxy.tells_refusals());
}

#[test]
fn text_not_understood_or_cut_means_asking_loki() {
    let records = [rec(T0, "a")];
    for a in [
        Answer::parse(400, b"", false),
        Answer::parse(400, b"<html>Bad Request</html>", false),
        Answer::parse(
            400,
            format!("Max entry size '1' bytes exceeded for stream '{STREAM}' while adding an entry with length '1").as_bytes(),
            true,
        ),
    ] {
        assert_eq!(a.read_exactly(&records), None, "{a:?}");
        assert_eq!(a.attribute(&records[0]), None);
    }
}

#[test]
fn label_values_with_quotes_semicolons_and_escapes_are_read() {
    let labels = Labels::from_pairs([("job", "a; b"), ("path", "C:\\x \"y\"")]);
    let stream = r#"{job="a; b", path="C:\\x \"y\""}"#;
    let body = format!(
        "2 errors like: Max entry size '3' bytes exceeded for stream '{stream}' while adding an entry with length '5' bytes; \
         1 errors like: Max entry size '3' bytes exceeded for stream '{stream}' while adding an entry with length '4' bytes"
    );
    let a = Answer::parse(400, body.as_bytes(), false);
    assert!(a.unknown.is_empty(), "{a:?}");
    let records = [
        of(labels.clone(), T0, "12345"),
        of(labels.clone(), T0 + 1, "1234"),
        of(labels.clone(), T0 + 2, "abcde"),
        of(labels, T0 + 3, "ok"),
    ];
    assert_eq!(
        a.read_exactly(&records),
        Some(vec![
            Some(Cause::TooLong),
            Some(Cause::TooLong),
            Some(Cause::TooLong),
            None
        ])
    );
}

#[test]
fn go_times_with_and_without_fractions_and_offsets_are_read() {
    assert_eq!(go_time_ns("2026-11-01 10:00:00 +0000 UTC"), Some(T0));
    assert_eq!(
        go_time_ns("2026-11-01 11:00:00.5 +0100 CET"),
        Some(T0 + NS / 2)
    );
    assert_eq!(
        go_time_ns("2026-11-01 10:00:00.000000001 +0000 UTC m=+0.001"),
        Some(T0 + 1)
    );
    assert_eq!(go_time_ns("yesterday"), None);
}
