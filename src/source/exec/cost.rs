//! The cost a run's command reported of itself: a captured line that is a JSON
//! object with a top-level number `total_cost_usd` (else `cost_usd`), as Claude
//! Code's `-p --output-format json` and `stream-json` print in their result line.
//! The daemon looks at every line of a run; the last cost seen is the run's.
//!
//! Cheap on the hot path: a line without the bytes `cost_usd` (nearly all) costs
//! one `memmem` scan and is never parsed. A line cut into 64 KiB pieces by `exec`
//! ([`super::MAX_PENDING_LINE`]) is no JSON object in any piece: its cost is not
//! seen.

use serde::Deserialize;

/// The two fields looked at; every other field is skipped unparsed into values.
#[derive(Deserialize)]
struct Reported {
    total_cost_usd: Option<serde_json::Value>,
    cost_usd: Option<serde_json::Value>,
}

/// The largest cost one run may report, in US dollars: a bigger number is no
/// cost but noise (or an attempt to make the job's counter infinite), and is
/// not counted. A million runs at this bound still sum to a finite counter.
pub const MAX_RUN_COST_USD: f64 = 1e9;

/// The cost `line` reports, in US dollars: a finite number, not negative (a
/// counter only grows), at most [`MAX_RUN_COST_USD`].
pub fn reported_cost(line: &str) -> Option<f64> {
    memchr::memmem::find(line.as_bytes(), b"cost_usd")?;
    // A struct also deserializes from a JSON array: only objects count.
    if !line.trim_start().starts_with('{') {
        return None;
    }
    let r: Reported = serde_json::from_str(line).ok()?;
    let number = |v: Option<serde_json::Value>| v.and_then(|v| v.as_f64());
    number(r.total_cost_usd)
        .or_else(|| number(r.cost_usd))
        .filter(|c| c.is_finite() && (0.0..=MAX_RUN_COST_USD).contains(c))
}

/// The cost of the last line of `lines` that reports one.
pub fn last_reported<'a>(lines: impl IntoIterator<Item = &'a str>) -> Option<f64> {
    lines.into_iter().filter_map(reported_cost).last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claude_result_line_reports_its_total_cost() {
        let line = r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":2817,"num_turns":1,"result":"done","session_id":"0b7","total_cost_usd":0.0342,"usage":{"input_tokens":4,"cost_usd":9}}"#;
        assert_eq!(reported_cost(line), Some(0.0342));
        assert_eq!(
            reported_cost(r#"  {"cost_usd":1.5,"result":"x"}"#),
            Some(1.5),
            "the older name"
        );
        assert_eq!(
            reported_cost(r#"{"total_cost_usd":"n/a","cost_usd":2}"#),
            Some(2.0),
            "total_cost_usd must be a number to win"
        );
    }

    #[test]
    fn lines_that_only_mention_a_cost_report_none() {
        for line in [
            "the cost_usd was high",
            r#"{"usage":{"cost_usd":3}}"#,
            r#"[0.5, "cost_usd"]"#,
            r#"{"cost_usd":-1}"#,
            r#"{"cost_usd":"1"}"#,
            r#"{"cost_usd":1"#,
            r#"{"level":30,"msg":"hello"}"#,
            r#"{"cost_usd":1,"cost_usd":2}"#,
        ] {
            assert_eq!(reported_cost(line), None, "{line}");
        }
    }

    #[test]
    fn a_cost_too_large_to_be_one_is_not_counted() {
        assert_eq!(reported_cost(r#"{"total_cost_usd":1e308}"#), None);
        assert_eq!(reported_cost(r#"{"total_cost_usd":-1}"#), None);
        assert_eq!(reported_cost(r#"{"total_cost_usd":1e9}"#), Some(1e9));
    }

    #[test]
    fn the_last_reported_cost_counts() {
        let lines = [
            r#"{"cost_usd":1}"#,
            "plain",
            r#"{"total_cost_usd":2.5}"#,
            "x",
        ];
        assert_eq!(last_reported(lines), Some(2.5));
        assert_eq!(last_reported(["a", "b"]), None);
    }
}
