//! Unit tests of the command's OpenTelemetry environment.

use std::collections::HashMap;

use super::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn config(grpc: &str, http: &str) -> Config {
    let mut c = Config::default();
    c.receiver.grpc = grpc.into();
    c.receiver.http = http.into();
    c
}

fn of(config: Option<&Config>, vars: &[(&str, &str)]) -> HashMap<&'static str, String> {
    let labels = vec![("iter".to_string(), "3".to_string())];
    let run = Run {
        trace_id: TRACE,
        job: "ralph",
        labels: &labels,
    };
    command_env(config, &env(vars), &run).into_iter().collect()
}

#[test]
fn the_http_receiver_is_preferred_with_its_protocol() {
    let c = config("127.0.0.1:4317", "127.0.0.1:4318");
    let e = of(Some(&c), &[]);
    assert_eq!(e[ENDPOINT], "http://127.0.0.1:4318");
    assert_eq!(e[PROTOCOL], "http/protobuf");
    // A user's protocol is kept, and picks the receiver.
    let e = of(Some(&c), &[(PROTOCOL, "grpc")]);
    assert_eq!(e[ENDPOINT], "http://127.0.0.1:4317");
    assert!(!e.contains_key(PROTOCOL));
    let e = of(Some(&c), &[(PROTOCOL, "http/json")]);
    assert_eq!(e[ENDPOINT], "http://127.0.0.1:4318");
    assert!(!e.contains_key(PROTOCOL));
}

#[test]
fn without_the_http_receiver_the_grpc_one_is_used() {
    let e = of(Some(&config("0.0.0.0:4317", "")), &[]);
    assert_eq!(e[ENDPOINT], "http://127.0.0.1:4317");
    assert_eq!(e[PROTOCOL], "grpc");
    let e = of(Some(&config("", "[::]:4318")), &[]);
    assert_eq!(e[ENDPOINT], "http://[::1]:4318");
    // The protocol asked for has no receiver: nothing.
    let e = of(
        Some(&config("127.0.0.1:4317", "")),
        &[(PROTOCOL, "http/protobuf")],
    );
    assert!(!e.contains_key(ENDPOINT));
}

#[test]
fn nothing_is_set_when_there_is_no_receiver_to_reach() {
    let mut off = config("127.0.0.1:4317", "127.0.0.1:4318");
    off.otlp.enabled = false;
    for c in [
        Some(&off),
        Some(&config("", "")),
        Some(&config("127.0.0.1:0", "127.0.0.1:0")),
        None,
    ] {
        let e = of(c, &[]);
        assert!(
            !e.contains_key(ENDPOINT) && !e.contains_key(PROTOCOL),
            "{e:?}"
        );
        assert!(
            e.contains_key(RESOURCE_ATTRIBUTES),
            "always linked to the run"
        );
    }
}

#[test]
fn a_users_endpoint_and_protocol_are_left_alone() {
    let c = config("127.0.0.1:4317", "127.0.0.1:4318");
    let e = of(Some(&c), &[(ENDPOINT, "http://collector:4317")]);
    assert!(!e.contains_key(ENDPOINT) && !e.contains_key(PROTOCOL));
    // Empty is unset.
    let e = of(Some(&c), &[(ENDPOINT, " ")]);
    assert_eq!(e[ENDPOINT], "http://127.0.0.1:4318");
}

#[test]
fn resource_attributes_keep_the_users_and_the_runs_keys_win() {
    let e = of(
        None,
        &[(
            RESOURCE_ATTRIBUTES,
            "deployment.environment=dev, wisp.run.id=forged,iter=9,broken,=x,team=a%2Cb",
        )],
    );
    assert_eq!(
        e[RESOURCE_ATTRIBUTES],
        format!(
            "deployment.environment=dev,team=a%2Cb,wisp.run.id={TRACE},wisp.run.name=ralph,wisp.run.labels=iter,iter=3"
        )
    );
}

#[test]
fn values_are_percent_encoded_so_the_agents_own_parser_reads_them_back() {
    let labels = vec![("note".to_string(), "a b,c;d\"e\\f%g=h/ü".to_string())];
    let run = Run {
        trace_id: TRACE,
        job: "my job",
        labels: &labels,
    };
    let set: HashMap<_, _> = command_env(None, &env(&[]), &run).into_iter().collect();
    let value = &set[RESOURCE_ATTRIBUTES];
    assert!(
        value.ends_with(
            "wisp.run.name=my%20job,wisp.run.labels=note,note=a%20b%2Cc%3Bd%22e%5Cf%25g=h/%C3%BC"
        ),
        "{value}"
    );
    let mut config = Config::default();
    crate::config::apply_env(&mut config, &env(&[(RESOURCE_ATTRIBUTES, value)])).unwrap();
    let attrs = &config.otlp.resource_attributes;
    assert_eq!(attrs["wisp.run.name"], "my job");
    assert_eq!(attrs["note"], "a b,c;d\"e\\f%g=h/ü");
    assert_eq!(attrs["wisp.run.id"], TRACE);
    assert_eq!(attrs["wisp.run.labels"], "note");
}
