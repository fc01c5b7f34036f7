//! Issue 22, point 1: on a VM other users log into, what a user puts in a
//! tailed tree (a coding agent's `node_modules`, or worse on purpose) cannot
//! blind, starve or stop the root agent. The agent tails
//! `shared/tree/**/*.log` (a 1777 folder) and `home/*/logs/*.log`; a second
//! user (`wisp-test-intruder`, through `setpriv`) builds what the report
//! built, and another user's lines must still arrive within 2 s while the
//! agent's memory, inotify watches and CPU stay bounded. The figures are
//! printed (`--nocapture` shows them). Skipped, with a message, when the tests
//! do not run as root.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::agent::{Agent, Setup};
use support::loki::LokiReceiver;
use support::proc::{cpu_time, inotify_watches, peak_rss, rss};
use support::users::{as_intruder, give, intruder, INTRUDER};
use support::{append, wait_until, DEADLINE};

/// How long another user's lines may take.
const ARRIVE: Duration = Duration::from_secs(2);
const MAX_RSS: u64 = 48 << 20;
/// The agent's watch budget (`WATCH_BUDGET`).
const WATCH_BUDGET: usize = 1024;

/// The shared VM: `shared/tree` (1777) and `home/`, with the victim's and the
/// intruder's folders in each.
struct Vm {
    setup: Setup,
    victim_tree: PathBuf,
    victim_logs: PathBuf,
    intruder_tree: PathBuf,
    intruder_home: PathBuf,
    tree: PathBuf,
}

impl Vm {
    fn new(loki: &LokiReceiver, who: (u32, u32), follow_symlinks: bool) -> Vm {
        let extra = format!(
            "\n[[files]]\nname = \"tree\"\npaths = [\"BASE/shared/tree/**/*.log\"]\n\
             start_at = \"beginning\"\nmultiline = \"none\"\n\
             follow_symlinks = {follow_symlinks}\n\n\
             [[files]]\nname = \"homes\"\npaths = [\"BASE/home/*/logs/*.log\"]\n\
             start_at = \"beginning\"\nmultiline = \"none\"\n"
        );
        // Lines are records at once (no wait for a continuation line), so the
        // delays measured are the tailer's.
        let setup = Setup::new(loki, &extra);
        let base = setup.dir.path().to_path_buf();
        let text = std::fs::read_to_string(&setup.config).unwrap();
        std::fs::write(
            &setup.config,
            text.replace("BASE", &base.display().to_string()),
        )
        .unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tree = base.join("shared/tree");
        let victim_tree = tree.join("victim");
        let victim_logs = base.join("home/victim/logs");
        let intruder_tree = tree.join(INTRUDER);
        let intruder_home = base.join("home").join(INTRUDER);
        for d in [&victim_tree, &victim_logs, &intruder_tree, &intruder_home] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o1777)).unwrap();
        give(who, &intruder_tree);
        give(who, &intruder_home);
        Vm {
            setup,
            victim_tree,
            victim_logs,
            intruder_tree,
            intruder_home,
            tree,
        }
    }
}

/// One of the victim's files, and the lines written to it so far.
struct Victim {
    path: PathBuf,
    selector: String,
    prefix: String,
    sent: Vec<String>,
}

impl Victim {
    fn new(job: &str, path: PathBuf) -> Victim {
        Victim {
            selector: format!("{{job=\"{job}\", filename=\"{}\"}}", path.display()),
            prefix: path.file_stem().unwrap().to_string_lossy().into_owned(),
            path,
            sent: Vec::new(),
        }
    }

    /// Writes `n` more lines and waits until Loki holds every line so far
    /// exactly once; returns how long the new ones took.
    async fn write(&mut self, agent: &Agent, loki: &LokiReceiver, n: usize) -> Duration {
        let from = self.sent.len();
        let lines: Vec<String> = (from..from + n)
            .map(|i| format!("{} line {i}", self.prefix))
            .collect();
        self.sent.extend(lines.iter().cloned());
        let start = Instant::now();
        append(&self.path, &lines);
        agent
            .assert_shipped_once(loki, &self.selector, &self.sent, DEADLINE)
            .await;
        start.elapsed()
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Waits until the agent's watches settle (no change for a second); returns
/// the count.
async fn settled_watches(pid: u32) -> usize {
    let mut last = (inotify_watches(pid), Instant::now());
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = inotify_watches(pid);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    last.0
}

/// Issue 22: "one user moving 110 folders holding `u -> /usr` into their home
/// drove the daemon to 266 MB RSS, 122 s CPU and 15,343 inotify watches".
/// Here into their home and into the shared tree, then removed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_folders_linking_to_usr_cost_neither_memory_nor_watches() {
    let Some(who) = intruder() else { return };
    let loki = LokiReceiver::start().await;
    let vm = Vm::new(&loki, who, false);
    let mut tree = Victim::new("tree", vm.victim_tree.join("app.log"));
    let mut home = Victim::new("homes", vm.victim_logs.join("api.log"));
    let mut agent = vm.setup.start();
    let pid = agent.pid().unwrap();
    tree.write(&agent, &loki, 3).await;
    home.write(&agent, &loki, 3).await;
    let before = settled_watches(pid).await;

    let stage = vm.setup.dir.path().join("stage");
    std::fs::create_dir(&stage).unwrap();
    give(who, &stage);
    as_intruder(
        who,
        &stage,
        &format!(
            "for i in $(seq 110); do mkdir -p h/f$i t/f$i && ln -s /usr h/f$i/u && \
             ln -s /usr t/f$i/u; done && mv h/* {home}/ && mv t/* {tree}/",
            home = vm.intruder_home.display(),
            tree = vm.intruder_tree.display()
        ),
    );
    let tree_delay = tree.write(&agent, &loki, 5).await;
    let home_delay = home.write(&agent, &loki, 5).await;
    let mut fresh = Victim::new("tree", vm.victim_tree.join("fresh.log"));
    let fresh_delay = fresh.write(&agent, &loki, 2).await;
    let during = settled_watches(pid).await;
    let (now, peak) = (rss(pid), peak_rss(pid));
    println!(
        "110 folders with u -> /usr: lines arrived in {tree_delay:?} (tree), {home_delay:?} \
         (home), a new file's in {fresh_delay:?}; watches {before} -> {during}; RSS {:.1} MiB \
         (peak {:.1} MiB)",
        mib(now),
        mib(peak)
    );
    for d in [tree_delay, home_delay, fresh_delay] {
        assert!(d <= ARRIVE, "{d:?}:\n{}", agent.log());
    }
    assert!(peak < MAX_RSS, "peak RSS {:.1} MiB", mib(peak));
    // The 110 folders of the tree (not those of the home: `home/*/logs`
    // never enters them), and nothing through `u`.
    assert!(during <= before + 110 + 1, "{before} -> {during} watches");
    assert!(during <= WATCH_BUDGET);

    // Removed: the watches go with them.
    as_intruder(who, &vm.intruder_tree, "rm -rf f*");
    as_intruder(who, &vm.intruder_home, "rm -rf f*");
    assert!(
        wait_until(DEADLINE, || inotify_watches(pid) <= before).await,
        "{} watches after the folders went, {before} before they came",
        inotify_watches(pid)
    );
    let after = inotify_watches(pid);
    println!(
        "after removing them: {after} watches, RSS {:.1} MiB",
        mib(rss(pid))
    );
    tree.write(&agent, &loki, 1).await;
    assert!(!agent.log().contains("was rotated"), "{}", agent.log());
    assert_eq!(agent.terminate(), Some(0));
}

/// Issue 22: "`ln -s . a; ln -s . b` under a `**` glob: no file of any user
/// shipped for as long as they existed … after SIGTERM it was still running
/// six minutes later"; "with only `a -> .` a file was seen as rotated to
/// tree/a/a/…(40)/x.log". With `follow_symlinks = true` for the tree, so the
/// links are followed and the loop must be caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_to_the_tree_itself_stop_neither_tailing_nor_shutdown() {
    let Some(who) = intruder() else { return };
    let loki = LokiReceiver::start().await;
    let vm = Vm::new(&loki, who, true);
    let mut tree = Victim::new("tree", vm.victim_tree.join("app.log"));
    let mut home = Victim::new("homes", vm.victim_logs.join("api.log"));
    let mut agent = vm.setup.start();
    let pid = agent.pid().unwrap();
    tree.write(&agent, &loki, 2).await;
    home.write(&agent, &loki, 2).await;

    as_intruder(who, &vm.tree, "ln -s . a && ln -s . b");
    as_intruder(
        who,
        &vm.intruder_tree,
        "ln -s . a && ln -s .. up && printf 'own 0\\n' > x.log",
    );
    let own = vec!["own 0".to_string()];
    let own_sel = format!(
        "{{job=\"tree\", filename=\"{}\"}}",
        vm.intruder_tree.join("x.log").display()
    );
    agent
        .assert_shipped_once(&loki, &own_sel, &own, DEADLINE)
        .await;
    let mut delays = Vec::new();
    for _ in 0..3 {
        delays.push(tree.write(&agent, &loki, 3).await);
        delays.push(home.write(&agent, &loki, 3).await);
    }
    let mut fresh = Victim::new("tree", vm.victim_tree.join("fresh.log"));
    delays.push(fresh.write(&agent, &loki, 2).await);
    let watches = inotify_watches(pid);
    println!(
        "links to the tree itself: lines arrived in {:?} at most; {watches} watches; RSS {:.1} MiB",
        delays.iter().max().unwrap(),
        mib(peak_rss(pid))
    );
    for d in &delays {
        assert!(*d <= ARRIVE, "{d:?}:\n{}", agent.log());
    }
    assert!(peak_rss(pid) < MAX_RSS);
    let log = agent.log();
    assert!(!log.contains("was rotated"), "{log}");
    assert!(!log.contains("/a/a/"), "{log}");
    let start = Instant::now();
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    let stop = start.elapsed();
    println!("SIGTERM to exit: {stop:?}");
    assert!(stop < Duration::from_secs(10), "{stop:?}");
}

/// Issue 22: "20,000 empty folders kept half a core busy".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_empty_folders_leave_the_agent_idle() {
    let Some(who) = intruder() else { return };
    let loki = LokiReceiver::start().await;
    let vm = Vm::new(&loki, who, false);
    let mut tree = Victim::new("tree", vm.victim_tree.join("app.log"));
    let mut home = Victim::new("homes", vm.victim_logs.join("api.log"));
    let mut agent = vm.setup.start();
    let pid = agent.pid().unwrap();
    tree.write(&agent, &loki, 2).await;
    home.write(&agent, &loki, 2).await;
    let before = settled_watches(pid).await;

    let made = Instant::now();
    as_intruder(who, &vm.intruder_tree, "seq -f d%g 20000 | xargs mkdir");
    println!("20000 folders made in {:?}", made.elapsed());
    let watches = settled_watches(pid).await;
    let delay = home
        .write(&agent, &loki, 2)
        .await
        .max(tree.write(&agent, &loki, 2).await);
    // Idle: nothing changes for 10 s but the victim's one line a second.
    let (cpu0, t0) = (cpu_time(pid), Instant::now());
    let mut idle_delays = Vec::new();
    while t0.elapsed() < Duration::from_secs(10) {
        let tick = Instant::now();
        idle_delays.push(tree.write(&agent, &loki, 1).await);
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
    }
    let (cpu, wall) = (cpu_time(pid) - cpu0, t0.elapsed());
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    let worst = idle_delays.iter().max().copied().unwrap_or_default();
    let mut fresh = Victim::new("tree", vm.victim_tree.join("fresh.log"));
    let fresh_delay = fresh.write(&agent, &loki, 2).await;
    println!(
        "20000 empty folders: {:.1}% of a core over {wall:?} ({cpu:?} CPU); lines arrived in \
         {delay:?}, then {worst:?} at most, a new file's in {fresh_delay:?}; watches {before} -> \
         {watches}; RSS {:.1} MiB (peak {:.1} MiB)",
        share * 100.0,
        mib(rss(pid)),
        mib(peak_rss(pid))
    );
    assert!(share < 0.10, "{:.1}% of a core", share * 100.0);
    for d in [delay, worst, fresh_delay] {
        assert!(d <= ARRIVE, "{d:?}:\n{}", agent.log());
    }
    assert!(watches <= WATCH_BUDGET, "{watches} watches");
    assert!(
        peak_rss(pid) < MAX_RSS,
        "peak RSS {:.1} MiB",
        mib(peak_rss(pid))
    );
    assert!(
        agent.log().contains("file watches the agent allows itself"),
        "the budget is logged:\n{}",
        agent.log()
    );

    // Removed: the watches go with them.
    as_intruder(
        who,
        &vm.intruder_tree,
        "find . -mindepth 1 -maxdepth 1 -name 'd*' -print0 | xargs -0 rmdir",
    );
    assert!(
        wait_until(DEADLINE, || inotify_watches(pid) <= before).await,
        "{} watches after the folders went, {before} before they came",
        inotify_watches(pid)
    );
    println!("after removing them: {} watches", inotify_watches(pid));
    assert_eq!(agent.terminate(), Some(0));
}
