//! `Type=notify` readiness: under systemd (`$NOTIFY_SOCKET` set) the agent sends
//! `READY=1` once its pipeline runs, `RELOADING=1` then `READY=1` around a
//! SIGHUP's reload, and `STOPPING=1` when SIGTERM starts the shutdown; the
//! socket may be a path or an abstract name (`@name`).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::agent::Setup;
use support::loki::LokiReceiver;
use support::DEADLINE;
use tokio::net::UnixDatagram;

/// A running agent, killed on drop so a failing test leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent's `run` with `NOTIFY_SOCKET` set to `socket`.
fn start(config: &std::path::Path, stderr: &std::path::Path, socket: &str) -> Running {
    let child = support::agent_command()
        .args(["run", "--log-level", "debug", "--config"])
        .arg(config)
        .env("NOTIFY_SOCKET", socket)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    Running(child)
}

/// The next datagram, within the deadline.
async fn next_message(sock: &UnixDatagram, log: &std::path::Path) -> String {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(DEADLINE, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        other => panic!(
            "no notification within {DEADLINE:?} ({other:?}); agent log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

fn sigterm(Running(child): &Running) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Waits (bounded) for the exit status.
async fn exit_code(Running(child): &mut Running) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s.code();
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not exit within 20s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn ready_once_the_pipeline_runs_and_stopping_on_sigterm() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let socket_path = setup.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    let stderr = setup.stderr_path();
    let mut child = start(&setup.config, &stderr, socket_path.to_str().unwrap());

    assert_eq!(next_message(&sock, &stderr).await, "READY=1");
    // Ready means running: the buffer is open by then.
    assert!(
        setup.dir.path().join("state/spool/loki").is_dir(),
        "READY=1 before the buffer was opened"
    );
    sigterm(&child);
    assert_eq!(next_message(&sock, &stderr).await, "STOPPING=1");
    assert_eq!(exit_code(&mut child).await, Some(0));
}

#[tokio::test]
async fn reloading_then_ready_around_a_reload_and_nothing_for_an_unchanged_file() {
    let loki = LokiReceiver::start().await;
    let setup = Setup::new(&loki, "");
    let socket_path = setup.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    let stderr = setup.stderr_path();
    let mut child = start(&setup.config, &stderr, socket_path.to_str().unwrap());
    assert_eq!(next_message(&sock, &stderr).await, "READY=1");

    let hup = |child: &Running| {
        let _ = Command::new("kill")
            .args(["-HUP", &child.0.id().to_string()])
            .status();
    };
    // Unchanged: nothing to say. The next message is the reload's.
    hup(&child);
    assert!(
        support::wait_until(DEADLINE, || std::fs::read_to_string(&stderr)
            .unwrap_or_default()
            .contains("is unchanged"))
        .await
    );
    setup.edit(|text| format!("{text}labels = {{ env = \"b\" }}\n"));
    hup(&child);
    assert_eq!(next_message(&sock, &stderr).await, "RELOADING=1");
    assert_eq!(next_message(&sock, &stderr).await, "READY=1");
    sigterm(&child);
    assert_eq!(next_message(&sock, &stderr).await, "STOPPING=1");
    assert_eq!(exit_code(&mut child).await, Some(0));
}

#[tokio::test]
async fn an_abstract_notify_socket_is_notified_too() {
    let loki = LokiReceiver::start().await;
    // OTLP relay only: the other way `run` starts.
    let setup = Setup::new(&loki, "");
    let text = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("[loki]\n", "[loki]\nenabled = false\n")
        .replace(
            "[otlp]\nenabled = false\n",
            "[otlp]\nendpoint = \"http://127.0.0.1:9\"\n",
        );
    std::fs::write(&setup.config, text).unwrap();
    let name = format!("wisp-agent-notify-test-{}", std::process::id());
    let addr = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
    };
    let std_sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    std_sock.set_nonblocking(true).unwrap();
    let sock = UnixDatagram::from_std(std_sock).unwrap();
    let stderr = setup.stderr_path();
    let mut child = start(&setup.config, &stderr, &format!("@{name}"));

    assert_eq!(next_message(&sock, &stderr).await, "READY=1");
    sigterm(&child);
    assert_eq!(next_message(&sock, &stderr).await, "STOPPING=1");
    assert_eq!(exit_code(&mut child).await, Some(0));
}
