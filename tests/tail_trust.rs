//! A root agent tailing folders that local users own: nothing a user puts there
//! (a symlink to a root-only file, a FIFO, a huge sparse state file) makes it ship
//! what it should not, hang, or balloon; and a file it cannot reach for a while is
//! not taken for rotated. Runs the real binary as root, with the files made by an
//! unprivileged user (`wisp-test-intruder`, created if missing); skipped when the
//! tests do not run as root.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use support::agent::{Agent, Setup};
use support::loki::LokiReceiver;
use support::users::{as_intruder, intruder};
use support::{append, wait_until, DEADLINE};

const SECRET: &str = "root-only secret line";

/// A harness whose `logs` folder belongs to the intruder (the agent's temp dir
/// is opened up so the intruder can reach it), plus an entry one folder deeper
/// (`deep`, `logs/*/*.log`: a folder symlink in the glob's expanded part) and
/// one under a named folder (`literal`, `logs/lit/*.txt`: a folder symlink in
/// the pattern's literal part).
fn setup(loki: &LokiReceiver, who: (u32, u32), extra: &str) -> Setup {
    let logs_glob = "LOGS_DIR";
    let deep = format!(
        "{extra}\n\n[[files]]\nname = \"deep\"\npaths = [\"{logs_glob}/*/*.log\"]\n\
         start_at = \"beginning\"\npoll_interval = \"50ms\"\n{extra}\n\n\
         [[files]]\nname = \"literal\"\npaths = [\"{logs_glob}/lit/*.txt\"]\n\
         start_at = \"beginning\"\npoll_interval = \"50ms\"\n{extra}\n"
    );
    let s = Setup::new(loki, &deep);
    let logs = s.dir.path().join("logs");
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace(logs_glob, &logs.display().to_string()),
    )
    .unwrap();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    rustix::fs::chown(
        &logs,
        Some(rustix::process::Uid::from_raw(who.0)),
        Some(rustix::process::Gid::from_raw(who.1)),
    )
    .unwrap();
    s
}

/// A root-only (0700) folder of root-only (0600) files holding [`SECRET`]:
/// `file.secret` for a link to a file, `a.log` and `b.txt` for the `deep` and
/// `literal` entries through a link to the folder (three files, so that no entry
/// owns another's file). Returns the folder and `file.secret`.
fn root_only_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["file.secret", "a.log", "b.txt"] {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{SECRET}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let p = dir.path().join("file.secret");
    (dir, p)
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} {i}")).collect()
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// Whether [`SECRET`] reached Loki under another job than `admin`'s.
fn shipped_secret(loki: &LokiReceiver) -> bool {
    loki.all_entries().iter().any(|e| {
        e.line.contains(SECRET) && e.labels.get("job").map(String::as_str) != Some("admin")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_symlink_to_a_root_only_file_is_not_shipped_but_their_own_files_are() {
    let Some(who) = intruder() else { return };
    let loki = LokiReceiver::start().await;
    let s = setup(&loki, who, "");
    let logs = s.dir.path().join("logs");
    let (secret_dir, secret) = root_only_file();
    // The administrator tails one of the root-only files on purpose: a refused
    // link to it must not take it from that entry.
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(&s.config)
        .unwrap();
    std::io::Write::write_all(
        &mut config,
        format!(
            "\n[[files]]\nname = \"admin\"\npaths = [\"{}\"]\n\
             start_at = \"beginning\"\npoll_interval = \"50ms\"\n",
            secret_dir.path().join("b.txt").display()
        )
        .as_bytes(),
    )
    .unwrap();
    as_intruder(
        who,
        &logs,
        &format!(
            "ln -s {secret} evil.log && ln -s {dir} evil && ln -s {dir} lit && \
             printf 'own 0\\nown 1\\nown 2\\n' > own.log",
            secret = secret.display(),
            dir = secret_dir.path().display()
        ),
    );
    let agent = s.start();
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &lines("own", 3), DEADLINE)
        .await;
    let refused = |name: &str| {
        format!(
            "symlink {} is owned by uid {}",
            logs.join(name).display(),
            who.0
        )
    };
    assert!(
        wait_until(DEADLINE, || {
            let log = agent.log();
            ["evil.log", "lit"]
                .iter()
                .all(|name| log.contains(&refused(name)))
        })
        .await,
        "the links refused, by name and owner:\n{}",
        agent.log()
    );
    // Scans go on; the refusals are logged once each.
    append(&logs.join("own.log"), &["own 3".to_string()]);
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &lines("own", 4), DEADLINE)
        .await;
    let log = agent.log();
    assert_eq!(count(&log, &refused("evil.log")), 1, "{log}");
    // Folder links a wildcard meets (`evil` and `lit` for `logs/*/*.log`) are
    // not even looked into; the first is named once. `lit` in the literal
    // part of `logs/lit/*.txt` is the pattern's own: followed to `b.txt`,
    // which the owner rule refuses.
    assert_eq!(count(&log, &refused("evil")), 0, "{log}");
    assert_eq!(count(&log, &refused("lit")), 1, "{log}");
    let not_followed = format!(
        "not looking into {}: a symlink",
        logs.join("evil").display()
    );
    assert_eq!(count(&log, &not_followed), 1, "{log}");
    assert!(
        log.contains("follow_symlinks = true"),
        "names the key: {log}"
    );
    assert!(log.contains("by uid 0"), "names the target's owner: {log}");
    agent
        .assert_shipped_once(&loki, r#"{job="admin"}"#, &[SECRET.to_string()], DEADLINE)
        .await;
    assert!(
        !shipped_secret(&loki),
        "a root-only file reached Loki through a user's link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_follow_symlinks_the_same_links_are_followed() {
    let Some(who) = intruder() else { return };
    let loki = LokiReceiver::start().await;
    let s = setup(&loki, who, "follow_symlinks = true");
    let logs = s.dir.path().join("logs");
    let (secret_dir, secret) = root_only_file();
    as_intruder(
        who,
        &logs,
        &format!(
            "ln -s {secret} evil.log && ln -s {dir} evil && ln -s {dir} lit",
            secret = secret.display(),
            dir = secret_dir.path().display()
        ),
    );
    let agent = s.start();
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &[SECRET.to_string()], DEADLINE)
        .await;
    agent
        .assert_shipped_once(&loki, r#"{job="deep"}"#, &[SECRET.to_string()], DEADLINE)
        .await;
    agent
        .assert_shipped_once(&loki, r#"{job="literal"}"#, &[SECRET.to_string()], DEADLINE)
        .await;
}

/// A link to a folder that a wildcard meets is never followed without
/// `follow_symlinks = true` (issue 22: `u -> /usr` in a hundred folders), even
/// when its owner owns the folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_to_a_file_its_owner_owns_is_followed_but_not_one_to_a_folder() {
    let Some(who) = intruder() else { return };
    let loki = LokiReceiver::start().await;
    let s = setup(&loki, who, "");
    let logs = s.dir.path().join("logs");
    // The intruder's own files, outside the tailed folder.
    let elsewhere = s.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    rustix::fs::chown(
        &elsewhere,
        Some(rustix::process::Uid::from_raw(who.0)),
        Some(rustix::process::Gid::from_raw(who.1)),
    )
    .unwrap();
    as_intruder(
        who,
        &elsewhere,
        "mkdir d && printf 'linked 0\\nlinked 1\\n' > mine.txt && printf 'deep 0\\n' > d/a.log",
    );
    as_intruder(
        who,
        &logs,
        &format!(
            "ln -s {e}/mine.txt linked.log && ln -s {e}/d d",
            e = elsewhere.display()
        ),
    );
    let agent = s.start();
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &lines("linked", 2), DEADLINE)
        .await;
    // A real folder beside the link is read: once its line is in, the link's
    // would have been too.
    as_intruder(who, &logs, "mkdir real && printf 'real 0\\n' > real/a.log");
    agent
        .assert_shipped_once(&loki, r#"{job="deep"}"#, &lines("real", 1), DEADLINE)
        .await;
    assert!(
        !loki
            .all_entries()
            .iter()
            .any(|e| e.line.starts_with("deep ")),
        "a folder link was followed:\n{}",
        agent.log()
    );
}

/// The FIFO as the report has it, plus a path that flips between a regular file
/// and a FIFO (so that a FIFO is what an open finds after a `stat` saw a file),
/// in a folder of its own (the `deep` entry's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_matched_by_the_glob_does_not_stop_the_agent() {
    let Some(who) = intruder() else { return };
    let loki = LokiReceiver::start().await;
    let s = setup(&loki, who, "");
    s.set_admin_listen("127.0.0.1:0");
    let logs = s.dir.path().join("logs");
    as_intruder(who, &logs, "mkfifo pipe.log && printf 'own 0\\n' > own.log");
    let mut agent = s.start();
    let admin = agent.admin_addr().await;
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &lines("own", 1), DEADLINE)
        .await;
    // The flipping path, for as long as it takes the agent to meet it as a FIFO
    // a number of times.
    let mut flipper = Command::new("setpriv")
        .arg(format!("--reuid={}", who.0))
        .arg(format!("--regid={}", who.1))
        .arg("--clear-groups")
        .args([
            "sh",
            "-c",
            "mkdir -p r && cd r && while :; do \
             mkfifo f.tmp; mv -f f.tmp race.log; echo x > r.tmp; mv -f r.tmp race.log; done",
        ])
        .current_dir(&logs)
        .spawn()
        .unwrap();
    // Progress, whatever the agent makes of it: each flip it sees is logged.
    let met = wait_until(Duration::from_secs(20), || {
        count(&agent.log(), "r/race.log") >= 200
    })
    .await;
    let _ = flipper.kill();
    let _ = flipper.wait();
    assert!(
        met,
        "the agent stopped noticing the flipping path (frozen on a FIFO?):\n{}",
        agent.log()
    );
    append(&logs.join("own.log"), &["own 1".to_string()]);
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &lines("own", 2), DEADLINE)
        .await;
    let health = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert!(health.status().is_success());
    let log = agent.log();
    assert_eq!(
        count(&log, "pipe.log: it is a FIFO"),
        1,
        "logged once: {log}"
    );
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_sparse_positions_file_is_set_aside_without_being_read() {
    let Some(who) = intruder() else { return };
    let loki = LokiReceiver::start().await;
    let s = setup(&loki, who, "");
    let state = s.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let positions = state.join("positions.json");
    std::fs::File::create(&positions)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    append(&s.log_path("own.log"), &lines("own", 3));
    let agent = s.start();
    agent
        .assert_shipped_once(&loki, r#"{job="app"}"#, &lines("own", 3), DEADLINE)
        .await;
    let hwm = vm_hwm_kib(agent.pid().unwrap());
    assert!(
        hwm < 256 * 1024,
        "peak RSS {hwm} KiB after a 1 GiB positions.json"
    );
    let kept = state.join("positions.json.corrupt");
    assert_eq!(
        std::fs::metadata(&kept).map(|m| m.len()).ok(),
        Some(1 << 30)
    );
    assert!(agent.log().contains("more than the"), "{}", agent.log());
    assert!(s.wait_checkpointed(&s.log_path("own.log")).await, "rebuilt");
}

/// EACCES for real: the agent runs as the unprivileged user, and the folder of a
/// file it follows is made unsearchable (root-owned, 0700) for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_agent_cannot_reach_for_a_while_is_not_taken_for_rotated() {
    let Some(who) = intruder() else { return };
    let loki = LokiReceiver::start().await;
    let s = setup(&loki, who, "");
    let state = s.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    rustix::fs::chown(
        &state,
        Some(rustix::process::Uid::from_raw(who.0)),
        Some(rustix::process::Gid::from_raw(who.1)),
    )
    .unwrap();
    let sub = s.dir.path().join("logs").join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = sub.join("a.log");
    append(&file, &lines("line", 3));
    assert_eq!(std::fs::metadata(&sub).unwrap().uid(), 0);
    let mut agent = Agent::start_as(&s.config, &s.stderr_path(), who.0, who.1);
    agent
        .assert_shipped_once(&loki, r#"{job="deep"}"#, &lines("line", 3), DEADLINE)
        .await;

    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
    let eacces = format!("cannot check {}: Permission denied", file.display());
    assert!(
        wait_until(DEADLINE, || agent.log().contains(&eacces)).await,
        "the error is logged with the path:\n{}",
        agent.log()
    );
    // Still followed through its descriptor meanwhile.
    append(&file, &["line 3".to_string()]);
    agent
        .assert_shipped_once(&loki, r#"{job="deep"}"#, &lines("line", 4), DEADLINE)
        .await;

    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    append(&file, &["line 4".to_string()]);
    agent
        .assert_shipped_once(&loki, r#"{job="deep"}"#, &lines("line", 5), DEADLINE)
        .await;
    assert!(
        s.wait_checkpointed(&file).await,
        "its checkpoint follows it"
    );
    let log = agent.log();
    assert_eq!(count(&log, &eacces), 1, "logged once: {log}");
    assert!(log.contains("EACCES"), "names the errno: {log}");
    assert!(!log.contains("rotated away"), "{log}");
    assert!(!log.contains("was deleted"), "{log}");
    assert_eq!(agent.terminate(), Some(0));
    // After a restart it resumes there: nothing twice.
    append(&file, &["line 5".to_string()]);
    let agent = Agent::start_as(&s.config, &s.stderr_path(), who.0, who.1);
    agent
        .assert_shipped_once(&loki, r#"{job="deep"}"#, &lines("line", 6), DEADLINE)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_link_to_a_file_the_folders_owner_may_not_read_is_not_shipped() {
    let Some(who) = intruder() else { return };
    let loki = LokiReceiver::start().await;
    let s = setup(&loki, who, "");
    let logs = s.dir.path().join("logs");
    let (_secret_dir, secret) = root_only_file();
    // Made by root (the kernel's protected_hardlinks keeps the user from it):
    // a second name for a root-only file, in the user's folder.
    std::fs::hard_link(&secret, logs.join("linked.log")).unwrap();
    // A root file the user may read is theirs to see, and shipped.
    let readable = logs.join("readable.log");
    std::fs::write(&readable, "readable 0\n").unwrap();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    as_intruder(who, &logs, "printf 'own 0\\n' > own.log");
    let agent = s.start();
    agent
        .assert_shipped_once(
            &loki,
            r#"{job="app"}"#,
            &["own 0".into(), "readable 0".into()],
            DEADLINE,
        )
        .await;
    let refusal = format!(
        "skipping {}: it belongs to uid 0 and lies in a folder of uid {}",
        logs.join("linked.log").display(),
        who.0
    );
    assert!(
        wait_until(DEADLINE, || agent.log().contains(&refusal)).await,
        "{}",
        agent.log()
    );
    assert!(
        !shipped_secret(&loki),
        "a root-only file reached Loki through a hard link"
    );
}
