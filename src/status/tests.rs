//! The status's unit tests: a status says what a reading says, the summary
//! and the line carry its figures, the JSON reads back.

use std::time::{Duration, SystemTime};

use super::render::{ago, bytes, line, summary};
use super::*;
use crate::metric::{Kind, Value};

/// One reading of one sample (the kind and help do not matter to a status).
fn r(name: &'static str, labels: &[(&'static str, &'static str)], value: f64) -> Reading {
    Reading {
        name,
        kind: Kind::Gauge,
        help: "",
        samples: vec![Sample {
            labels: labels.iter().map(|(k, v)| (*k, (*v).into())).collect(),
            value: Value::Float(value),
        }],
    }
}

/// A reading of a daemon with both pipelines, a host and exec runs.
fn page() -> Vec<Reading> {
    vec![
        r(
            "wisp_host_info",
            &[("candidate", "host.lima.internal"), ("host", "192.168.5.2")],
            1.0,
        ),
        r(
            "wisp_config_hash",
            &[("sha256", "0123456789abcdef0123")],
            1.0,
        ),
        r(
            "wisp_config_last_reload_success_timestamp_seconds",
            &[],
            712.0,
        ),
        r("wisp_config_last_reload_successful", &[], 0.0),
        r("wisp_config_reloads_total", &[("result", "ok")], 2.0),
        r("wisp_config_reloads_total", &[("result", "failed")], 1.0),
        r("wisp_config_reloads_total", &[("result", "unchanged")], 0.0),
        r("wisp_file_files_open", &[], 3.0),
        r("wisp_file_lines_read_total", &[], 12034.0),
        r("wisp_file_bytes_read_total", &[], 99999.0),
        r("wisp_spool_bytes_buffered", &[("spool", "loki")], 2048.0),
        r("wisp_spool_bytes_buffered", &[("spool", "otlp")], 0.0),
        r("wisp_spool_max_bytes", &[("spool", "loki")], 268435456.0),
        r("wisp_spool_max_bytes", &[("spool", "otlp")], 268435456.0),
        r(
            "wisp_spool_records_dropped_total",
            &[("spool", "loki")],
            4.0,
        ),
        r("wisp_loki_records_shipped_total", &[], 12030.0),
        r("wisp_loki_retries_total", &[], 2.0),
        r("wisp_loki_last_push_timestamp_seconds", &[], 1000.5),
        r("wisp_loki_records_dropped_total", &[("reason", "400")], 5.0),
        r("wisp_loki_records_dropped_total", &[("reason", "413")], 1.0),
        r(
            "wisp_loki_records_refused_total",
            &[("reason", "too_old")],
            7.0,
        ),
        r(
            "wisp_loki_records_refused_total",
            &[("reason", "too_long")],
            2.0,
        ),
        r(
            "wisp_loki_records_rewritten_total",
            &[("reason", "too_old")],
            7.0,
        ),
        r(
            "wisp_otlp_receiver_requests_total",
            &[("signal", "traces")],
            50.0,
        ),
        r(
            "wisp_otlp_receiver_requests_total",
            &[("signal", "logs")],
            5.0,
        ),
        r("wisp_otlp_requests_shipped_total", &[], 55.0),
        r("wisp_otlp_last_export_timestamp_seconds", &[], 0.0),
        r(
            "wisp_exec_runs_total",
            &[("job", "ralph"), ("exit_code", "0")],
            3.0,
        ),
        r(
            "wisp_exec_runs_total",
            &[("job", "ralph"), ("exit_code", "1")],
            1.0,
        ),
        r(
            "wisp_exec_runs_total",
            &[("job", "exec"), ("exit_code", "unknown")],
            1.0,
        ),
        r("wisp_exec_run_seconds_total", &[("job", "ralph")], 720.5),
        r("wisp_exec_cost_usd_total", &[("job", "ralph")], 0.42),
        r("process_start_time_seconds", &[], 900.0),
    ]
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn both() -> Extras {
    Extras {
        logs: true,
        relay: true,
        ..Extras::default()
    }
}

#[test]
fn the_status_says_what_the_page_says() {
    let s = build(&page(), &both(), at(1012));
    assert_eq!(s.version, 1);
    assert_eq!(s.agent.uptime_seconds, Some(112.0));
    let config = s.config.as_ref().unwrap();
    assert_eq!(config.sha256, "0123456789abcdef0123");
    assert_eq!(
        (config.loaded_at, config.loaded_seconds_ago),
        (712.0, 300.0)
    );
    assert!(!config.last_reload_ok);
    assert_eq!(config.reloads.get("ok"), Some(&2));
    assert!(s.health.ok);
    assert_eq!(s.host.candidate.as_deref(), Some("host.lima.internal"));
    assert_eq!(s.host.address.as_deref(), Some("192.168.5.2"));
    let files = s.files.unwrap();
    assert_eq!((files.open, files.lines_read), (3, 12034));
    let loki = s.loki.unwrap();
    assert_eq!(loki.records_shipped, 12030);
    assert_eq!(loki.buffer.bytes, 2048);
    assert_eq!(loki.buffer.max_bytes, 268435456);
    assert_eq!(loki.buffer.records_dropped, 4);
    assert_eq!(loki.records_rejected, 6);
    assert_eq!((loki.records_refused, loki.records_rewritten), (9, 7));
    assert_eq!(loki.last_push_seconds_ago, Some(11.5));
    let otlp = s.otlp.unwrap();
    assert_eq!(otlp.requests_received, 55);
    assert_eq!(otlp.requests_shipped, 55);
    // 0: never exported.
    assert_eq!(otlp.last_export_seconds_ago, None);
    assert_eq!(s.exec.runs, 5);
    let ralph = &s.exec.jobs[1];
    assert_eq!((ralph.job.as_str(), ralph.runs), ("ralph", 4));
    assert_eq!(ralph.exit_codes.get("1"), Some(&1));
    assert_eq!(ralph.cost_usd, 0.42);
    assert_eq!(s.exec.jobs[0].exit_codes.get("unknown"), Some(&1));
}

#[test]
fn a_pipeline_that_is_off_is_null_and_no_host_is_none() {
    let s = build(
        &[r("wisp_host_chosen", &[], 0.0)],
        &Extras::default(),
        at(5),
    );
    assert!(s.files.is_none() && s.loki.is_none() && s.otlp.is_none());
    assert_eq!(s.host, HostStatus::default());
    assert!(summary(&s).contains("none answers; run `wisp-agent probe`"));
    assert!(line(&s).contains("no host answers"));
}

#[test]
fn last_errors_are_redacted_and_health_is_the_healthz_verdict() {
    let extras = Extras {
        problem: Some("the log buffer (spool/loki) cannot append: disk full".into()),
        loki_last_error: Some("cannot connect to http://user:hunter2@10.0.0.5:3100/loki".into()),
        loki_last_error_at: Some(1000.0),
        ..both()
    };
    let s = build(&page(), &extras, at(1012));
    assert!(!s.health.ok);
    assert_eq!(s.loki.as_ref().unwrap().last_error_seconds_ago, Some(12.0));
    let shown = summary(&s);
    assert!(
        shown.contains("last error 12 s ago: cannot connect"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("user:<redacted>@10.0.0.5"), "{shown}");
    assert!(shown.contains("unhealthy: the log buffer"), "{shown}");
    assert!(line(&s).contains("unhealthy: the log buffer"));
}

#[test]
fn what_the_daemon_reports_is_printed_without_a_raw_control_character() {
    let extras = Extras {
        problem: Some("disk \u{1b}[2Jfull\r".into()),
        loki_last_error: Some(
            "400: entry too old\nuser 'fake', total ignored: 1 \u{1b}]0;T\u{7}".into(),
        ),
        ..both()
    };
    let s = build(&page(), &extras, at(1012));
    let shown = summary(&s);
    assert!(
        !shown.chars().any(|c| c.is_control() && c != '\n'),
        "{shown:?}"
    );
    assert!(shown.contains("\\u{1b}[2Jfull\\r"), "{shown}");
    let one = line(&s);
    assert!(!one.chars().any(char::is_control), "{one:?}");
}

#[test]
fn the_summary_and_the_line_carry_the_figures() {
    let s = build(&page(), &both(), at(1012));
    let shown = summary(&s);
    for want in [
        "192.168.5.2 (host.lima.internal)",
        "3 tailed now, 12034 lines read",
        "12030 lines shipped",
        "2.0 KiB of 256.0 MiB buffered",
        "last push 12 s ago",
        "2 retries, 10 dropped (6 rejected by loki, 4 for want of buffer room), \
         9 refused by loki one by one (7 sent again changed)",
        "last export never",
        "config:  sha256 0123456789ab, loaded 5 min ago; reloads: 2 applied, 0 unchanged, 1 refused; \
         the last reload was refused",
        "5 runs: exec 1 (exit unknown: 1; 0 s), ralph 4 (exit 0: 3, exit 1: 1; 12 min, $0.42)",
    ] {
        assert!(shown.contains(want), "{want:?} not in\n{shown}");
    }
    assert!(shown.lines().count() <= 24, "{shown}");
    assert_eq!(
        line(&s),
        "status: host 192.168.5.2 (host.lima.internal), 3 files, 12034 lines read, \
         loki 12030 shipped 2.0 KiB buffered, last push 12 s ago, \
         otlp 55 shipped 0 B buffered, last export never, 5 exec runs, 2 retries, 10 dropped"
    );
}

#[test]
fn the_json_round_trips_and_reads_with_missing_fields() {
    let s = build(&page(), &both(), at(1012));
    let text = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), s);
    let old: Status = serde_json::from_str(r#"{"version":1,"health":{"ok":true}}"#).unwrap();
    assert!(old.health.ok && old.loki.is_none());
}

#[test]
fn units_read_as_people_say_them() {
    assert_eq!(bytes(0), "0 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(5 << 30), "5.0 GiB");
    assert_eq!(ago(Some(2.4)), "2 s ago");
    assert_eq!(ago(Some(600.0)), "10 min ago");
    assert_eq!(ago(Some(3.0 * 86400.0)), "3 d ago");
    assert_eq!(ago(None), "never");
}
