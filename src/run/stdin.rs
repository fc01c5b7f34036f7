//! `run --stdin --dry-run`: standard input parsed as one `[[files]]` entry
//! parses a file (its `format`, `multiline`, `max_line_bytes`, labels and
//! `label_fields`; terminal sequences removed as for files), each record
//! printed as `--dry-run` prints it, through the same transform stage and
//! console sink; it ends once the end of input is printed.
//!
//! Which entry: the one `--job NAME` names; a name no entry has gets the
//! defaults of an entry, under that name; without `--job`, the first entry,
//! else the defaults under the name `stdin`. The records carry no `filename`
//! label. A last line without its newline is printed at the end of input.
//!
//! Standard input is read on a thread of its own, not the runtime's blocking
//! pool: a read that never returns (a terminal, Ctrl-C) does not hold the exit.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::logs::{transform, CHANNEL_BATCHES};
use crate::config::{Config, FileConfig};
use crate::parse::{ParseSettings, Transformer};
use crate::record::{Ack, Owner, SourceBatch, SourceInfo, SourceLine, Timestamp};
use crate::source::multiline::{Joined, Joiner, JoinerSettings};
use crate::source::terminal::{self, RenderStats};

/// Bytes read from standard input at once.
const READ_BYTES: usize = 64 * 1024;

/// Lines handed to the transform stage in one batch, at most.
const BATCH_LINES: usize = 1000;

/// The entry whose settings parse standard input; see the module docs.
pub(super) fn entry(files: &[FileConfig], job: Option<&str>) -> FileConfig {
    let named = |name: &str| FileConfig {
        name: name.to_string(),
        ..FileConfig::default()
    };
    match job {
        Some(job) => files
            .iter()
            .find(|f| f.name == job)
            .cloned()
            .unwrap_or_else(|| named(job)),
        None => files.first().cloned().unwrap_or_else(|| named("stdin")),
    }
}

/// The dry run over standard input; `job` from `--job`.
pub async fn run(
    config: Config,
    job: Option<String>,
    cancel: CancellationToken,
) -> Result<ExitCode> {
    let entry = entry(&config.files, job.as_deref());
    tracing::info!(
        "dry run over standard input, parsed as the [[files]] entry {:?}; printing records, shipping nothing",
        entry.name
    );
    let source = Arc::new(SourceInfo {
        job: entry.name.clone(),
        filename: None,
        labels: entry
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        format: entry.format,
        label_fields: entry.label_fields.clone(),
        trace_context: None,
        owner: Owner::file(0, rustix::process::geteuid().as_raw()),
    });
    let (chunk_tx, chunk_rx) = mpsc::channel(CHANNEL_BATCHES);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_stdin(chunk_tx))
        .context("cannot start the thread reading standard input")?;
    let (src_tx, src_rx) = mpsc::channel(CHANNEL_BATCHES);
    let (batch_tx, batch_rx) = mpsc::channel(CHANNEL_BATCHES);
    let transformer = Transformer::new(ParseSettings::from_config(&config));
    let reading = tokio::spawn(lines(chunk_rx, entry, source, src_tx, cancel.clone()));
    let stage = tokio::spawn(transform(src_rx, batch_tx, transformer));
    let console = tokio::task::spawn_blocking(move || {
        crate::sink::console::run_blocking(batch_rx, std::io::stdout())
    });
    let printed = console.await.context("the console sink stopped")?;
    // The console ends first only when stdout went away: stop reading then.
    cancel.cancel();
    let read = reading.await.context("reading standard input stopped")?;
    let _ = stage.await;
    read.context("cannot read standard input")?;
    super::dry::finished(printed)
}

/// Reads standard input in chunks into `tx` until its end (then drops `tx`),
/// an error (sent), or the receiver going away.
fn read_stdin(tx: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let chunk = match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => Ok(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
        let failed = chunk.is_err();
        if tx.blocking_send(chunk).is_err() || failed {
            return;
        }
    }
}

/// Cuts the chunks into lines as the tailer does (cut at `max_line_bytes`,
/// terminal sequences removed, joined by the entry's multiline rule) and
/// sends them on, until the end of input or `cancel`.
async fn lines(
    mut chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    entry: FileConfig,
    source: Arc<SourceInfo>,
    tx: mpsc::Sender<SourceBatch>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let max = entry.max_line_bytes.as_usize().max(1);
    let mut splitter = Lines {
        joiner: Joiner::new(JoinerSettings::from_file_config(&entry)),
        line: Vec::new(),
        cut: false,
        offset: 0,
        max,
        stats: RenderStats::default(),
        joined: Vec::new(),
    };
    loop {
        let deadline = splitter.joiner.deadline();
        let chunk = tokio::select! {
            _ = cancel.cancelled() => None,
            chunk = chunks.recv() => chunk,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                splitter.joiner.flush_due(Instant::now(), &mut splitter.joined);
                if !send(&mut splitter.joined, &source, &tx).await {
                    return Ok(());
                }
                continue;
            }
        };
        match chunk {
            Some(Ok(data)) => splitter.consume(&data),
            Some(Err(e)) => return Err(e),
            None => {
                splitter.finish();
                send(&mut splitter.joined, &source, &tx).await;
                return Ok(());
            }
        }
        if !send(&mut splitter.joined, &source, &tx).await {
            return Ok(());
        }
    }
}

/// The line-cutting state over standard input.
struct Lines {
    joiner: Joiner,
    /// The line being read, at most `max` bytes.
    line: Vec<u8>,
    /// Whether the line being read was cut.
    cut: bool,
    /// Bytes read so far (the joiner's offsets).
    offset: u64,
    max: usize,
    stats: RenderStats,
    joined: Vec<Joined>,
}

impl Lines {
    fn consume(&mut self, data: &[u8]) {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            self.append(&data[start..nl]);
            self.offset += (nl + 1 - start) as u64;
            self.end_line();
            start = nl + 1;
        }
        self.append(&data[start..]);
        self.offset += (data.len() - start) as u64;
    }

    fn append(&mut self, seg: &[u8]) {
        if self.cut {
            return;
        }
        let room = self.max.saturating_sub(self.line.len());
        if seg.len() > room {
            // Cut on a character boundary, as the tailer does.
            let end = crate::source::file::reader::char_floor(seg, room);
            self.line.extend_from_slice(&seg[..end]);
            self.cut = true;
        } else {
            self.line.extend_from_slice(seg);
        }
    }

    fn end_line(&mut self) {
        let text = terminal::render(&self.line, &mut self.stats);
        self.line.clear();
        self.cut = false;
        self.joiner
            .push(text, self.offset, Instant::now(), &mut self.joined);
    }

    /// The end of input: the last line, even without its newline, and the
    /// pending record.
    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.end_line();
        }
        self.joiner.flush(&mut self.joined);
    }
}

/// Sends what is joined, in batches of [`BATCH_LINES`]; `false` once the
/// transform stage is gone.
async fn send(
    joined: &mut Vec<Joined>,
    source: &Arc<SourceInfo>,
    tx: &mpsc::Sender<SourceBatch>,
) -> bool {
    let read_time = Timestamp::now();
    while !joined.is_empty() {
        let n = joined.len().min(BATCH_LINES);
        let lines = joined
            .drain(..n)
            .map(|j| SourceLine {
                text: j.text,
                read_time,
            })
            .collect();
        let batch = SourceBatch {
            source: source.clone(),
            lines,
            ack: Ack::none(),
        };
        if tx.send(batch).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_is_the_one_named_else_the_first_else_the_defaults() {
        let files = vec![
            FileConfig {
                name: "api".into(),
                ..FileConfig::default()
            },
            FileConfig {
                name: "worker".into(),
                max_line_bytes: crate::config::Size::kib(1),
                ..FileConfig::default()
            },
        ];
        assert_eq!(entry(&files, None).name, "api");
        assert_eq!(entry(&files, Some("worker")), files[1]);
        assert_eq!(entry(&files, Some("other")).name, "other");
        assert_eq!(
            entry(&[], None),
            FileConfig {
                name: "stdin".into(),
                ..FileConfig::default()
            }
        );
    }

    #[test]
    fn lines_are_cut_at_the_bound_and_the_last_one_kept_without_its_newline() {
        let mut l = Lines {
            joiner: Joiner::new(JoinerSettings {
                mode: crate::config::Multiline::None,
                max_lines: 10,
                max_bytes: 16,
                timeout: std::time::Duration::from_secs(1),
            }),
            line: Vec::new(),
            cut: false,
            offset: 0,
            max: 16,
            stats: RenderStats::default(),
            joined: Vec::new(),
        };
        l.consume(b"abcdefghijklmnopqrst\nx\x1b[31my\x1b[0m\r\nte");
        l.consume(b"il");
        l.finish();
        let texts: Vec<&str> = l.joined.iter().map(|j| j.text.as_str()).collect();
        assert_eq!(texts, ["abcdefghijklmnop", "xy", "teil"]);
    }
}
