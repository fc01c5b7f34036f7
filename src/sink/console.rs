//! The console sink of `run --dry-run`: each record it would ship, as one JSON
//! object per line on stdout, and nothing else on stdout. `GET /tap` writes
//! the same line, its source named ([`write_tapped`]).

use std::io::Write;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::record::{Batch, Labels, LogRecord};

#[derive(Serialize)]
struct ConsoleRecord<'a> {
    /// Only in `wisp-agent tap`'s lines: `file`, `exec` or `otlp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    timestamp: String,
    labels: &'a Labels,
    structured_metadata: Metadata<'a>,
    line: &'a str,
}

struct Metadata<'a>(&'a [(String, String)]);

impl Serialize for Metadata<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// Writes one record as its JSON line (with the trailing newline).
pub fn write_record(out: &mut impl Write, record: &LogRecord) -> std::io::Result<()> {
    write(out, None, record)
}

/// Writes one record as `wisp-agent tap` prints it: the same line, with the
/// `source` it came from (`file`, `exec`, `otlp`) first.
pub fn write_tapped(out: &mut impl Write, source: &str, record: &LogRecord) -> std::io::Result<()> {
    write(out, Some(source), record)
}

fn write(out: &mut impl Write, source: Option<&str>, record: &LogRecord) -> std::io::Result<()> {
    let r = ConsoleRecord {
        source,
        timestamp: record.timestamp.to_string(),
        labels: &record.labels,
        structured_metadata: Metadata(&record.structured_metadata),
        line: &record.line,
    };
    serde_json::to_writer(&mut *out, &r)?;
    out.write_all(b"\n")
}

/// Drains `rx` into `out` on the calling (blocking) thread; acknowledges each batch
/// once it is written and flushed. Returns the number of records written, or the
/// first write error (a closed pipe: the reader went away).
pub fn run_blocking(mut rx: mpsc::Receiver<Batch>, out: impl Write) -> std::io::Result<u64> {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut written = 0u64;
    while let Some(batch) = rx.blocking_recv() {
        for record in &batch.records {
            write_record(&mut out, record)?;
            written += 1;
        }
        out.flush()?;
        batch.ack.done();
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Ack, Timestamp};

    #[test]
    fn a_record_is_one_json_line_in_the_spec_shape() {
        let record = LogRecord {
            timestamp: Timestamp(1_795_388_381_726_000_000),
            labels: Labels::from_pairs([("job", "refly-api"), ("level", "info")]),
            structured_metadata: vec![("trace_id".into(), "4bf9".into())],
            line: "{\"level\":30,\"msg\":\"hi\"}".into(),
        };
        let mut out = Vec::new();
        write_record(&mut out, &record).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"timestamp\":\"2026-11-22T22:59:41.726000000Z\",\"labels\":{\"job\":\"refly-api\",\"level\":\"info\"},\
             \"structured_metadata\":{\"trace_id\":\"4bf9\"},\"line\":\"{\\\"level\\\":30,\\\"msg\\\":\\\"hi\\\"}\"}\n"
        );
    }

    #[test]
    fn batches_are_acknowledged_after_they_are_written() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let (tx, rx) = mpsc::channel(1);
        let acked = Arc::new(AtomicBool::new(false));
        let a = acked.clone();
        tx.try_send(Batch {
            records: vec![LogRecord {
                timestamp: Timestamp(0),
                labels: Labels::default(),
                structured_metadata: vec![],
                line: "x".into(),
            }],
            ack: Ack::new(move || a.store(true, Ordering::SeqCst)),
            owner: crate::record::Owner::UNKNOWN,
        })
        .unwrap();
        drop(tx);
        let mut out = Vec::new();
        assert_eq!(run_blocking(rx, &mut out).unwrap(), 1);
        assert!(acked.load(Ordering::SeqCst));
    }
}
