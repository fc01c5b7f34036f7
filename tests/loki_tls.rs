//! A Loki over https with a private CA: discovery checks it with `[loki]`'s TLS
//! settings (`ca_file`, `insecure_skip_verify`), as the sink pushes to it, so
//! `probe` reports it reachable and `run` chooses it and ships to it. Without
//! them the probe names the certificate as what is wrong.
//!
//! The certificate is self-signed for `127.0.0.1`, made by the `openssl`
//! command; each test prints "skipped: needs openssl" and passes without it.

mod support;

use std::process::Output;

use support::agent::Setup;
use support::loki::LokiReceiver;
use support::tls::SelfSigned;

/// `probe --json [--push]` on the setup's configuration: the exit status and
/// the report.
fn probe(setup: &Setup, push: bool) -> (Option<i32>, serde_json::Value) {
    let mut cmd = support::agent_command();
    cmd.args(["probe", "--json"]);
    if push {
        cmd.arg("--push");
    }
    let o: Output = cmd.arg("--config").arg(&setup.config).output().unwrap();
    let report = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), report)
}

/// The fake Loki over https and an agent configuration pointing at it with
/// `loki_keys` in `[loki]`.
async fn https_loki(cert: &SelfSigned, loki_keys: &str) -> (LokiReceiver, Setup) {
    let loki = LokiReceiver::start_tls(cert).await;
    let setup = Setup::new(&loki, "");
    setup.add_loki_keys(loki_keys);
    (loki, setup)
}

fn ca_file(cert: &SelfSigned) -> String {
    format!("ca_file = {:?}", cert.cert.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_an_https_loki_reachable_when_ca_file_trusts_its_certificate() {
    let Some(cert) = SelfSigned::generate() else {
        return;
    };
    let (loki, setup) = https_loki(&cert, &ca_file(&cert)).await;

    let (code, r) = probe(&setup, false);

    let checked = &r["candidates"][0]["services"]["loki"];
    assert_eq!(checked["status"], "ok", "{r:#}");
    assert_eq!(
        checked["target"],
        format!("https://127.0.0.1:{}/ready", loki.addr().port())
    );
    assert_eq!(r["chosen"]["address"], "127.0.0.1", "{r:#}");
    assert_eq!(r["verdict"]["ok"], true, "{r:#}");
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_names_an_untrusted_certificate_and_exits_1_without_ca_file() {
    let Some(cert) = SelfSigned::generate() else {
        return;
    };
    let (_loki, setup) = https_loki(&cert, "").await;

    let (code, r) = probe(&setup, false);

    let checked = &r["candidates"][0]["services"]["loki"];
    assert_eq!(checked["status"], "error", "{r:#}");
    let reason = checked["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("certificate"), "{reason}");
    assert_eq!(r["chosen"], serde_json::Value::Null, "{r:#}");
    assert_eq!(r["verdict"]["ok"], false, "{r:#}");
    let diagnosis = &r["diagnoses"][0];
    assert_eq!(diagnosis["kind"], "certificate", "{r:#}");
    let message = diagnosis["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("loki.ca_file") && message.contains("UnknownIssuer"),
        "{message}"
    );
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_an_https_loki_reachable_with_insecure_skip_verify() {
    let Some(cert) = SelfSigned::generate() else {
        return;
    };
    let (_loki, setup) = https_loki(&cert, "insecure_skip_verify = true").await;

    let (code, r) = probe(&setup, false);

    assert_eq!(
        r["candidates"][0]["services"]["loki"]["status"], "ok",
        "{r:#}"
    );
    assert_eq!(r["verdict"]["ok"], true, "{r:#}");
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_push_reaches_an_https_loki_with_ca_file() {
    let Some(cert) = SelfSigned::generate() else {
        return;
    };
    let (loki, setup) = https_loki(&cert, &ca_file(&cert)).await;

    let (code, r) = probe(&setup, true);

    assert_eq!(r["push"]["loki"]["status"], "ok", "{r:#}");
    assert_eq!(r["verdict"]["ok"], true, "{r:#}");
    assert_eq!(code, Some(0));
    let token = r["push"]["token"].as_str().unwrap();
    assert_eq!(
        loki.exactly_once(
            "{job=\"wisp-agent-probe\"}",
            &[format!("wisp-agent probe test line {token}")]
        ),
        Ok(())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_chooses_an_https_loki_with_ca_file_and_ships_a_line_once() {
    let Some(cert) = SelfSigned::generate() else {
        return;
    };
    let (loki, setup) = https_loki(&cert, &ca_file(&cert)).await;
    // Discovery chooses (an explicit host.address would be sent to unchecked):
    // 127.0.0.2 refuses, 127.0.0.1 serves the https Loki.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let pinned = "[host]\naddress = \"127.0.0.1\"\n";
    assert!(text.contains(pinned), "{text}");
    let text = text.replacen(
        pinned,
        "[host]\naddress = \"auto\"\ncandidates = [\"127.0.0.2\", \"127.0.0.1\"]\n",
        1,
    );
    std::fs::write(&setup.config, text).unwrap();
    let agent = setup.start();

    let line = "over tls".to_string();
    support::append(&setup.log_path("app.log"), std::slice::from_ref(&line));

    agent
        .assert_shipped_once(&loki, "{job=\"app\"}", &[line], support::DEADLINE)
        .await;
    let log = agent.log();
    assert!(log.contains("host: 127.0.0.1 (127.0.0.1) answers"), "{log}");
}
