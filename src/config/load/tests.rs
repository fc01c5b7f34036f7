//! Unit tests of loading a configuration file.

use super::*;
use crate::config::validate::is_writable_dir;
use crate::config::DEFAULT_STATE_DIR;
use std::collections::HashMap;
use std::time::Duration;

fn parse(text: &str) -> Result<Config, ConfigError> {
    let c = parse_toml(text, "test.toml")?;
    c.validate("test.toml", Some(text))?;
    Ok(c)
}

#[test]
fn an_empty_file_gives_the_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn the_spec_example_parses() {
    let text = include_str!("../../../packaging/examples/full.toml");
    let c = parse(text).unwrap();
    assert_eq!(c.files.len(), 1);
    assert_eq!(c.files[0].name, "refly-api");
    assert_eq!(c.loki.batch_max_bytes, super::super::Size::mib(1));
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let e = parse("[agent]\nstate_dir = \"/tmp/x\"\nbogus = 1\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("`agent.bogus`"), "{msg}");
    assert!(msg.contains("unknown key"), "{msg}");
}

#[test]
fn follow_symlinks_is_off_unless_set_and_must_be_a_boolean() {
    let base = "[[files]]\nname = \"a\"\npaths = [\"/x/*.log\"]\n";
    assert!(!parse(base).unwrap().files[0].follow_symlinks);
    let on = parse(&format!("{base}follow_symlinks = true\n")).unwrap();
    assert!(on.files[0].follow_symlinks);
    let e = parse(&format!("{base}follow_symlinks = \"yes\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 4"), "{e}");
    assert!(e.contains("`files[0].follow_symlinks`"), "{e}");
}

#[test]
fn a_bad_duration_names_the_key_and_what_was_expected() {
    let e = parse("[[files]]\nname = \"a\"\npaths = [\"/x\"]\npoll_interval = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 4"), "{e}");
    assert!(e.contains("`files[0].poll_interval`"), "{e}");
    assert!(e.contains("expected a duration"), "{e}");
}

#[test]
fn a_host_metrics_interval_below_100ms_is_refused() {
    let c = parse("[host_metrics]\ninterval = \"200ms\"\n").unwrap();
    assert_eq!(c.host_metrics.interval.get(), Duration::from_millis(200));
    let e = parse("[host_metrics]\nenabled = true\ninterval = \"0s\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`host_metrics.interval`") && e.contains("line 3"),
        "{e}"
    );
    assert!(e.contains("100ms"), "{e}");
    // The agent's own metrics use it too, with the host's off.
    let e = parse("[host_metrics]\nenabled = false\ninterval = \"0s\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`host_metrics.interval`"), "{e}");
    // Both off, the interval is not used.
    assert!(
        parse("[host_metrics]\nenabled = false\nagent_metrics = false\ninterval = \"0s\"\n")
            .is_ok()
    );
}

#[test]
fn a_file_entry_without_a_name_is_rejected() {
    let e = parse("[[files]]\npaths = [\"/x\"]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("files[0].name"), "{e}");
}

#[test]
fn an_otlp_endpoint_that_is_the_own_receiver_is_a_loop() {
    let e = parse("[otlp]\nendpoint = \"http://127.0.0.1:4317\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("otlp.endpoint") && e.contains("loop"), "{e}");
    assert!(e.contains("line 2"), "{e}");
    // With the receiver moved elsewhere, the same endpoint is fine.
    parse("[otlp]\nendpoint = \"http://127.0.0.1:4317\"\n[receiver]\ngrpc = \"127.0.0.1:14317\"\n")
        .unwrap();
}

#[test]
fn bad_enum_values_say_what_is_allowed() {
    let e = parse("[loki]\nencoding = \"xml\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("loki.encoding") && e.contains("protobuf"), "{e}");
    let e = parse("[loki]\nrefused_entries = \"keep\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("loki.refused_entries") && e.contains("rewrite") && e.contains("drop"),
        "{e}"
    );
    let c = parse("[loki]\nrefused_entries = \"drop\"\n").unwrap();
    assert_eq!(c.loki.refused_entries, super::super::RefusedEntries::Drop);
}

#[test]
fn multiline_accepts_words_and_a_start_pattern() {
    let c = parse("[[files]]\nname=\"a\"\npaths=[\"/x\"]\nmultiline = { start = '^\\d{4}-' }\n")
        .unwrap();
    assert!(matches!(
        c.files[0].multiline,
        super::super::Multiline::Start(_)
    ));
    let e = parse("[[files]]\nname=\"a\"\npaths=[\"/x\"]\nmultiline = { start = '(' }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("files[0].multiline"), "{e}");
}

#[test]
fn state_dir_falls_back_to_xdg_when_default_is_not_writable() {
    if is_writable_dir(Path::new(DEFAULT_STATE_DIR)) {
        // Running as root: the default is writable and is used as it is.
        let (d, note) = Config::default().resolve_state_dir(&HashMap::new());
        assert_eq!(d, Path::new(DEFAULT_STATE_DIR));
        assert!(note.is_none());
        return;
    }
    let env: HashMap<String, String> =
        [("XDG_STATE_HOME".to_string(), "/tmp/xdg".to_string())].into();
    let (d, note) = Config::default().resolve_state_dir(&env);
    assert_eq!(d, Path::new("/tmp/xdg/wisp-agent"));
    assert!(note.unwrap().contains("not writable"));
}

#[test]
fn an_explicit_state_dir_is_kept() {
    let mut c = Config::default();
    c.agent.state_dir = PathBuf::from("/some/where");
    assert_eq!(
        c.resolve_state_dir(&HashMap::new()).0,
        Path::new("/some/where")
    );
}
