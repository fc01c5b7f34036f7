//! `${VAR}` and `${VAR:-default}` in the configuration's string values, as
//! Vector, Fluent Bit and Promtail (`-config.expand-env`) expand them.
//!
//! Expanded in the parsed values, not in the text: the file is parsed first,
//! and each string value with a `$` in it is replaced, as a quoted TOML string
//! of its expansion, at its own place in the text, which is then parsed as
//! usual. So a value can never break the file's syntax (a quote or a newline
//! in a variable stays inside its string), keys are never expanded, and the
//! lines of every later error are the file's own (a multi-line string aside).
//!
//! Rules: `${NAME}` is the variable's value (empty if set empty);
//! `${NAME:-default}` the default when it is unset or empty; `$${` is a
//! literal `${`; any other `$` stays as it is. `NAME` is
//! `[A-Za-z_][A-Za-z0-9_]*`; a default runs to the first `}`. An unset
//! variable without a default is an error naming the variable and the key.

use std::borrow::Cow;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{ConfigError, EnvSource};

/// `text` with every string value's variables expanded (see the module doc),
/// and the names of the variables read. A text TOML cannot parse is returned
/// as it is: the parser's own error says where.
pub fn expand<'t>(
    text: &'t str,
    origin: &str,
    env: &dyn EnvSource,
) -> Result<(Cow<'t, str>, Vec<String>), ConfigError> {
    if !text.contains("${") {
        return Ok((Cow::Borrowed(text), Vec::new()));
    }
    let Ok(doc) = DeTable::parse(text) else {
        return Ok((Cow::Borrowed(text), Vec::new()));
    };
    let mut edits = Vec::new();
    let mut names = Vec::new();
    walk_table(doc.get_ref(), "", &mut |key, value| {
        let DeValue::String(s) = value.get_ref() else {
            return Ok(());
        };
        if !s.contains('$') {
            return Ok(());
        }
        let expanded = expand_str(s, env, &mut names).map_err(|why| {
            let line = text[..value.span().start.min(text.len())]
                .matches('\n')
                .count()
                + 1;
            ConfigError::Invalid {
                origin: origin.to_string(),
                line: Some(line),
                key: key.to_string(),
                message: why,
            }
        })?;
        if expanded != **s {
            // A JSON string is a TOML basic string, on one line.
            let quoted = serde_json::to_string(&expanded).unwrap_or_default();
            edits.push((value.span(), quoted));
        }
        Ok(())
    })?;
    if edits.is_empty() {
        return Ok((Cow::Borrowed(text), names));
    }
    edits.sort_by_key(|(span, _)| std::cmp::Reverse(span.start));
    let mut out = text.to_string();
    for (span, quoted) in edits {
        if span.end <= out.len()
            && out.is_char_boundary(span.start)
            && out.is_char_boundary(span.end)
        {
            out.replace_range(span, &quoted);
        }
    }
    names.sort();
    names.dedup();
    Ok((Cow::Owned(out), names))
}

type Visit<'a> = dyn FnMut(&str, &Spanned<DeValue<'_>>) -> Result<(), ConfigError> + 'a;

fn walk_table(table: &DeTable<'_>, prefix: &str, visit: &mut Visit<'_>) -> Result<(), ConfigError> {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        walk_value(value, &key, visit)?;
    }
    Ok(())
}

fn walk_value(
    value: &Spanned<DeValue<'_>>,
    key: &str,
    visit: &mut Visit<'_>,
) -> Result<(), ConfigError> {
    match value.get_ref() {
        DeValue::Table(t) => walk_table(t, key, visit),
        DeValue::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                walk_value(v, &format!("{key}[{i}]"), visit)?;
            }
            Ok(())
        }
        _ => visit(key, value),
    }
}

/// One string's expansion; `Err` says which variable is missing, and how to
/// give it.
fn expand_str(s: &str, env: &dyn EnvSource, names: &mut Vec<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(close) = body.find('}') else {
            return Err(format!(
                "`${{` without its `}}` in {s:?}; write `$${{` for a literal `${{`"
            ));
        };
        let (name, default) = match body[..close].split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (&body[..close], None),
        };
        if !is_name(name) {
            return Err(format!(
                "`${{{name}}}` is no variable name ([A-Za-z_][A-Za-z0-9_]*); write `$${{` for a literal `${{`"
            ));
        }
        names.push(name.to_string());
        let value = env.var(name);
        match (value, default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "the environment variable {name} is not set, and `${{{name}}}` has no default: \
                     set {name}, or write `${{{name}:-default}}`"
                ))
            }
        }
        rest = &body[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Env(HashMap<&'static str, &'static str>);
    impl EnvSource for Env {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    fn env() -> Env {
        Env(HashMap::from([
            ("LOKI", "http://loki:3100/loki/api/v1/push"),
            ("EMPTY", ""),
            ("EVIL", "a\"b\nc = 1 [x]"),
        ]))
    }

    fn run(text: &str) -> Result<String, ConfigError> {
        expand(text, "test.toml", &env()).map(|(t, _)| t.into_owned())
    }

    #[test]
    fn variables_and_defaults_are_expanded_in_string_values() {
        let out = run(concat!(
            "[loki]\nurl = \"${LOKI}\"\n",
            "[agent]\nhostname = \"${NOPE:-vm}-${EMPTY:-x}\"\n",
            "labels = { team = \"$${LITERAL} and $5\" }\n",
        ))
        .unwrap();
        let v: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(
            v["loki"]["url"].as_str(),
            Some("http://loki:3100/loki/api/v1/push")
        );
        assert_eq!(v["agent"]["hostname"].as_str(), Some("vm-x"));
        assert_eq!(
            v["agent"]["labels"]["team"].as_str(),
            Some("${LITERAL} and $5")
        );
        assert_eq!(out.lines().count(), 5, "lines stay where they were");
    }

    #[test]
    fn a_value_cannot_break_the_files_syntax() {
        let out = run("[agent]\nhostname = \"${EVIL}\"\n[loki]\nenabled = false\n").unwrap();
        let v: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(v["agent"]["hostname"].as_str(), Some("a\"b\nc = 1 [x]"));
        assert_eq!(v["loki"]["enabled"].as_bool(), Some(false));
    }

    #[test]
    fn arrays_and_tables_of_arrays_are_expanded_and_keys_are_not() {
        let out = run(
            "[[files]]\nname = \"x\"\npaths = [\"/a\", \"${NOPE:-/b}/*.log\"]\n[\"${LOKI}\"]\n",
        )
        .unwrap();
        assert!(out.contains("\"/b/*.log\""), "{out}");
        assert!(out.contains("[\"${LOKI}\"]"), "{out}");
    }

    #[test]
    fn an_unset_variable_names_itself_and_the_key() {
        let e = run("[loki]\n\nurl = \"${LOKI_PUSH}\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LOKI_PUSH") && e.contains("`loki.url`") && e.contains("line 3"),
            "{e}"
        );
        assert!(e.contains("${LOKI_PUSH:-default}"), "{e}");
        let e = run("[loki]\nurl = \"${LOKI\"\n").unwrap_err().to_string();
        assert!(e.contains("without its"), "{e}");
    }
}
