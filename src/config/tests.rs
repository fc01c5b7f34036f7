//! Unit tests of the configuration types and their defaults.

use super::*;

#[test]
fn every_url_in_a_text_loses_its_password() {
    assert_eq!(
        redact_text("cannot reach http://u:pw@h:1/x (and https://a:b@c), ok"),
        "cannot reach http://u:<redacted>@h:1/x (and https://a:<redacted>@c), ok"
    );
    assert_eq!(redact_text("no url here"), "no url here");
    assert_eq!(
        redact_text("\"http://tok@h:2?q=1\""),
        "\"http://<redacted>@h:2?q=1\""
    );
    assert_eq!(redact_url("http://u:pw@h?x=@"), "http://u:<redacted>@h?x=@");
}

#[test]
fn the_exec_socket_falls_back_to_the_runtime_dir_only_from_the_default() {
    let env: std::collections::HashMap<String, String> =
        [("XDG_RUNTIME_DIR".to_string(), "/run/user/1000".to_string())].into();
    let default = ExecConfig::default();
    assert_eq!(
        default.socket_candidates(&env),
        vec![
            PathBuf::from(DEFAULT_EXEC_SOCKET),
            PathBuf::from("/run/user/1000/wisp-agent/exec.sock")
        ]
    );
    let chosen = ExecConfig {
        socket: PathBuf::from("/tmp/x.sock"),
        ..ExecConfig::default()
    };
    assert_eq!(
        chosen.socket_candidates(&env),
        vec![PathBuf::from("/tmp/x.sock")]
    );
    assert_eq!(chosen.daemon_socket(&env), PathBuf::from("/tmp/x.sock"));
}

#[test]
fn label_names_follow_loki_rules() {
    assert!(is_valid_label_name("env"));
    assert!(is_valid_label_name("_x9"));
    assert!(!is_valid_label_name("9x"));
    assert!(!is_valid_label_name("a-b"));
    assert!(!is_valid_label_name(""));
}

#[test]
fn host_placeholder_is_filled() {
    assert_eq!(
        fill_host("http://{host}:3100/x", "10.0.0.5"),
        "http://10.0.0.5:3100/x"
    );
    assert_eq!(
        fill_host("http://{host}:4317", "fd00::1"),
        "http://[fd00::1]:4317"
    );
}

#[test]
fn url_passwords_are_redacted() {
    assert_eq!(
        redact_url("http://u:secret@h:3100/loki"),
        "http://u:<redacted>@h:3100/loki"
    );
    assert_eq!(redact_url("http://h:3100/loki"), "http://h:3100/loki");
    assert_eq!(redact_url("https://tok3n@h/x"), "https://<redacted>@h/x");
}

#[test]
fn lines_are_cut_by_default_at_lokis_own_default_line_limit() {
    // Loki's `max_line_size` defaults to 256KB, which it counts as 262144
    // bytes ("Max entry size '262144' bytes exceeded"): a line the tailer
    // ships whole is never too long for a Loki left at its defaults.
    assert_eq!(FileConfig::default().max_line_bytes.as_usize(), 262_144);
    assert_eq!(
        LokiConfig::default().refused_entries,
        RefusedEntries::Rewrite
    );
}
