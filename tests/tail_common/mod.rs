//! Shared by the `tail_*` tests: runs the real tailer on real files in a temp dir,
//! with a consumer that records every line and acknowledges (or drops) each batch.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wisp_agent::config::{FileConfig, Multiline, Span, StartAt};
use wisp_agent::source::file::{self, TailCounters, TailError, TailSettings};

/// How long any condition may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A `[[files]]` entry for tests: read from the start, poll fast, no joining.
pub fn entry(name: &str, pattern: &Path) -> FileConfig {
    FileConfig {
        name: name.into(),
        paths: vec![pattern.display().to_string()],
        start_at: StartAt::Beginning,
        poll_interval: Span::millis(50),
        multiline: Multiline::None,
        ..FileConfig::default()
    }
}

/// What the consumer does with each batch's ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// Calls it: the batch is durable, the checkpoint may move.
    Call,
    /// Drops it: the batch is never acknowledged.
    Drop,
}

/// One line as the tailer handed it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub filename: String,
    pub job: String,
    pub text: String,
}

/// A running tailer and the consumer of its batches.
pub struct Tail {
    pub counters: Arc<TailCounters>,
    received: Arc<Mutex<Vec<Received>>>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), TailError>>,
    consumer: Option<JoinHandle<()>>,
    /// The receiving end, when the test consumes by itself (see [`Tail::paused`]).
    pub rx: Option<mpsc::Receiver<wisp_agent::record::SourceBatch>>,
}

/// Starts the tailer on `files` with file events on and every ack called.
pub fn start(files: Vec<FileConfig>, state_dir: &Path) -> Tail {
    start_with(
        TailSettings::new(files, state_dir.to_path_buf()),
        Acks::Call,
    )
}

pub fn start_with(settings: TailSettings, acks: Acks) -> Tail {
    let (tx, mut rx) = mpsc::channel(4);
    let mut tail = spawn(settings, tx);
    let received = tail.received.clone();
    tail.consumer = Some(tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            {
                let mut r = received.lock().unwrap();
                for l in &batch.lines {
                    r.push(Received {
                        filename: batch.source.filename.clone().unwrap_or_default(),
                        job: batch.source.job.clone(),
                        text: l.text.clone(),
                    });
                }
            }
            match acks {
                Acks::Call => batch.ack.done(),
                Acks::Drop => drop(batch.ack),
            }
        }
    }));
    tail
}

/// Starts the tailer with a channel of `capacity` that nobody reads yet: the test
/// takes `rx` and reads when it wants.
pub fn paused(settings: TailSettings, capacity: usize) -> Tail {
    let (tx, rx) = mpsc::channel(capacity);
    let mut tail = spawn(settings, tx);
    tail.rx = Some(rx);
    tail
}

fn spawn(settings: TailSettings, tx: mpsc::Sender<wisp_agent::record::SourceBatch>) -> Tail {
    let counters = settings.counters.clone();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(file::run(settings, tx, cancel.clone()));
    Tail {
        counters,
        received: Arc::default(),
        cancel,
        task,
        consumer: None,
        rx: None,
    }
}

impl Tail {
    /// Every line received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn texts(&self) -> Vec<String> {
        self.received().into_iter().map(|r| r.text).collect()
    }

    /// Waits until at least `n` lines have arrived; fails naming what did.
    pub async fn wait_lines(&self, n: usize) -> Vec<String> {
        let got = eventually(&format!("{n} lines"), || {
            self.received.lock().unwrap().len() >= n
        })
        .await;
        if !got {
            let texts = self.texts();
            panic!(
                "expected {n} lines within {PATIENCE:?}, got {}, ending with {:?}",
                texts.len(),
                tail_of(&texts)
            );
        }
        self.texts()
    }

    /// Stops the tailer (as at shutdown) and returns every line received.
    pub async fn stop(mut self) -> Vec<String> {
        self.cancel.cancel();
        let result = tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the tailer stops within the deadline")
            .expect("the tailer task does not panic");
        result.expect("the tailer returns Ok");
        if let Some(c) = self.consumer.take() {
            c.await.expect("the consumer ends when the tailer is gone");
        }
        self.texts()
    }
}

/// Polls `cond` until it holds or [`PATIENCE`] runs out; returns whether it held.
pub async fn eventually(_what: &str, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn tail_of(v: &[String]) -> &[String] {
    &v[v.len().saturating_sub(5)..]
}

/// Appends `text` to `path` (creating it), as a writer with `O_APPEND` does.
pub fn append(path: &Path, text: &str) {
    append_bytes(path, text.as_bytes());
}

pub fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

/// `n` numbered lines `"{prefix} {i}"`, each ending in `\n`.
pub fn numbered(prefix: &str, range: std::ops::Range<usize>) -> String {
    range.map(|i| format!("{prefix} {i}\n")).collect()
}

/// The lines `"{prefix} {i}"` for `range`, as they should arrive.
pub fn expected(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}

pub fn temp() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let state = dir.path().join("state");
    (dir, logs, state)
}
