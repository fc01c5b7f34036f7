//! Stream labels: names and values made valid for Loki, the cardinality guard on
//! promoted fields, and the cache that lets the common line reuse a shared label
//! set instead of building one.
//!
//! Bounds: at most `max_label_values` distinct values per promoted label and
//! owner, and at most `max_label_values` label sets per user for `exec` runs
//! and OTLP senders ([`StreamGuard`]) (past it the value is `other`); label values at most [`MAX_VALUE_BYTES`]; the cache holds
//! at most [`MAX_CACHED_SOURCES`] sources and [`MAX_CACHED_SETS`] promoted label
//! sets per source, and starts over when full.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::level::Level;
use crate::record::{Labels, SourceInfo};

/// Longer label values are cut (at a character boundary): Loki limits label value
/// length (2048 by default) and long values are never what a user filters on.
pub const MAX_VALUE_BYTES: usize = 1024;

/// The value a promoted label takes once it has seen too many distinct values.
pub const OVERFLOW_VALUE: &str = "other";

const MAX_CACHED_SOURCES: usize = 1024;
const MAX_CACHED_SETS: usize = 4096;

/// A label name as Loki accepts it, `[a-zA-Z_][a-zA-Z0-9_]*`: other characters
/// become `_`, a leading digit gets a `_` in front, and an empty name is `_`.
pub fn label_name(name: &str) -> Cow<'_, str> {
    let valid = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = name.as_bytes();
    let fine = !b.is_empty() && !b[0].is_ascii_digit() && b.iter().all(|&c| valid(c));
    if fine {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 1);
    if b.first().is_none_or(u8::is_ascii_digit) {
        out.push('_');
    }
    for c in name.chars() {
        out.push(if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        });
    }
    Cow::Owned(out)
}

/// A label value as shipped: control characters escaped (`\u{1b}`, `\n`: a
/// label is printed by terminals, in `/metrics`, `status` and Grafana, and an
/// escape sequence in one would act there), at most [`MAX_VALUE_BYTES`], cut at
/// a character boundary. (A `String` is valid UTF-8 already, which is what
/// Loki requires.)
pub fn label_value(value: &str) -> Cow<'_, str> {
    let value = match escape_controls(value) {
        Cow::Borrowed(v) => Cow::Borrowed(cut(v)),
        Cow::Owned(v) => Cow::Owned(cut(&v).to_owned()),
    };
    value
}

fn cut(value: &str) -> &str {
    if value.len() <= MAX_VALUE_BYTES {
        return value;
    }
    let mut end = MAX_VALUE_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// `text` with each control character (C0, DEL, C1) written as its Rust
/// escape (`\u{1b}`, `\t`, `\n`), so that printing it moves no cursor and
/// changes no title; borrowed when there is none (the common case).
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The label names the agent sets itself: no user's label may take one, in
/// any case (`User` would read as `user` to a person).
pub const AGENT_LABELS: [&str; 5] = ["job", "host", "filename", "level", "user"];

/// Whether a user may name a label `name` (`exec --label`, a run's labels):
/// `Err` says why not. It must match `[a-zA-Z_][a-zA-Z0-9_]*`, be none of
/// [`AGENT_LABELS`] in any case, and not start with `__` (Loki's own names,
/// such as `__name__` or `__tenant_id__`).
pub fn check_user_label_name(name: &str) -> Result<(), String> {
    if !crate::config::is_valid_label_name(name) {
        return Err(format!(
            "label name {:?} must match [a-zA-Z_][a-zA-Z0-9_]*",
            escape_controls(name)
        ));
    }
    if AGENT_LABELS.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(format!(
            "label {name:?} is set by the agent (use --name for the job)"
        ));
    }
    if name.starts_with("__") {
        return Err(format!(
            "label {name:?} starts with __, which Loki keeps for itself"
        ));
    }
    Ok(())
}

/// Keeps each promoted label to at most `max_values` distinct values.
#[derive(Debug)]
pub(crate) struct CardinalityGuard {
    max_values: usize,
    seen: HashMap<String, HashSet<String>>,
}

/// What the guard made of a value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admitted<'v> {
    Value(&'v str),
    /// Replaced by [`OVERFLOW_VALUE`]; `first` is true the first time this label
    /// overflowed (to warn once).
    Overflow {
        first: bool,
    },
}

impl CardinalityGuard {
    pub(crate) fn new(max_values: usize) -> Self {
        Self {
            max_values,
            seen: HashMap::new(),
        }
    }

    pub(crate) fn admit<'v>(&mut self, label: &str, value: &'v str) -> Admitted<'v> {
        let set = match self.seen.get_mut(label) {
            Some(set) => set,
            None => self.seen.entry(label.to_owned()).or_default(),
        };
        if set.contains(value) {
            return Admitted::Value(value);
        }
        // One slot past the limit marks "warned already", so the set stays bounded.
        if set.len() < self.max_values {
            set.insert(value.to_owned());
            return Admitted::Value(value);
        }
        let first = !set.contains(OVERFLOW_MARK);
        if first {
            set.insert(OVERFLOW_MARK.to_owned());
        }
        Admitted::Overflow { first }
    }
}

/// Keys a [`StreamGuard`] or a set of per-owner guards remembers at most (the
/// users and sources of one machine); past it they start over.
pub(crate) const MAX_GUARDED_KEYS: usize = 4096;

/// Bounds the distinct label sets (streams, level aside) each key (a user, a
/// source) makes: at most `max_sets` per key, further sets are `other`. So no
/// key takes another's: each has its own bound, not a first-come share of one.
/// A set is remembered by a keyed hash (random keys per process: no sender
/// can aim collisions), so a key's memory is `max_sets` × 8 bytes.
#[derive(Debug)]
pub(crate) struct StreamGuard<K> {
    max_sets: usize,
    hasher: std::collections::hash_map::RandomState,
    seen: HashMap<K, (HashSet<u64>, bool)>,
}

impl<K: std::hash::Hash + Eq + Clone> StreamGuard<K> {
    pub(crate) fn new(max_sets: usize) -> Self {
        Self {
            max_sets,
            hasher: Default::default(),
            seen: HashMap::new(),
        }
    }

    /// Whether `key` may ship the label set `set` (anything hashable that
    /// names it, e.g. `(job, labels)`): `Value(())` when it has before or has
    /// room, else `Overflow` (`first`: the first time for this key).
    pub(crate) fn admit(&mut self, key: &K, set: impl std::hash::Hash) -> Admitted<'static> {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(set);
        if !self.seen.contains_key(key) && self.seen.len() >= MAX_GUARDED_KEYS {
            self.seen.clear();
        }
        let (sets, warned) = self.seen.entry(key.clone()).or_default();
        if sets.contains(&hash) {
            return Admitted::Value("");
        }
        if sets.len() < self.max_sets {
            sets.insert(hash);
            return Admitted::Value("");
        }
        let first = !*warned;
        *warned = true;
        Admitted::Overflow { first }
    }
}

/// Stored in a label's value set once it overflowed; not a valid label value
/// (values are never empty), so it cannot collide with a real one.
const OVERFLOW_MARK: &str = "";

/// Label sets per source, built once and shared: per level when the source
/// promotes no fields, else per (level, promoted values).
#[derive(Debug, Default)]
pub(crate) struct LabelCache {
    // Keyed by the `Arc<SourceInfo>`'s address; the entry holds a clone of the Arc,
    // so the address cannot be reused by another source while it is cached.
    sources: HashMap<usize, SourceLabels>,
}

#[derive(Debug)]
pub(crate) struct SourceLabels {
    _source: Arc<SourceInfo>,
    /// Sanitized static pairs: agent labels, source labels, job, host, filename.
    base: Vec<(String, String)>,
    /// Sanitized names of the promoted fields, one per `label_fields` entry.
    pub(crate) promoted_names: Vec<String>,
    by_level: [Option<Labels>; 7],
    promoted: HashMap<(Level, Vec<Option<String>>), Labels>,
}

impl LabelCache {
    /// The cached labels of `source`, built on first use.
    pub(crate) fn source(
        &mut self,
        source: &Arc<SourceInfo>,
        hostname: &str,
        agent_labels: &[(String, String)],
    ) -> &mut SourceLabels {
        let key = Arc::as_ptr(source) as usize;
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_CACHED_SOURCES {
            self.sources.clear();
        }
        self.sources
            .entry(key)
            .or_insert_with(|| SourceLabels::new(source.clone(), hostname, agent_labels))
    }
}

impl SourceLabels {
    fn new(source: Arc<SourceInfo>, hostname: &str, agent_labels: &[(String, String)]) -> Self {
        // Later pairs win on a name clash: static labels cannot override the
        // labels the agent defines (job, host, filename, level).
        let mut base: Vec<(String, String)> = Vec::new();
        let mut push = |k: &str, v: &str| {
            let v = label_value(v);
            if !v.is_empty() {
                base.push((label_name(k).into_owned(), v.into_owned()));
            }
        };
        for (k, v) in agent_labels.iter().chain(source.labels.iter()) {
            push(k, v);
        }
        push("job", &source.job);
        push("host", hostname);
        if let Some(f) = &source.filename {
            push("filename", f);
        }
        let promoted_names = source
            .label_fields
            .iter()
            .map(|f| label_name(f).into_owned())
            .collect();
        Self {
            _source: source,
            base,
            promoted_names,
            by_level: Default::default(),
            promoted: HashMap::new(),
        }
    }

    /// The label set of a line at `level` with these promoted values (already
    /// admitted by the guard; `None` where the line lacks the field). The
    /// common line (no promoted value) takes a clone of its level's set,
    /// inline; the rest is built out of line.
    #[inline]
    pub(crate) fn labels(&mut self, level: Level, promoted: &[Option<&str>]) -> Labels {
        if promoted.iter().all(Option::is_none) {
            if let Some(labels) = &self.by_level[level.index()] {
                return labels.clone();
            }
        }
        self.build_labels(level, promoted)
    }

    #[inline(never)]
    fn build_labels(&mut self, level: Level, promoted: &[Option<&str>]) -> Labels {
        if promoted.iter().all(Option::is_none) {
            return self.by_level[level.index()]
                .get_or_insert_with(|| build(&self.base, &[], &[], level))
                .clone();
        }
        let key = (
            level,
            promoted
                .iter()
                .map(|v| v.map(str::to_owned))
                .collect::<Vec<_>>(),
        );
        if let Some(l) = self.promoted.get(&key) {
            return l.clone();
        }
        if self.promoted.len() >= MAX_CACHED_SETS {
            self.promoted.clear();
        }
        let labels = build(&self.base, &self.promoted_names, promoted, level);
        self.promoted.insert(key, labels.clone());
        labels
    }
}

fn build(
    base: &[(String, String)],
    names: &[String],
    values: &[Option<&str>],
    level: Level,
) -> Labels {
    let promoted = names
        .iter()
        .zip(values)
        .filter_map(|(n, v)| v.map(|v| (n.clone(), v.to_owned())))
        // Promoted fields cannot take over the agent's own labels.
        .filter(|(n, _)| !matches!(n.as_str(), "job" | "host" | "filename" | "level"));
    let mut pairs: Vec<(String, String)> = Vec::with_capacity(base.len() + names.len() + 1);
    let (statics, own): (Vec<_>, Vec<_>) = base
        .iter()
        .cloned()
        .partition(|(n, _)| !matches!(n.as_str(), "job" | "host" | "filename"));
    pairs.extend(statics);
    pairs.extend(promoted);
    pairs.extend(own);
    pairs.push(("level".into(), level.as_str().into()));
    Labels::from_pairs(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;

    #[test]
    fn label_names_are_made_valid_for_loki() {
        let table = [
            ("service", "service"),
            ("_ok_1", "_ok_1"),
            ("service.name", "service_name"),
            ("k8s-app", "k8s_app"),
            ("1st", "_1st"),
            ("", "_"),
            ("ünï", "_n_"),
            ("a b", "a_b"),
        ];
        for (name, want) in table {
            assert_eq!(label_name(name), want, "{name:?}");
        }
    }

    #[test]
    fn long_label_values_are_cut_at_a_character_boundary() {
        assert_eq!(label_value("short"), "short");
        let long = "é".repeat(MAX_VALUE_BYTES);
        let cut = label_value(&long);
        assert!(cut.len() <= MAX_VALUE_BYTES && cut.len() >= MAX_VALUE_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn guard_admits_up_to_the_limit_then_says_other_and_warns_once() {
        let mut g = CardinalityGuard::new(2);
        assert_eq!(g.admit("svc", "a"), Admitted::Value("a"));
        assert_eq!(g.admit("svc", "b"), Admitted::Value("b"));
        assert_eq!(g.admit("svc", "a"), Admitted::Value("a"));
        assert_eq!(g.admit("svc", "c"), Admitted::Overflow { first: true });
        assert_eq!(g.admit("svc", "d"), Admitted::Overflow { first: false });
        assert_eq!(g.admit("svc", "b"), Admitted::Value("b"));
        assert_eq!(g.admit("other_label", "c"), Admitted::Value("c"));
    }

    #[test]
    fn each_key_of_a_stream_guard_has_its_own_bound() {
        let mut g = StreamGuard::new(2);
        assert_eq!(g.admit(&1, ("a", 1)), Admitted::Value(""));
        assert_eq!(g.admit(&1, ("b", 1)), Admitted::Value(""));
        assert_eq!(g.admit(&1, ("c", 1)), Admitted::Overflow { first: true });
        assert_eq!(g.admit(&1, ("d", 1)), Admitted::Overflow { first: false });
        assert_eq!(g.admit(&1, ("a", 1)), Admitted::Value(""));
        // Another key is not pushed out by the first one's sets.
        assert_eq!(g.admit(&2, ("z", 1)), Admitted::Value(""));
        assert_eq!(g.admit(&2, ("a", 1)), Admitted::Value(""));
        assert_eq!(g.admit(&2, ("y", 1)), Admitted::Overflow { first: true });
    }

    fn source(labels: &[(&str, &str)], fields: &[&str]) -> Arc<SourceInfo> {
        Arc::new(SourceInfo {
            job: "api".into(),
            filename: Some("/tmp/a.log".into()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            format: LogFormat::Auto,
            label_fields: fields.iter().map(|f| f.to_string()).collect(),
            trace_context: None,
            owner: crate::record::Owner::UNKNOWN,
        })
    }

    #[test]
    fn label_sets_combine_static_agent_and_promoted_labels_and_the_agent_keeps_its_own() {
        let mut cache = LabelCache::default();
        let src = source(
            &[("env", "local"), ("job", "hijack"), ("bad-name", "x")],
            &["svc.name", "level"],
        );
        let agent = vec![
            ("team".to_string(), "core".to_string()),
            ("empty".into(), String::new()),
        ];
        let entry = cache.source(&src, "vm1", &agent);
        let l = entry.labels(Level::Warn, &[Some("billing"), Some("fatal")]);
        assert_eq!(
            l.to_string(),
            r#"{bad_name="x", env="local", filename="/tmp/a.log", host="vm1", job="api", level="warn", svc_name="billing", team="core"}"#
        );
        let plain = entry.labels(Level::Info, &[None, None]);
        assert_eq!(plain.get("svc_name"), None);
        assert_eq!(plain.get("level"), Some("info"));
    }

    #[test]
    fn cached_label_sets_are_shared_not_rebuilt() {
        let mut cache = LabelCache::default();
        let src = source(&[], &[]);
        let a = cache.source(&src, "vm1", &[]).labels(Level::Info, &[]);
        let b = cache.source(&src, "vm1", &[]).labels(Level::Info, &[]);
        assert_eq!(a, b);
        assert!(a.iter().zip(b.iter()).all(|(x, y)| std::ptr::eq(x.0, y.0)));
    }
}
