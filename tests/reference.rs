//! `docs/REFERENCE.md` is the user-facing contract: its key tables, the annotated
//! example `packaging/examples/full.toml` and the configuration schema in the code
//! list the same keys, and its metric table holds every family `/metrics` serves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use wisp_agent::config::{BasicAuth, Config, FileConfig};

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// The text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
fn section<'a>(doc: &'a str, name: &str) -> &'a str {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let start = doc
        .find(&begin)
        .unwrap_or_else(|| panic!("docs/REFERENCE.md has no {begin}"))
        + begin.len();
    let stop = doc[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("docs/REFERENCE.md has no {end}"))
        + start;
    &doc[start..stop]
}

/// The first cell of every table row whose first cell is one backticked word:
/// `| \`loki.batch_max_bytes\` | …` gives `loki.batch_max_bytes`.
fn first_cells(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let cell = line.trim().strip_prefix('|')?.split('|').next()?.trim();
            let word = cell.strip_prefix('`')?.strip_suffix('`')?;
            (!word.is_empty() && !word.contains('`')).then(|| word.to_string())
        })
        .collect()
}

fn reference_keys() -> BTreeSet<String> {
    let doc = read("docs/REFERENCE.md");
    let cells = first_cells(section(&doc, "config-keys"));
    let mut keys = BTreeSet::new();
    for key in cells {
        assert!(
            key.split('.').count() == 2,
            "docs/REFERENCE.md: key {key:?} is not written as table.key"
        );
        assert!(
            keys.insert(key.clone()),
            "docs/REFERENCE.md lists {key:?} twice"
        );
    }
    keys
}

/// Dotted `table.key` names of a configuration document: top-level tables and
/// every `[[files]]` entry (as `files.KEY`) are descended into; a value that is
/// itself a table (`agent.labels`, `loki.basic_auth`, `files.multiline`) is one key.
fn flatten(doc: &toml::Table) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for (table, value) in doc {
        let entries: Vec<&toml::Table> = match value {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(a) => a.iter().filter_map(|v| v.as_table()).collect(),
            _ => {
                keys.insert(table.clone());
                continue;
            }
        };
        for entry in entries {
            for key in entry.keys() {
                keys.insert(format!("{table}.{key}"));
            }
        }
    }
    keys
}

/// `packaging/examples/full.toml`, its commented-out keys (`# ca_file = …`: the
/// optional keys without a default) included.
fn example_keys() -> BTreeSet<String> {
    let text = read("packaging/examples/full.toml");
    let key_line = regex::Regex::new(r"^#\s*([a-z_]+\s*=.*)$").unwrap();
    let uncommented: String = text
        .lines()
        .map(|line| match key_line.captures(line) {
            Some(c) => c[1].to_string(),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let doc: toml::Table = toml::from_str(&uncommented)
        .unwrap_or_else(|e| panic!("packaging/examples/full.toml does not parse: {e}"));
    flatten(&doc)
}

/// The schema's keys: the default configuration with one `[[files]]` entry and
/// every optional key set, printed as `config check` prints it.
fn schema_keys() -> BTreeSet<String> {
    let mut config = Config::default();
    config.loki.basic_auth = Some(BasicAuth {
        username: "u".into(),
        password_file: PathBuf::from("/p"),
    });
    config.loki.bearer_token_file = Some(PathBuf::from("/t"));
    config.loki.ca_file = Some(PathBuf::from("/ca"));
    config.files.push(FileConfig::default());
    let text = toml::to_string(&config).unwrap();
    flatten(&toml::from_str(&text).unwrap())
}

fn difference(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).cloned().collect()
}

#[test]
fn the_reference_and_the_full_example_list_the_same_keys() {
    let reference = reference_keys();
    let example = example_keys();
    let only_reference = difference(&reference, &example);
    let only_example = difference(&example, &reference);
    assert!(
        only_reference.is_empty() && only_example.is_empty(),
        "keys in docs/REFERENCE.md but not in packaging/examples/full.toml: {only_reference:?}\n\
         keys in packaging/examples/full.toml but not in docs/REFERENCE.md: {only_example:?}"
    );
}

#[test]
fn the_reference_lists_every_key_of_the_schema_and_no_other() {
    let reference = reference_keys();
    let schema = schema_keys();
    let only_reference = difference(&reference, &schema);
    let only_schema = difference(&schema, &reference);
    assert!(
        only_reference.is_empty() && only_schema.is_empty(),
        "keys in docs/REFERENCE.md that the configuration does not take: {only_reference:?}\n\
         keys of the configuration missing from docs/REFERENCE.md: {only_schema:?}"
    );
}

/// The metric families `/metrics` serves, as the registry's collectors
/// declare them (a unit test in `src/admin` checks a full page serves exactly these).
fn served_families() -> BTreeSet<String> {
    let families: BTreeSet<String> = wisp_agent::run::metric_families()
        .into_iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert!(
        families.len() > 40,
        "only {} families served: has the registry lost a stage?",
        families.len()
    );
    families
}

#[test]
fn the_reference_lists_every_metric_family_served() {
    let doc = read("docs/REFERENCE.md");
    let documented: BTreeSet<String> = first_cells(section(&doc, "metrics")).into_iter().collect();
    let served = served_families();
    let missing = difference(&served, &documented);
    let unknown = difference(&documented, &served);
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "metric families served but not in docs/REFERENCE.md: {missing:?}\n\
         metric families in docs/REFERENCE.md that are not served: {unknown:?}"
    );
}

/// Each family's type in the reference is the one `/metrics` declares.
#[test]
fn the_reference_gives_each_metric_family_its_served_type() {
    let doc = read("docs/REFERENCE.md");
    for (name, kind) in wisp_agent::run::metric_families() {
        let line = section(&doc, "metrics")
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("{name} is not in docs/REFERENCE.md"));
        let documented = line.split('|').nth(2).unwrap_or("").trim();
        assert_eq!(
            documented, kind,
            "docs/REFERENCE.md gives {name} the wrong type"
        );
    }
}

#[test]
fn the_readme_links_only_to_files_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let link = regex::Regex::new(r"\]\(([^)#\s]+)(#[^)]*)?\)").unwrap();
    for doc in ["README.md", "docs/REFERENCE.md", "docs/ARCHITECTURE.md"] {
        let text = read(doc);
        let base = root.join(doc).parent().unwrap().to_path_buf();
        for c in link.captures_iter(&text) {
            let target = &c[1];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let path = base.join(target);
            let canonical = path
                .canonicalize()
                .unwrap_or_else(|_| panic!("{doc} links to {target}, which does not exist"));
            assert!(
                canonical.starts_with(root.canonicalize().unwrap()),
                "{doc} links to {target}, outside the repository"
            );
        }
    }
}
