//! Unit tests of the exec server: its checks of a hello, run keys, bounds.

use super::super::protocol::{Hello, VERSION};
use super::runs::{durable_runs, make_room, run_key, Progress};
use super::*;
use crate::parse::labels::AGENT_LABELS;

fn hello() -> Hello {
    Hello {
        version: VERSION,
        job: "ralph".into(),
        labels: [("iter".to_string(), "3".to_string())].into(),
        argv: vec!["true".into()],
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        span_id: "b7ad6b7169203331".into(),
        started_ms: 1,
        git_head: None,
    }
}

#[test]
fn a_client_cannot_set_the_agents_own_labels_or_bad_ids() {
    assert!(check_hello(&hello()).is_ok());
    let upper: Vec<String> = AGENT_LABELS.iter().map(|n| n.to_uppercase()).collect();
    let names = AGENT_LABELS
        .iter()
        .map(|n| n.to_string())
        .chain(upper)
        .chain(["User".into(), "__name__".into(), "__tenant_id__".into()]);
    for name in names {
        let mut h = hello();
        h.labels.insert(name.clone(), "forged".into());
        assert!(check_hello(&h).is_err(), "{name}");
    }
    let mut h = hello();
    h.trace_id = "0".repeat(32);
    assert!(check_hello(&h).is_err());
    let mut h = hello();
    h.version = 99;
    assert!(check_hello(&h).is_err());
    let mut h = hello();
    h.job = String::new();
    assert_eq!(check_hello(&h).unwrap().0, "exec");
}

#[test]
fn control_characters_in_a_hello_are_escaped_before_they_become_labels() {
    let mut h = hello();
    h.job = "x\u{1b}]0;T\u{7}\u{1b}[2J".into();
    h.labels.insert("note".into(), "a\nb".into());
    let (job, labels) = check_hello(&h).unwrap();
    assert_eq!(job, "x\\u{1b}]0;T\\u{7}\\u{1b}[2J");
    assert_eq!(labels["note"], "a\\nb");
    assert!(!job
        .chars()
        .chain(labels["note"].chars())
        .any(char::is_control));
}

#[test]
fn run_keys_differ_by_user_and_are_never_file_keys() {
    let a = run_key(0, &hello());
    let b = run_key(1000, &hello());
    assert_ne!(a, b);
    assert_ne!(a.len(), 16);
    let mut resume = ResumeState::new();
    resume.insert(a.clone(), 5u64.to_le_bytes().to_vec());
    resume.insert(vec![0; 16], vec![1; 30]);
    let runs = durable_runs(&resume);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs.get(&a).map(|p| p.seq), Some(5));
}

#[test]
fn a_user_with_too_many_unfinished_runs_loses_its_oldest_not_anothers() {
    let mut map = HashMap::new();
    let key = |uid: u32, n: usize| {
        let mut h = hello();
        h.span_id = format!("{:016x}", n + 1);
        run_key(uid, &h)
    };
    for n in 0..MAX_UNFINISHED_RUNS_PER_USER {
        let p = Progress {
            seq: 1,
            started_ms: 100 + n as u64,
            cost_usd: None,
        };
        map.insert(key(1000, n), p);
    }
    map.insert(
        key(2000, 0),
        Progress {
            seq: 1,
            started_ms: 1,
            cost_usd: None,
        },
    );
    assert_eq!(make_room(&mut map, &key(2000, 1)), None);
    let evicted = make_room(&mut map, &key(1000, 9999));
    assert_eq!(evicted, Some(key(1000, 0)), "the oldest of that user");
    assert_eq!(map.len(), MAX_UNFINISHED_RUNS_PER_USER);
    let p = Progress {
        seq: 7,
        started_ms: 9,
        cost_usd: None,
    };
    assert_eq!(Progress::decode(&p.encode()), Some(p));
}

#[test]
fn a_runs_cost_is_kept_in_its_resume_point_and_old_points_still_read() {
    let p = Progress {
        seq: 7,
        started_ms: 9,
        cost_usd: Some(0.0342),
    };
    assert_eq!(p.encode().len(), 24);
    assert_eq!(Progress::decode(&p.encode()), Some(p));
    let old = Progress::decode(&[7, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!((old.seq, old.started_ms, old.cost_usd), (7, 9, None));
}

#[test]
fn one_user_cannot_take_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let ctx = ctx(dir.path(), tx, 10);
    let slots: Vec<_> = (0..MAX_CONNECTIONS_PER_USER)
        .map(|_| UserSlot::take(&ctx, 1000).unwrap())
        .collect();
    assert!(UserSlot::take(&ctx, 1000).is_none());
    assert!(UserSlot::take(&ctx, 1001).is_some(), "others still get in");
    drop(slots);
    assert!(UserSlot::take(&ctx, 1000).is_some());
}

fn ctx(dir: &std::path::Path, tx: mpsc::Sender<SourceBatch>, max_label_sets: usize) -> Ctx {
    Ctx {
        tx,
        durable: Arc::default(),
        active: Mutex::default(),
        run_ended: tokio::sync::Notify::new(),
        per_user: Mutex::default(),
        handled: Arc::new(Mutex::new(Handled::load(dir))),
        known: Arc::default(),
        warnings: crate::event::Repeated::default(),
        intake: None,
        counters: Arc::new(ExecCounters::new(10)),
        span: SpanSettings {
            hostname: "vm".into(),
            resource_attributes: vec![],
        },
        streams: Mutex::new(StreamGuard::new(max_label_sets)),
    }
}

#[test]
fn one_users_label_values_do_not_take_another_users_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let ctx = ctx(dir.path(), tx, 3);
    let labels = |v: &str| [("iter".to_string(), v.to_string())].into();
    for i in 0..2016 {
        guard_streams(&ctx, 1001, "mallory", "ralph", labels(&i.to_string()));
    }
    let (job, l) = guard_streams(&ctx, 1001, "mallory", "ralph", labels("x"));
    assert_eq!(
        (job.as_str(), l),
        ("other", vec![("iter".into(), "other".into())])
    );
    let (job, l) = guard_streams(&ctx, 1000, "alice", "build", labels("1"));
    assert_eq!(
        (job.as_str(), l),
        ("build", vec![("iter".into(), "1".into())])
    );
    // A set seen before keeps its labels.
    let (job, _) = guard_streams(&ctx, 1001, "mallory", "ralph", labels("0"));
    assert_eq!(job, "ralph");
}
