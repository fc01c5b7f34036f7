//! The check's paging and comparison, against pages given by hand.
use std::sync::Mutex;

use super::*;
use crate::record::Timestamp;

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

fn found(ts: i64, line: &str) -> Found {
    Found {
        timestamp_ns: ts,
        line: line.into(),
        ours: true,
        original_ns: None,
    }
}

/// A fake Loki's query API over `stored`: answers each window with the first
/// `limit` entries in it by timestamp (store order on ties), and records the
/// windows asked for.
struct FakePages {
    stored: Vec<Found>,
    limit: usize,
    asked: Mutex<Vec<(i64, i64)>>,
}

impl FakePages {
    fn new(mut stored: Vec<Found>, limit: usize) -> Self {
        stored.sort_by_key(|f| f.timestamp_ns);
        FakePages {
            stored,
            limit,
            asked: Mutex::new(Vec::new()),
        }
    }

    async fn page(&self, start: i64, end: i64) -> Result<Vec<Found>, CheckError> {
        self.asked.lock().unwrap().push((start, end));
        Ok(self
            .stored
            .iter()
            .filter(|f| f.timestamp_ns >= start && f.timestamp_ns < end)
            .take(self.limit)
            .cloned()
            .collect())
    }

    fn asked(&self) -> Vec<(i64, i64)> {
        self.asked.lock().unwrap().clone()
    }
}

async fn run(records: &[LogRecord], loki: &FakePages) -> Result<Vec<bool>, CheckError> {
    let refs: Vec<&LogRecord> = records.iter().collect();
    stored_in_loki(&refs, loki.limit, |s, e| loki.page(s, e)).await
}

#[tokio::test]
async fn one_page_finds_what_loki_holds_and_asks_for_the_push_time_range() {
    let records = [rec(10, "a"), rec(20, "b"), rec(30, "c")];
    let loki = FakePages::new(vec![found(10, "a"), found(30, "c"), found(30, "x")], 100);
    assert_eq!(run(&records, &loki).await, Ok(vec![true, false, true]));
    // start inclusive at the smallest timestamp, end exclusive past the largest.
    assert_eq!(loki.asked(), [(10, 31)]);
}

#[tokio::test]
async fn full_pages_are_followed_and_entries_sharing_the_boundary_timestamp_count_once() {
    // 5 records; three share timestamp 3, which straddles the first page's end.
    let lines = ["p", "q", "r"];
    let mut records = vec![rec(1, "a"), rec(2, "b")];
    records.extend(lines.iter().map(|l| rec(3, l)));
    let stored: Vec<Found> = records
        .iter()
        .map(|r| found(r.timestamp.as_nanos(), &r.line))
        .collect();
    let loki = FakePages::new(stored, 4);
    assert_eq!(run(&records, &loki).await, Ok(vec![true; 5]));
    // Page 1 is [1, 2, 3, 3] (full): the two at 3 are left for page 2, which
    // starts at 3 and holds all three.
    assert_eq!(loki.asked(), [(1, 4), (3, 4)]);
}

#[tokio::test]
async fn duplicates_compare_as_a_multiset() {
    // The push holds "a" at 5 three times; Loki holds it twice: one to send.
    let records = [rec(5, "a"), rec(5, "a"), rec(6, "b"), rec(5, "a")];
    let loki = FakePages::new(vec![found(5, "a"), found(5, "a"), found(6, "b")], 100);
    assert_eq!(
        run(&records, &loki).await,
        Ok(vec![true, true, true, false])
    );
    // Loki holding it more often than the push does not mark more.
    let records = [rec(5, "a")];
    let loki = FakePages::new(vec![found(5, "a"), found(5, "a")], 100);
    assert_eq!(run(&records, &loki).await, Ok(vec![true]));
}

#[tokio::test]
async fn many_pages_with_other_entries_between_the_pushed_ones() {
    // 50 records at even timestamps; Loki holds those at multiples of 4,
    // and other entries at odd timestamps; pages of 7.
    let records: Vec<LogRecord> = (0..50).map(|i| rec(i * 2, &format!("r{i}"))).collect();
    let mut stored: Vec<Found> = (0..50)
        .filter(|i| i % 2 == 0)
        .map(|i| found(i * 2, &format!("r{i}")))
        .collect();
    stored.extend((0..50).map(|i| found(i * 2 + 1, "other")));
    let loki = FakePages::new(stored, 7);
    let want: Vec<bool> = (0..50).map(|i| i % 2 == 0).collect();
    assert_eq!(run(&records, &loki).await, Ok(want));
    let asked = loki.asked();
    assert!(asked.len() > 10, "{asked:?}");
    assert!(asked.windows(2).all(|w| w[0].0 < w[1].0), "{asked:?}");
}

#[tokio::test]
async fn an_entry_sent_again_at_a_new_time_or_cut_counts_as_the_record_it_was() {
    // "old" went again at 900 with its time kept; "long" was cut; "lost" is not there.
    let records = [rec(10, "old"), rec(20, "a long line"), rec(30, "lost")];
    let mut again = found(900, "old");
    again.original_ns = Some(10);
    let loki = FakePages::new(vec![again, found(20, "a long")], 100);
    let refs: Vec<&LogRecord> = records.iter().collect();
    let mut tally = Tally::new(&refs);
    tally
        .page_through(10, 31, 100, |s, e| loki.page(s, e), |_| true)
        .await
        .unwrap();
    tally
        .page_through(
            900,
            1000,
            100,
            |s, e| loki.page(s, e),
            |f| f.original_ns.is_some(),
        )
        .await
        .unwrap();
    assert_eq!(tally.finish(&refs), [true, true, false]);
    // The rewritten record itself (as it was sent) compares by its original time too.
    let mut sent = rec(900, "old");
    sent.structured_metadata = vec![(ORIGINAL_TIMESTAMP.into(), Timestamp(10).to_string())];
    assert_eq!(original_time(&sent), 10);
    let refs = [&sent];
    let mut tally = Tally::new(&refs);
    tally
        .page_through(900, 901, 100, |s, e| loki.page(s, e), |_| true)
        .await
        .unwrap();
    assert_eq!(tally.finish(&refs), [true]);
}

#[test]
fn original_timestamps_are_read_from_categorized_metadata_or_from_labels() {
    let body = br#"{"status":"success","data":{"resultType":"streams","encodingFlags":["categorize-labels"],"result":[
        {"stream":{"job":"app","level":"info"},"values":[["900","a",{"structuredMetadata":{"original_timestamp":"1970-01-01T00:00:00.000000010Z"}}],["901","b",{}]]},
        {"stream":{"job":"app","level":"info","original_timestamp":"1970-01-01T00:00:00.000000020Z"},"values":[["902","c"]]}
    ]}}"#;
    let got: Vec<(i64, Option<i64>)> = parse_page(body, &labels())
        .unwrap()
        .into_iter()
        .map(|f| (f.timestamp_ns, f.original_ns))
        .collect();
    assert_eq!(got, [(900, Some(10)), (901, None), (902, Some(20))]);
}

#[tokio::test]
async fn a_page_all_at_one_timestamp_is_an_error_not_a_loop() {
    let records: Vec<LogRecord> = (0..5).map(|i| rec(7, &format!("l{i}"))).collect();
    let stored = records.iter().map(|r| found(7, &r.line)).collect();
    let loki = FakePages::new(stored, 3);
    assert_eq!(
        run(&records, &loki).await,
        Err(CheckError::Stuck {
            limit: 3,
            timestamp_ns: 7
        })
    );
}

#[tokio::test]
async fn entries_of_other_streams_are_not_counted_but_still_page() {
    let records = [rec(1, "a"), rec(2, "b")];
    let mut other = found(1, "a");
    other.ours = false;
    let loki = FakePages::new(vec![other, found(2, "b")], 100);
    assert_eq!(run(&records, &loki).await, Ok(vec![false, true]));
}

#[tokio::test]
async fn a_failed_page_is_the_checks_error() {
    let records = [rec(1, "a")];
    let refs: Vec<&LogRecord> = records.iter().collect();
    let denied = QueryError::Status {
        status: 403,
        reason: "forbidden".into(),
    };
    let got = stored_in_loki(&refs, 10, |_, _| {
        let denied = denied.clone();
        async move { Err(CheckError::Query(denied)) }
    })
    .await;
    assert_eq!(got, Err(CheckError::Query(denied)));
}

#[test]
fn answers_parse_with_or_without_categorized_labels_and_extra_labels_are_ours() {
    let body = br#"{"status":"success","data":{"resultType":"streams","encodingFlags":["categorize-labels"],"result":[
        {"stream":{"job":"app","level":"info","service_name":"app"},"values":[["1700000000000000001","a",{"structuredMetadata":{"trace_id":"x"}}],["1700000000000000002","b"]]},
        {"stream":{"job":"app","level":"error"},"values":[["1700000000000000003","c"]]}
    ],"stats":{}}}"#;
    let got = parse_page(body, &labels()).unwrap();
    assert_eq!(
        got,
        [
            found(1_700_000_000_000_000_001, "a"),
            found(1_700_000_000_000_000_002, "b"),
            Found {
                timestamp_ns: 1_700_000_000_000_000_003,
                line: "c".into(),
                ours: false,
                original_ns: None,
            },
        ]
    );
    let empty = br#"{"status":"success","data":{"resultType":"streams","result":[]}}"#;
    assert_eq!(parse_page(empty, &labels()).unwrap(), []);
}

#[test]
fn answers_that_are_not_a_streams_result_are_errors() {
    for body in [
        &b"<html>login</html>"[..],
        br#"{"status":"error","data":{"resultType":"streams","result":[]}}"#,
        br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
        br#"{"status":"success","data":{"resultType":"streams","result":[{"stream":{},"values":[["x","a"]]}]}}"#,
        br#"{"status":"success","data":{"resultType":"streams","result":[{"stream":{},"values":[["1"]]}]}}"#,
    ] {
        assert!(
            matches!(parse_page(body, &labels()), Err(CheckError::Parse(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn the_query_url_is_the_push_url_with_the_query_path() {
    assert_eq!(
        query_url("https://u:p@h:3100/gw/loki/api/v1/push").unwrap(),
        "https://u:p@h:3100/gw/loki/api/v1/query_range"
    );
    assert_eq!(query_url("http://h/ingest"), Err(CheckError::NoQueryUrl));
}

#[test]
fn query_times_are_nanoseconds_loki_cannot_take_for_seconds() {
    assert_eq!(query_time(10), "00000000000000000010");
    assert_eq!(
        query_time(1_795_388_381_726_000_000),
        "01795388381726000000"
    );
}

#[test]
fn long_lines_make_smaller_pages() {
    assert_eq!(page_limit(200), QUERY_LIMIT);
    assert!(page_limit(256 * 1024) * 2 * 256 * 1024 <= MAX_PAGE_BYTES);
    assert_eq!(page_limit(usize::MAX / 4), 16);
}
