//! OTLP → Prometheus names, as Prometheus 3's OTLP receiver makes them with
//! `translation_strategy: UnderscoreEscapingWithSuffixes` (its otlptranslator
//! library: `normalizeName`, `buildUnitSuffixes`, `LabelNamer`), and the
//! labels a series gets from its data point attributes and resource under the
//! stack's configuration (`prometheus/prometheus.yaml`, the collector's
//! `exported_job` rename).

use std::collections::{BTreeMap, BTreeSet};

use super::read;

/// An OTLP metric's type, as far as naming goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpKind {
    Gauge,
    MonotonicSum,
    NonMonotonicSum,
}

fn unit_word(unit: &str) -> String {
    let mapped = match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "",
        "%" => "percent",
        other => other,
    };
    clean(mapped)
}

fn per_unit_word(unit: &str) -> String {
    let mapped = match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    };
    clean(mapped)
}

/// Characters outside `[a-zA-Z0-9:]` become `_`, runs of `_` one, no leading `_`.
fn clean(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_ascii_alphanumeric() || c == ':' {
            c
        } else {
            '_'
        };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    out.trim_start_matches('_').to_string()
}

/// The Prometheus name of an OTLP metric.
pub fn prom_name(name: &str, unit: &str, kind: OtlpKind) -> String {
    let mut tokens: Vec<String> = name
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let (main, per) = match unit.split_once('/') {
        Some((m, p)) => (m.trim(), Some(p.trim())),
        None => (unit.trim(), None),
    };
    let braces = |u: &str| u.contains('{') || u.contains('}');
    let main = if main.is_empty() || braces(main) {
        String::new()
    } else {
        unit_word(main)
    };
    let per = match per {
        Some(p) if !p.is_empty() && !braces(p) => format!("per_{}", per_unit_word(p)),
        _ => String::new(),
    };
    if !main.is_empty() && !tokens.contains(&main) {
        tokens.push(main.trim_end_matches('_').to_string());
    }
    if !per.is_empty() && !tokens.contains(&per) {
        tokens.push(per);
    }
    if kind == OtlpKind::MonotonicSum {
        tokens.retain(|t| t != "total");
        tokens.push("total".into());
    }
    if unit == "1" && kind == OtlpKind::Gauge {
        tokens.retain(|t| t != "ratio");
        tokens.push("ratio".into());
    }
    let joined = tokens.join("_");
    if joined.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{joined}")
    } else {
        joined
    }
}

/// The Prometheus label name of an OTLP attribute key.
pub fn label_name(key: &str) -> String {
    let s: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("key_{s}")
    } else if s.starts_with('_') && !s.starts_with("__") {
        format!("key{s}")
    } else {
        s
    }
}

/// What the stack's configuration decides about labels.
pub struct Translation {
    /// `otlp.promote_resource_attributes` of prometheus.yaml.
    pub promoted: Vec<String>,
    /// The collector renames a data point attribute `job` to `exported_job`.
    pub renames_job: bool,
}

impl Translation {
    pub fn from_stack() -> Translation {
        let prom = read("prometheus/prometheus.yaml");
        assert!(
            prom.contains("translation_strategy: UnderscoreEscapingWithSuffixes"),
            "prometheus.yaml must keep the translation this test implements"
        );
        let mut promoted = Vec::new();
        let mut inside = false;
        for line in prom.lines() {
            if line.trim() == "promote_resource_attributes:" {
                inside = true;
                continue;
            }
            if inside {
                match line.trim().strip_prefix("- ") {
                    Some(attr) => promoted.push(attr.trim().to_string()),
                    None if line.trim().is_empty() || line.trim().starts_with('#') => {}
                    None => inside = false,
                }
            }
        }
        assert!(
            !promoted.is_empty(),
            "no promote_resource_attributes in prometheus.yaml"
        );
        let collector = read("otelcol/config.yaml");
        let renames_job = collector.contains(
            r#"set(datapoint.attributes["exported_job"], datapoint.attributes["job"]) where datapoint.attributes["job"] != nil"#,
        ) && collector
            .contains(r#"delete_key(datapoint.attributes, "job") where datapoint.attributes["job"] != nil"#)
            && collector.contains("processors: [transform/exported_job]");
        Translation {
            promoted,
            renames_job,
        }
    }

    /// The labels of a series with these data point attribute keys and this
    /// resource, as Prometheus stores it.
    pub fn prom_labels<'a>(
        &self,
        point_keys: impl IntoIterator<Item = &'a String>,
        resource: &BTreeMap<String, String>,
    ) -> BTreeSet<String> {
        let mut labels: BTreeSet<String> = point_keys
            .into_iter()
            .map(|k| match k.as_str() {
                "job" if self.renames_job => "exported_job".to_string(),
                k => label_name(k),
            })
            .collect();
        for attr in &self.promoted {
            if resource.contains_key(attr) {
                labels.insert(label_name(attr));
            }
        }
        // service.name (and service.namespace) become `job`, over any `job`
        // attribute; service.instance.id becomes `instance`.
        if resource.contains_key("service.name") {
            labels.insert("job".into());
        }
        if resource.contains_key("service.instance.id") {
            labels.insert("instance".into());
        }
        labels
    }
}

#[test]
fn otlp_names_translate_as_prometheus_does() {
    use OtlpKind::*;
    for (name, unit, kind, want) in [
        (
            "system.cpu.time",
            "s",
            MonotonicSum,
            "system_cpu_time_seconds_total",
        ),
        ("system.uptime", "s", Gauge, "system_uptime_seconds"),
        (
            "system.cpu.logical.count",
            "{cpu}",
            NonMonotonicSum,
            "system_cpu_logical_count",
        ),
        (
            "system.cpu.load_average.1m",
            "{thread}",
            Gauge,
            "system_cpu_load_average_1m",
        ),
        (
            "system.memory.usage",
            "By",
            NonMonotonicSum,
            "system_memory_usage_bytes",
        ),
        (
            "system.memory.utilization",
            "1",
            Gauge,
            "system_memory_utilization_ratio",
        ),
        (
            "system.disk.io",
            "By",
            MonotonicSum,
            "system_disk_io_bytes_total",
        ),
        (
            "system.disk.operations",
            "{operation}",
            MonotonicSum,
            "system_disk_operations_total",
        ),
        (
            "system.network.packet.dropped",
            "{packet}",
            MonotonicSum,
            "system_network_packet_dropped_total",
        ),
        (
            "http.server.request.duration",
            "s",
            Gauge,
            "http_server_request_duration_seconds",
        ),
        ("requests", "1/s", MonotonicSum, "requests_per_second_total"),
        // Contract B: the agent's own families keep their /metrics names.
        (
            "wisp_file_lines_read_total",
            "",
            MonotonicSum,
            "wisp_file_lines_read_total",
        ),
        (
            "wisp_spool_fsync_seconds_total",
            "",
            MonotonicSum,
            "wisp_spool_fsync_seconds_total",
        ),
        (
            "wisp_spool_bytes_buffered",
            "",
            Gauge,
            "wisp_spool_bytes_buffered",
        ),
        (
            "process_resident_memory_bytes",
            "",
            Gauge,
            "process_resident_memory_bytes",
        ),
    ] {
        assert_eq!(prom_name(name, unit, kind), want, "{name} ({unit})");
    }
    for (key, want) in [
        ("cpu.mode", "cpu_mode"),
        (
            "system.filesystem.mountpoint",
            "system_filesystem_mountpoint",
        ),
        ("host.name", "host_name"),
        ("1st", "key_1st"),
        ("_x", "key_x"),
    ] {
        assert_eq!(label_name(key), want);
    }
}
