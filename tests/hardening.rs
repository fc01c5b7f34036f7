//! The hardened systemd unit still lets the agent do its job: the settings that
//! tailing needs are in `systemd/wisp-agent.service`, and the agent running as an
//! unprivileged user holding only CAP_DAC_READ_SEARCH (what the unit grants)
//! tails a root-owned file in a root-only directory and ships it. The unit's
//! exposure and `systemd-analyze verify` are checked by `.ci/check-unit.sh`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use support::agent::Setup;
use support::loki::LokiReceiver;
use support::DEADLINE;

fn unit() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/wisp-agent.service"
    ))
    .unwrap()
}

/// The value of `key=` in the unit (the last one wins, as in systemd).
fn setting(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
}

#[test]
fn the_unit_keeps_what_tailing_and_readiness_need() {
    let u = unit();
    for (key, want) in [
        // Reads log files of every user; writes nothing else.
        ("User", "wisp-agent"),
        ("AmbientCapabilities", "CAP_DAC_READ_SEARCH"),
        ("CapabilityBoundingSet", "CAP_DAC_READ_SEARCH"),
        ("NoNewPrivileges", "yes"),
        // The real /tmp, the homes readable.
        ("PrivateTmp", "no"),
        ("ProtectHome", "read-only"),
        ("ProtectSystem", "strict"),
        // Positions and the buffer; the exec socket reachable by local users.
        ("StateDirectory", "wisp-agent"),
        ("ReadWritePaths", "/var/lib/wisp-agent"),
        ("RuntimeDirectory", "wisp-agent"),
        ("RuntimeDirectoryMode", "0755"),
        // Readiness from the agent itself.
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        ),
        ("RestartPreventExitStatus", "2"),
    ] {
        assert_eq!(
            setting(&u, key).as_deref(),
            Some(want),
            "{key}= in the unit"
        );
    }
    // The host may be anywhere discovery finds it.
    assert_eq!(setting(&u, "IPAddressDeny"), None);
    assert_eq!(setting(&u, "PrivateNetwork"), None);
}

/// The unprivileged test user's uid and gid, created if missing (idempotent,
/// tolerant of a concurrent creation by another test).
fn test_user() -> (u32, u32) {
    const NAME: &str = "wisp-test-intruder";
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, NAME]).output().ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let _ = Command::new("useradd")
            .args(["--system", "--no-create-home", NAME])
            .stderr(Stdio::null())
            .status();
    }
    (
        id("-u").expect("cannot create the test user"),
        id("-g").expect("the test user has no group"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_cap_dac_read_search_an_unprivileged_agent_tails_root_only_files() {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: needs root");
        return;
    }
    let (uid, gid) = test_user();
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let root = setup.dir.path();
    // The agent's own places: its config readable, its state dir its own.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&setup.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let state = root.join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(uid), Some(gid)).unwrap();
    // The log: root's, in a directory only root may enter.
    let logs = root.join("logs");
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o700)).unwrap();
    let lines: Vec<String> = (0..3).map(|i| format!("root-only line {i}")).collect();
    support::append(&setup.log_path("app.log"), &lines);
    std::fs::set_permissions(
        setup.log_path("app.log"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let stderr = setup.stderr_path();
    let child = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .args([
            "--clear-groups",
            "--inh-caps=-all,+dac_read_search",
            "--ambient-caps=-all,+dac_read_search",
            "--bounding-set=-all,+dac_read_search",
            "--no-new-privs",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_wisp-agent"))
        .args(["run", "--log-level", "debug", "--config"])
        .arg(&setup.config)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    if let Err(e) = loki
        .wait_for_exactly_once("{job=\"app\"}", &lines, DEADLINE)
        .await
    {
        panic!(
            "{e}\nagent log:\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
    }
}
