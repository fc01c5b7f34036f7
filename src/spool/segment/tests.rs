//! Unit tests of the segment format: framing, checksums, payload decoding.

use super::*;
use crate::record::{Labels, LogRecord, Timestamp};

fn record(line: &str) -> LogRecord {
    LogRecord {
        timestamp: Timestamp(-5),
        labels: Labels::from_pairs([("job", "api"), ("level", "info")]),
        structured_metadata: vec![("trace_id".into(), "abc".into())],
        line: line.into(),
    }
}

#[test]
fn a_frame_decodes_to_the_record_it_encodes() {
    let r = record("héllo ✓ {\"a\":1}");
    let mut buf = Vec::new();
    let n = encode_frame(&r, &mut buf);
    assert_eq!(n, buf.len());
    let mut payload = Vec::new();
    let frame = read_frame(&mut &buf[..], buf.len() as u64, &mut payload).unwrap();
    assert!(matches!(frame, Frame::Record { .. }));
    let mut cache = LabelCache::default();
    assert_eq!(decode_payload(&payload, &mut cache).unwrap(), r);
    // The second decode of the same stream reuses the cached label set.
    assert_eq!(decode_payload(&payload, &mut cache).unwrap(), r);
}

#[test]
fn a_flipped_bit_anywhere_in_a_frame_is_detected() {
    let mut buf = Vec::new();
    encode_frame(&record("some line"), &mut buf);
    for i in 0..buf.len() {
        let mut bad = buf.clone();
        bad[i] ^= 0x10;
        let mut payload = Vec::new();
        let frame = read_frame(&mut &bad[..], bad.len() as u64, &mut payload).unwrap();
        assert_ne!(
            std::mem::discriminant(&frame),
            std::mem::discriminant(&Frame::Record { len: 0 }),
            "flip at byte {i} went unnoticed"
        );
    }
}

#[test]
fn a_frame_longer_than_what_remains_is_torn() {
    let mut buf = Vec::new();
    encode_frame(&record("some line"), &mut buf);
    let mut payload = Vec::new();
    for cut in 0..buf.len() {
        let frame = read_frame(&mut &buf[..cut], cut as u64, &mut payload).unwrap();
        assert_eq!(frame, Frame::Torn, "cut at {cut}");
    }
}

#[test]
fn malformed_payloads_are_errors_not_panics() {
    let mut cache = LabelCache::default();
    for bad in [
        &b""[..],
        &[1, 2, 3],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff],
        &[0, 0, 0, 0, 0, 0, 0, 0, 1, 5, b'a'],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc3],
    ] {
        assert!(decode_payload(bad, &mut cache).is_err(), "{bad:?}");
    }
    // A line whose one bad byte comes after a long valid run (the vector
    // check's path), or is a lone surrogate's encoding.
    for tail in [&[0xff][..], &[0xed, 0xa0, 0x80]] {
        let mut bad = vec![0u8; 10];
        bad.extend(std::iter::repeat_n(b'a', 100));
        bad.extend_from_slice(tail);
        assert!(decode_payload(&bad, &mut cache).is_err(), "{tail:?}");
    }
}

#[test]
fn file_names_sort_as_ids_and_parse_back() {
    assert_eq!(parse_file_name(&file_name(42)), Some(42));
    assert!(file_name(9) < file_name(10));
    assert_eq!(parse_file_name("ack"), None);
    assert_eq!(parse_file_name("0000000000000000001x.seg"), None);
}

/// The writer encodes a run of one stream's label set once and the reader
/// reuses the set it decoded last: streams that alternate, one set a prefix of
/// another's, an equal set from another allocation, and no labels at all each
/// come back as written.
#[test]
fn records_of_alternating_streams_decode_to_their_own_labels() {
    let api = Labels::from_pairs([("job", "api"), ("level", "info")]);
    let longer = Labels::from_pairs([("job", "api"), ("level", "info"), ("z", "1")]);
    let api_again = Labels::from_pairs([("job", "api"), ("level", "info")]);
    let sets = [
        api.clone(),
        api.clone(),
        longer.clone(),
        api,
        Labels::default(),
        api_again,
        longer,
    ];
    let records: Vec<LogRecord> = sets
        .iter()
        .enumerate()
        .map(|(i, labels)| LogRecord {
            labels: labels.clone(),
            line: format!("line {i}"),
            ..record("")
        })
        .collect();
    let mut buf = Vec::new();
    let mut writer_cache = LabelCache::default();
    for r in &records {
        encode_frame_cached(r, &mut buf, &mut writer_cache);
    }
    let mut reader = &buf[..];
    let mut payload = Vec::new();
    let mut reader_cache = LabelCache::default();
    for r in &records {
        let left = reader.len() as u64;
        let frame = read_frame(&mut reader, left, &mut payload).unwrap();
        assert!(matches!(frame, Frame::Record { .. }));
        assert_eq!(&decode_payload(&payload, &mut reader_cache).unwrap(), r);
    }
    assert!(reader.is_empty());
}
