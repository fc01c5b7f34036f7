//! The dashboards' queries against a [`Catalogue`] of what the agent sends:
//! small tokenizers and walkers for the parts of LogQL, PromQL and TraceQL the
//! dashboards use (and refusals for the parts they must not use: LogQL parser
//! stages, selectors without a metric name, unscoped TraceQL attributes).

use std::collections::{BTreeMap, BTreeSet};

use super::Catalogue;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str,
    Num,
    Punct(String),
}

/// Splits a query into identifiers (dots allowed when `dots`), string
/// literals, numbers and durations, and punctuation.
fn tokens(q: &str, dots: bool) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '`' {
            let quote = c;
            i += 1;
            while i < chars.len() && chars[i] != quote {
                if chars[i] == '\\' && quote == '"' {
                    i += 1;
                }
                i += 1;
            }
            if i >= chars.len() {
                return Err(format!("unterminated string in {q}"));
            }
            i += 1;
            out.push(Tok::Str);
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num);
        } else if c.is_ascii_alphabetic() || c == '_' || (dots && c == '.') {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '_'
                    || chars[i] == ':'
                    || (dots && chars[i] == '.'))
            {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let p = if ["!=", "=~", "!~", "|=", "|~", "==", ">=", "<=", "&&", "||"]
                .contains(&two.as_str())
            {
                two
            } else {
                c.to_string()
            };
            i += p.chars().count();
            out.push(Tok::Punct(p));
        }
    }
    Ok(out)
}

fn is_punct(t: Option<&Tok>, p: &str) -> bool {
    matches!(t, Some(Tok::Punct(x)) if x == p)
}

/// The index just past the bracket closing the one at `open`.
fn closing(toks: &[Tok], open: usize) -> Result<usize, String> {
    let (o, c) = match &toks[open] {
        Tok::Punct(p) if p == "(" => ("(", ")"),
        Tok::Punct(p) if p == "{" => ("{", "}"),
        Tok::Punct(p) if p == "[" => ("[", "]"),
        t => return Err(format!("{t:?} is not a bracket")),
    };
    let mut depth = 0;
    for (i, t) in toks.iter().enumerate().skip(open) {
        if is_punct(Some(t), o) {
            depth += 1;
        } else if is_punct(Some(t), c) {
            depth -= 1;
            if depth == 0 {
                return Ok(i + 1);
            }
        }
    }
    Err("unbalanced brackets".into())
}

/// The label names of the matchers in `{...}` starting at `open`.
fn matcher_labels(toks: &[Tok], open: usize, end: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut i = open + 1;
    while i < end - 1 {
        match (&toks[i], toks.get(i + 1), toks.get(i + 2)) {
            (Tok::Ident(name), Some(Tok::Punct(op)), Some(Tok::Str))
                if ["=", "!=", "=~", "!~"].contains(&op.as_str()) =>
            {
                out.push(name.clone());
                i += 3;
                if is_punct(toks.get(i), ",") {
                    i += 1;
                }
            }
            _ => return Err(format!("not a label matcher at {:?}", &toks[i..end])),
        }
    }
    Ok(out)
}

/// The identifiers of a `(a, b)` list at `open`.
fn label_list(toks: &[Tok], open: usize) -> Result<(Vec<String>, usize), String> {
    if !is_punct(toks.get(open), "(") {
        return Err("expected a ( after by/without".into());
    }
    let end = closing(toks, open)?;
    let labels = toks[open + 1..end - 1]
        .iter()
        .filter_map(|t| match t {
            Tok::Ident(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    Ok((labels, end))
}

/// Grafana's own variables replaced by what they stand for.
fn expand(q: &str) -> String {
    let mut q = q.to_string();
    for v in ["$__rate_interval", "$__interval", "$__range", "$__auto"] {
        q = q.replace(v, "5m");
    }
    q
}

const PROMQL_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
];
const PROMQL_AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "group",
    "count_values",
];

/// Checks a PromQL expression against the catalogue; returns what is wrong.
pub fn check_promql(q: &str, prom: &BTreeMap<String, BTreeSet<String>>) -> Result<(), String> {
    let toks = tokens(&expand(q), false)?;
    // Each selector: its token index and metric name.
    let mut selectors: Vec<(usize, String)> = Vec::new();
    let mut errors = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct(p) if p == "[" => i = closing(&toks, i)?,
            Tok::Ident(id) if PROMQL_KEYWORDS.contains(&id.as_str()) => {
                i += 1;
                if is_punct(toks.get(i), "(") {
                    i = closing(&toks, i)?;
                }
            }
            Tok::Ident(_) if is_punct(toks.get(i + 1), "(") => i += 1, // a function
            Tok::Ident(id) if PROMQL_AGGREGATIONS.contains(&id.as_str()) => i += 1, // sum by (...) (...)
            Tok::Ident(name) => {
                let labels = prom.get(name);
                match labels {
                    Some(_) => selectors.push((i, name.clone())),
                    None => errors.push(format!("no metric {name}")),
                }
                i += 1;
                if is_punct(toks.get(i), "{") {
                    let end = closing(&toks, i)?;
                    for l in matcher_labels(&toks, i, end)? {
                        if let Some(labels) = labels.filter(|ls| !ls.contains(&l)) {
                            errors.push(format!("{name} has no label {l} (it has {labels:?})"));
                        }
                    }
                    i = end;
                }
            }
            Tok::Punct(p) if p == "{" => {
                return Err(format!("a selector without a metric name in {q}"))
            }
            _ => i += 1,
        }
    }
    // Aggregations: `by`/`without` labels against the metrics aggregated.
    for (i, t) in toks.iter().enumerate() {
        let Tok::Ident(agg) = t else { continue };
        if !PROMQL_AGGREGATIONS.contains(&agg.as_str()) {
            continue;
        }
        let (grouping, arg) = match toks.get(i + 1) {
            Some(Tok::Ident(kw)) if kw == "by" || kw == "without" => {
                let (labels, after) = label_list(&toks, i + 2)?;
                (labels, (after, closing(&toks, after)?))
            }
            _ if is_punct(toks.get(i + 1), "(") => {
                let end = closing(&toks, i + 1)?;
                match toks.get(end) {
                    Some(Tok::Ident(kw)) if kw == "by" || kw == "without" => {
                        (label_list(&toks, end + 1)?.0, (i + 1, end))
                    }
                    _ => (Vec::new(), (i + 1, end)),
                }
            }
            _ => continue,
        };
        for (at, name) in &selectors {
            if *at < arg.0 || *at >= arg.1 {
                continue;
            }
            for l in &grouping {
                if !prom[name].contains(l) {
                    errors.push(format!(
                        "{agg} by ({l}) over {name}, which has no label {l}"
                    ));
                }
            }
        }
    }
    if selectors.is_empty() && errors.is_empty() {
        errors.push("names no metric".into());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Checks a LogQL query (log or metric) against the catalogue.
pub fn check_logql(q: &str, cat: &Catalogue) -> Result<(), String> {
    let toks = tokens(&expand(q), false)?;
    let mut errors = Vec::new();
    let mut selectors = 0;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct(p) if p == "{" => {
                selectors += 1;
                let end = closing(&toks, i)?;
                for l in matcher_labels(&toks, i, end)? {
                    if !cat.loki_labels.contains(&l) {
                        errors.push(format!(
                            "stream selector names {l}, not a label the agent sets ({:?})",
                            cat.loki_labels
                        ));
                    }
                }
                i = end;
                // The pipeline.
                while i < toks.len() {
                    match (&toks[i], toks.get(i + 1), toks.get(i + 2)) {
                        (Tok::Punct(p), Some(Tok::Str), _)
                            if ["|=", "!=", "|~", "!~"].contains(&p.as_str()) =>
                        {
                            i += 2
                        }
                        (Tok::Punct(p), Some(Tok::Ident(name)), Some(Tok::Punct(op)))
                            if p == "|"
                                && ["=", "!=", "=~", "!~", ">", "<", ">=", "<=", "=="]
                                    .contains(&op.as_str()) =>
                        {
                            if !cat.loki_metadata.contains(name) {
                                errors.push(format!("label filter on {name}, not structured metadata the agent sends ({:?})", cat.loki_metadata));
                            }
                            i += 4;
                        }
                        (Tok::Punct(p), Some(Tok::Ident(stage)), _) if p == "|" => {
                            errors.push(format!("pipeline stage | {stage}: the dashboards filter on labels and structured metadata only"));
                            i += 2;
                        }
                        _ => break,
                    }
                }
            }
            Tok::Punct(p) if p == "[" => i = closing(&toks, i)?,
            Tok::Ident(kw) if kw == "by" || kw == "without" => {
                let (labels, end) = label_list(&toks, i + 1)?;
                for l in labels {
                    if !cat.loki_labels.contains(&l) && !cat.loki_metadata.contains(&l) {
                        errors.push(format!("{kw} ({l}): not a label the agent sets"));
                    }
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    if selectors == 0 {
        errors.push("no stream selector".into());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

const TRACEQL_WORDS: &[&str] = &[
    "name",
    "status",
    "kind",
    "duration",
    "statusMessage",
    "rootName",
    "rootServiceName",
    "traceDuration",
    "select",
    "nil",
    "true",
    "false",
    "ok",
    "error",
    "unset",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
    "and",
    "or",
];

/// Checks a TraceQL query's attribute names against the exec span's.
pub fn check_traceql(q: &str, cat: &Catalogue) -> Result<(), String> {
    let toks = tokens(q, true)?;
    let mut errors = Vec::new();
    let mut spansets = 0;
    for t in &toks {
        match t {
            Tok::Punct(p) if p == "{" => spansets += 1,
            Tok::Ident(id) => {
                if let Some(key) = id.strip_prefix("resource.") {
                    if !cat.span_resource.contains(key) {
                        errors.push(format!(
                            "resource.{key}: not on the exec span's resource ({:?})",
                            cat.span_resource
                        ));
                    }
                } else if let Some(key) = id.strip_prefix("span.") {
                    if !cat.span_attributes.contains(key) {
                        errors.push(format!(
                            "span.{key}: not an exec span attribute ({:?})",
                            cat.span_attributes
                        ));
                    }
                } else if !TRACEQL_WORDS.contains(&id.as_str()) {
                    errors.push(format!(
                        "{id}: scope it (span. or resource.) or use an intrinsic"
                    ));
                }
            }
            _ => {}
        }
    }
    if spansets == 0 {
        errors.push("no spanset".into());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// `label_values(LABEL)` or `label_values(QUERY, LABEL)`: the query (if any)
/// and the label.
fn label_values(q: &str) -> Result<(Option<&str>, &str), String> {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("a variable query other than label_values(...): {q}"))?;
    match inner.rsplit_once(',') {
        Some((query, label)) => Ok((Some(query.trim()), label.trim())),
        None => Ok((None, inner.trim())),
    }
}

pub fn check_variable(ds: &str, q: &str, cat: &Catalogue) -> Result<(), String> {
    let (query, label) = label_values(q)?;
    match ds {
        "loki" => {
            if !cat.loki_labels.contains(label) {
                return Err(format!("{label} is not a label the agent sets"));
            }
            query.map_or(Ok(()), |s| check_logql(s, cat))
        }
        "prometheus" => match query {
            Some(s) => {
                check_promql(s, &cat.prom)?;
                let name = s.split('{').next().unwrap_or(s).trim();
                if cat.prom.get(name).is_some_and(|l| l.contains(label)) {
                    Ok(())
                } else {
                    Err(format!("{name} has no label {label}"))
                }
            }
            None if cat.prom.values().any(|l| l.contains(label)) => Ok(()),
            None => Err(format!("no metric has the label {label}")),
        },
        other => Err(format!("a variable on datasource {other}")),
    }
}

fn uid_of(v: &serde_json::Value) -> Option<&str> {
    v.get("datasource")?.get("uid")?.as_str()
}

/// Every query of every panel and variable of one dashboard: (where, result).
pub fn check_dashboard(board: &serde_json::Value, cat: &Catalogue) -> Vec<String> {
    let mut problems = Vec::new();
    let mut stack: Vec<&serde_json::Value> =
        board["panels"].as_array().into_iter().flatten().collect();
    let mut queries = 0;
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().into_iter().flatten());
        let title = panel["title"].as_str().unwrap_or("?");
        if panel["type"] == "row" || panel["type"] == "text" {
            continue;
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no queries"));
        }
        for t in &targets {
            let ds = uid_of(t).or_else(|| uid_of(panel)).unwrap_or("");
            let result = match ds {
                "loki" => t["expr"].as_str().map(|q| check_logql(q, cat)),
                "prometheus" => t["expr"].as_str().map(|q| check_promql(q, &cat.prom)),
                "tempo" => t["query"].as_str().map(|q| check_traceql(q, cat)),
                other => Some(Err(format!("datasource {other:?} is none of the stack's"))),
            }
            .unwrap_or_else(|| Err("no query text".into()));
            queries += 1;
            if let Err(e) = result {
                problems.push(format!("panel {title:?}: {t}: {e}"));
            }
        }
    }
    for v in board["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or("?");
        let q = v["query"]
            .as_str()
            .or_else(|| v["query"]["query"].as_str())
            .unwrap_or("");
        queries += 1;
        if let Err(e) = check_variable(uid_of(v).unwrap_or(""), q, cat) {
            problems.push(format!("variable {name}: {q}: {e}"));
        }
    }
    if queries == 0 {
        problems.push("no queries at all".into());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checker itself refuses what the agent does not send (so a green
    /// run means something).
    #[test]
    fn the_checker_refuses_names_the_agent_does_not_send() {
        let mut cat = Catalogue::default();
        cat.loki_labels
            .extend(["job".to_string(), "level".to_string()]);
        cat.loki_metadata.insert("trace_id".into());
        cat.prom.insert(
            "system_cpu_time_seconds_total".into(),
            ["cpu_mode", "host_name", "job"].map(String::from).into(),
        );
        cat.prom.insert(
            "system_cpu_logical_count".into(),
            ["host_name", "job"].map(String::from).into(),
        );
        cat.span_resource.insert("service.name".into());
        cat.span_attributes.insert("process.exit.code".into());
        let ok = |r: Result<(), String>| assert_eq!(r, Ok(()));
        let bad = |r: Result<(), String>, what: &str| {
            let e = r.expect_err(what);
            assert!(e.contains(what), "{e}");
        };
        ok(check_logql(
            r#"sum by (level) (count_over_time({job="x"} | trace_id="y" [$__auto]))"#,
            &cat,
        ));
        bad(check_logql(r#"{pod="x"}"#, &cat), "pod");
        bad(check_logql(r#"{job="x"} | span_id="y""#, &cat), "span_id");
        bad(check_logql(r#"{job="x"} | json | msg="y""#, &cat), "json");
        bad(
            check_logql(
                r#"sum by (filename) (count_over_time({job="x"} [5m]))"#,
                &cat,
            ),
            "filename",
        );
        ok(check_promql(
            r#"sum by (cpu_mode) (rate(system_cpu_time_seconds_total{host_name=~"$host"}[$__rate_interval])) / scalar(sum(system_cpu_logical_count))"#,
            &cat.prom,
        ));
        bad(
            check_promql("rate(system_cpu_time_total[5m])", &cat.prom),
            "system_cpu_time_total",
        );
        bad(
            check_promql(r#"system_cpu_logical_count{cpu_mode="idle"}"#, &cat.prom),
            "cpu_mode",
        );
        bad(
            check_promql("sum by (cpu_mode) (system_cpu_logical_count)", &cat.prom),
            "cpu_mode",
        );
        ok(check_traceql(
            r#"{resource.service.name="x" && name="x"} | select(span.process.exit.code)"#,
            &cat,
        ));
        bad(
            check_traceql(r#"{resource.host.name="x"}"#, &cat),
            "host.name",
        );
        bad(check_traceql(r#"{span.wisp.cost="x"}"#, &cat), "wisp.cost");
        ok(check_variable(
            "loki",
            r#"label_values({job=~".+"}, level)"#,
            &cat,
        ));
        bad(check_variable("loki", "label_values(pod)", &cat), "pod");
        ok(check_variable(
            "prometheus",
            "label_values(system_cpu_time_seconds_total, cpu_mode)",
            &cat,
        ));
        bad(
            check_variable(
                "prometheus",
                "label_values(system_cpu_logical_count, cpu_mode)",
                &cat,
            ),
            "cpu_mode",
        );
    }
}
