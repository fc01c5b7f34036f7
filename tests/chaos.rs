//! Chaos, with the real binary: a program writes numbered Pino lines while the
//! agent is killed with `kill -9` again and again, the file is rotated every way
//! users rotate it, Loki answers 429 and 500, goes away, restarts, and stores a
//! push without answering, and the buffer's disk fills up. At the end every line
//! is in the test Loki exactly once: none missing, none twice. The test Loki is
//! no kinder than a real one (it keeps replayed entries), and the count is exact.
//!
//! `WISP_CHAOS_LINES` sets how many lines are written (default 20000; the
//! issue's bar is 100000, five kills, rotation and a Loki restart).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::agent::{Agent, Setup};
use support::loki::{LokiReceiver, Mode};
use support::{fill, wait_until, wait_until_async, TinyFs, DEADLINE};

/// The program under observation: appends numbered lines to `app.log` and
/// rotates it as logrotate would.
struct Writer {
    dir: PathBuf,
    file: std::fs::File,
    next: usize,
    rotations: usize,
    start_ms: u128,
}

impl Writer {
    fn new(dir: &Path) -> Writer {
        Writer {
            dir: dir.to_path_buf(),
            file: Self::open(&dir.join("app.log")),
            next: 0,
            rotations: 0,
            start_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        }
    }

    fn open(path: &Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    fn line(&self, i: usize) -> String {
        format!(
            r#"{{"level":30,"time":{},"pid":4242,"hostname":"vm","msg":"chaos line {i:07}","pad":"{}"}}"#,
            self.start_ms + i as u128,
            "x".repeat(i % 97)
        )
    }

    /// Appends `n` lines in a few writes.
    fn write(&mut self, n: usize) {
        let mut buf = String::new();
        for _ in 0..n {
            buf.push_str(&self.line(self.next));
            buf.push('\n');
            self.next += 1;
            if buf.len() > 16 * 1024 {
                self.file.write_all(buf.as_bytes()).unwrap();
                buf.clear();
            }
        }
        self.file.write_all(buf.as_bytes()).unwrap();
    }

    /// Rename and create: the old file goes on being read to its end.
    fn rename_and_create(&mut self) {
        self.rotations += 1;
        let rotated = self.dir.join(format!("app.log.{}", self.rotations));
        std::fs::rename(self.dir.join("app.log"), &rotated).unwrap();
        self.file = Self::open(&self.dir.join("app.log"));
    }

    /// logrotate's `copytruncate`: copy, then truncate in place (the program
    /// keeps writing to the same descriptor, in append mode).
    fn copy_truncate(&mut self) -> PathBuf {
        self.rotations += 1;
        let copy = self.dir.join(format!("app.log.{}", self.rotations));
        std::fs::copy(self.dir.join("app.log"), &copy).unwrap();
        self.file.set_len(0).unwrap();
        copy
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_arrives_exactly_once_through_kills_rotations_loki_faults_and_a_full_disk() {
    let total: usize = std::env::var("WISP_CHAOS_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    setup.set_admin_listen("127.0.0.1:0");
    // Every rotated name stays matched, so rotated files are read to their end
    // even across a restart.
    let logs = setup.dir.path().join("logs");
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let mut config = config.replace(
        &format!("paths = [\"{}/*.log\"]", logs.display()),
        &format!("paths = [\"{}/app.log*\"]", logs.display()),
    );
    // The buffer on a small file system of its own (when root), to fill it.
    let tiny = TinyFs::mount("32m");
    if let Some(fs) = &tiny {
        let state = setup.dir.path().join("state");
        config = config.replace(
            &format!("state_dir = \"{}\"", state.display()),
            &format!("state_dir = \"{}\"", fs.path().join("state").display()),
        );
    } else {
        eprintln!("no tmpfs here (needs root): the full-disk step is skipped");
    }
    std::fs::write(&setup.config, config).unwrap();

    let mut writer = Writer::new(&logs);
    let mut agent = setup.start();
    let steps = 40usize;
    let per_step = total.div_ceil(steps);
    let mut kills = 0;
    for step in 0..steps {
        writer.write(per_step.min(total.saturating_sub(writer.next)));
        match step {
            // kill -9 at five points: while lines are being read and spooled,
            // during an outage, during a push Loki stored but did not answer,
            // right after a rotation, and while a 500 is being retried.
            3 | 18 | 21 | 25 | 34 => {
                if step == 3 || step == 25 {
                    // Right after Loki has every line so far: the tailer's
                    // positions.json is then up to a second behind the spool.
                    let written = writer.next;
                    wait_until(DEADLINE, || loki.stored_count() >= written).await;
                }
                if step == 21 {
                    // Loki stores the push but the agent never hears back.
                    loki.set_mode(Mode::StoreThenHang);
                    let before = loki.received_count();
                    writer.write(200);
                    wait_until(DEADLINE, || loki.received_count() > before).await;
                }
                agent.kill9();
                kills += 1;
                loki.set_mode(Mode::Normal);
                writer.write(per_step / 4);
                agent = setup.start();
                // Up and following the files again before anything is rotated.
                let current = format!("tailing {} from byte", logs.join("app.log").display());
                let up = wait_until(DEADLINE, || agent.own_log().contains(&current)).await;
                assert!(up, "the agent did not start tailing:\n{}", agent.own_log());
            }
            6 | 24 => writer.rename_and_create(),
            9 | 30 => {
                // The agent follows the file to its end when it is copied, so
                // that the copy is one of a followed file.
                let written = writer.next;
                wait_until(DEADLINE, || loki.stored_count() >= written).await;
                let copy = writer.copy_truncate();
                // The agent must see the copy before the next kill: a copy made
                // while the agent is away is indistinguishable from a new file.
                let name = copy.display().to_string();
                let seen = wait_until(DEADLINE, || {
                    agent.log().contains(&format!("tailing {name} from byte"))
                })
                .await;
                assert!(seen, "the copy {name} was never tailed:\n{}", agent.log());
            }
            11 => loki.fail_next(5, 429, Some(0), "rate limited"),
            15 => loki.fail_next(4, 500, None, "internal error"),
            17 => loki.stop().await,
            19 => loki.restart().await,
            33 => loki.fail_next(50, 500, None, "internal error"),
            36 => {
                // Loki restarts while the agent pushes.
                loki.stop().await;
                writer.write(per_step / 2);
                loki.restart().await;
            }
            38 => {
                if let Some(fs) = &tiny {
                    fill_disk(fs, &mut writer, &agent).await;
                }
            }
            _ => {}
        }
    }
    writer.write(total.saturating_sub(writer.next));
    loki.set_mode(Mode::Normal);
    assert_eq!(kills, 5);

    let written = writer.next;
    let all: Vec<String> = (0..written).map(|i| writer.line(i)).collect();
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &all, Duration::from_secs(60))
        .await;
    assert_eq!(agent.terminate(), Some(0));
    if let Err(e) = loki.exactly_once(r#"{job="app"}"#, &all) {
        panic!("after the agent stopped: {e}");
    }
    assert_eq!(loki.stored_count(), written, "nothing else is stored");
}

/// Fills the buffer's file system while lines keep coming, checks the agent
/// stops reading rather than losing or doubling anything, then frees it.
async fn fill_disk(fs: &TinyFs, writer: &mut Writer, agent: &Agent) {
    // Once the agent has its buffer open (it logs the admin address after).
    let admin = agent.admin_addr().await;
    let filler = fs.path().join("filler");
    fill(&filler);
    writer.write(2000);
    let paused = wait_until_async(DEADLINE, || async {
        reqwest::get(format!("http://{admin}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert!(
        paused,
        "the buffer never reported a full disk:\n{}",
        tail_of(&agent.log())
    );
    std::fs::remove_file(&filler).unwrap();
    let resumed = wait_until_async(DEADLINE, || async {
        reqwest::get(format!("http://{admin}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(
        resumed,
        "the buffer never took lines again:\n{}",
        tail_of(&agent.log())
    );
}

/// The last lines of a long agent log, for failure messages.
fn tail_of(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}
