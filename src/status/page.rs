//! Reads a `/metrics` page (the Prometheus text format 0.0.4 the admin
//! endpoint writes) back into samples, so a status says exactly what the
//! metrics say.
//!
//! Promises: never fails; a line it cannot read is skipped. Comments (`#
//! HELP`, `# TYPE`) are skipped; label values are unescaped (`\\`, `\"`,
//! `\n`); a timestamp after the value is ignored.

/// One sample: its family's name as served, its labels in page order, its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the sample has each of `labels` with that value.
    fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Every sample of a page, in page order.
#[derive(Clone, Debug, Default)]
pub struct Page {
    samples: Vec<Sample>,
}

impl Page {
    pub fn parse(text: &str) -> Page {
        Page {
            samples: text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .filter_map(parse_line)
                .collect(),
        }
    }

    /// The samples named `name`.
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The first sample named `name` with `labels` (and maybe others), if any.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name).find(|s| s.has(labels)).map(|s| s.value)
    }

    /// As [`Page::get`], 0 when absent (a family with nothing to count yet).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum of every sample named `name` with `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .filter(|s| s.has(labels))
            .map(|s| s.value)
            .sum()
    }
}

/// `name{a="1",b="x\"y"} 12.5 [timestamp]`, or `None`.
fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Labels up to the closing `}`; returns them and the text after it.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = s.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_string(), value));
        s = &after[end + 1..];
    }
}
