//! Host metrics from parsed figures, and whole samples from a fake `/proc`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Metric, NumberDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::build::FsUsage;
use super::build::{cpu_metrics, memory_metrics};
use super::*;
use crate::procfs::{parse_meminfo, parse_stat};

// Captured from a 2-CPU VM (Linux 6.x); see tests/fixtures/proc/.
const STAT: &str = include_str!("../../../tests/fixtures/proc/stat");
const LOADAVG: &str = include_str!("../../../tests/fixtures/proc/loadavg");
const MEMINFO: &str = include_str!("../../../tests/fixtures/proc/meminfo");
const UPTIME: &str = include_str!("../../../tests/fixtures/proc/uptime");
const DISKSTATS: &str = include_str!("../../../tests/fixtures/proc/diskstats");
const NET_DEV: &str = include_str!("../../../tests/fixtures/proc/net_dev");

fn value(p: &NumberDataPoint) -> f64 {
    match p.value {
        Some(number_data_point::Value::AsInt(v)) => v as f64,
        Some(number_data_point::Value::AsDouble(v)) => v,
        None => f64::NAN,
    }
}

fn attr<'a>(p: &'a NumberDataPoint, key: &str) -> &'a str {
    p.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match &kv.value.as_ref()?.value {
            Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

fn points(m: &Metric) -> &[NumberDataPoint] {
    match &m.data {
        Some(metric::Data::Sum(s)) => &s.data_points,
        Some(metric::Data::Gauge(g)) => &g.data_points,
        _ => &[],
    }
}

#[test]
fn used_memory_is_total_minus_available_and_falls_back_without_it() {
    let m = parse_meminfo(MEMINFO).unwrap();
    let metrics = memory_metrics(&m, 1, 2);
    let usage = &metrics[0];
    assert_eq!(usage.name, "system.memory.usage");
    let used = points(usage)
        .iter()
        .find(|p| attr(p, "system.memory.state") == "used")
        .unwrap();
    assert_eq!(value(used), ((24684092 - 23835116) * 1024) as f64);
    assert_eq!(used.start_time_unix_nano, 1);
    assert_eq!(used.time_unix_nano, 2);
    // No swap: no paging metric.
    assert!(metrics.iter().all(|m| m.name != "system.paging.usage"));

    let old = parse_meminfo(
        "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\nSwapTotal: 10 kB\nSwapFree: 4 kB\n",
    )
    .unwrap();
    let metrics = memory_metrics(&old, 0, 0);
    let used = points(&metrics[0])
        .iter()
        .find(|p| attr(p, "system.memory.state") == "used")
        .map(value);
    assert_eq!(used, Some(600.0 * 1024.0));
    let paging = metrics
        .iter()
        .find(|m| m.name == "system.paging.usage")
        .unwrap();
    let swap_used = points(paging)
        .iter()
        .find(|p| attr(p, "system.paging.state") == "used")
        .map(value);
    assert_eq!(swap_used, Some(6.0 * 1024.0));
}

#[test]
fn filesystem_usage_from_statvfs() {
    // 100 blocks of 4 KiB, 30 free of which 20 for users.
    let u = FsUsage::from_statvfs(100, 30, 20, 4096).unwrap();
    assert_eq!(u.used, 70 * 4096);
    assert_eq!(u.free, 20 * 4096);
    assert_eq!(u.reserved, 10 * 4096);
    assert!((u.utilization() - 70.0 / 90.0).abs() < 1e-9);
    assert_eq!(FsUsage::from_statvfs(0, 0, 0, 4096), None);
    // Inconsistent figures are clamped, not underflowed.
    let u = FsUsage::from_statvfs(10, 50, 60, 1).unwrap();
    assert_eq!((u.used, u.free, u.reserved), (0, 10, 0));
}

#[test]
fn cpu_time_is_in_seconds_per_mode_from_boot() {
    let s = parse_stat(STAT).unwrap();
    let metrics = cpu_metrics(&s, 100.0, 7, 9);
    let cpu = &metrics[0];
    assert_eq!(
        (cpu.name.as_str(), cpu.unit.as_str()),
        ("system.cpu.time", "s")
    );
    let Some(metric::Data::Sum(sum)) = &cpu.data else {
        panic!("a sum")
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    let modes: Vec<(&str, f64)> = sum
        .data_points
        .iter()
        .map(|p| (attr(p, "cpu.mode"), value(p)))
        .collect();
    assert_eq!(
        modes,
        vec![
            ("user", 3132.35),
            ("nice", 255.83),
            ("system", 591.6),
            ("idle", 1696.83),
            ("iowait", 22.32),
            ("interrupt", 4.47),
            ("steal", 1.43),
        ]
    );
    assert!(sum.data_points.iter().all(|p| p.start_time_unix_nano == 7));
    assert_eq!(metrics[1].name, "system.cpu.logical.count");
}

fn fake_proc(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn names(metrics: &[Metric]) -> Vec<&str> {
    metrics.iter().map(|m| m.name.as_str()).collect()
}

#[test]
fn a_sample_from_a_whole_proc_names_every_metric() {
    let dir = fake_proc(&[
        ("stat", STAT),
        ("loadavg", LOADAVG),
        ("meminfo", MEMINFO),
        ("uptime", UPTIME),
        ("diskstats", DISKSTATS),
        ("net/dev", NET_DEV),
        // `/` exists everywhere, whatever its device.
        ("self/mounts", "/dev/vda / ext4 rw 0 0\n"),
    ]);
    let mut c = Collector::new(dir.path().to_path_buf());
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let metrics = c.collect(now);
    assert_eq!(
        names(&metrics),
        vec![
            "system.uptime",
            "system.cpu.time",
            "system.cpu.logical.count",
            "system.cpu.load_average.1m",
            "system.cpu.load_average.5m",
            "system.cpu.load_average.15m",
            "system.memory.usage",
            "system.memory.limit",
            "system.memory.utilization",
            "system.filesystem.usage",
            "system.filesystem.utilization",
            "system.disk.io",
            "system.disk.operations",
            "system.network.io",
            "system.network.errors",
            "system.network.packet.dropped",
        ]
    );
    for m in &metrics {
        for p in points(m) {
            assert_eq!(p.time_unix_nano, 1_800_000_000_000_000_000, "{}", m.name);
            if matches!(m.data, Some(metric::Data::Sum(_))) {
                assert_eq!(
                    p.start_time_unix_nano, 1_795_945_397_000_000_000,
                    "{}",
                    m.name
                );
            }
        }
    }
    let request = request(&Resource::default(), metrics, Vec::new());
    let bytes = request.encode_to_vec();
    assert_eq!(
        ExportMetricsServiceRequest::decode(&bytes[..]).unwrap(),
        request
    );
}

#[test]
fn missing_or_odd_files_skip_their_metrics_only() {
    let dir = fake_proc(&[
        ("stat", "nonsense\n"),
        ("loadavg", "x y z\n"),
        ("meminfo", MEMINFO),
        ("net/dev", "\u{0}\u{1}garbage"),
        ("diskstats", "1 2 3\n"),
    ]);
    let mut c = Collector::new(dir.path().to_path_buf());
    let metrics = c.collect(SystemTime::now());
    assert_eq!(
        names(&metrics),
        vec![
            "system.memory.usage",
            "system.memory.limit",
            "system.memory.utilization"
        ]
    );
    // Each problem is told once.
    assert_eq!(c.told.len(), 6, "{:?}", c.told);
    let again = c.collect(SystemTime::now());
    assert_eq!(again.len(), 3);
    let empty = tempfile::tempdir().unwrap();
    assert!(Collector::new(empty.path().to_path_buf())
        .collect(SystemTime::now())
        .is_empty());
}

#[test]
fn a_proc_file_over_the_read_cap_skips_its_metrics_instead_of_being_read_whole() {
    // Valid lines past 1 MiB: read whole, they would report `/`.
    let line = "/dev/vda / ext4 rw 0 0\n";
    let huge = line.repeat(crate::procfs::MAX_FILE_BYTES as usize / line.len() + 1);
    let dir = fake_proc(&[("self/mounts", &huge), ("uptime", UPTIME)]);
    let mut c = Collector::new(dir.path().to_path_buf());
    let metrics = c.collect(SystemTime::now());
    assert_eq!(names(&metrics), vec!["system.uptime"]);
    assert!(c.told.contains(&collect::Source::Mounts), "{:?}", c.told);
}

#[test]
fn the_agents_readings_become_sums_and_gauges_with_their_labels_and_number_types() {
    use crate::metric::Reading;
    use crate::metric::{Kind, Sample, Value};
    let readings = [
        Reading {
            name: "wisp_spool_records_appended_total",
            kind: Kind::Counter,
            help: "Records appended.",
            samples: vec![
                Sample {
                    labels: vec![("spool", "loki".into())],
                    value: Value::Int(7),
                },
                Sample {
                    labels: vec![("spool", "otlp".into())],
                    value: Value::Int(u64::MAX),
                },
            ],
        },
        Reading {
            name: "process_resident_memory_bytes",
            kind: Kind::Gauge,
            help: "Resident memory size in bytes.",
            samples: vec![Sample {
                labels: Vec::new(),
                value: Value::Float(0.5),
            }],
        },
    ];
    let metrics = super::agent::to_otlp(&readings, 10, 20);
    let counter = &metrics[0];
    assert_eq!(counter.name, "wisp_spool_records_appended_total");
    assert_eq!(counter.unit, "");
    assert_eq!(counter.description, "Records appended.");
    let Some(metric::Data::Sum(sum)) = &counter.data else {
        panic!("a counter is a sum: {counter:?}")
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    let p = &sum.data_points;
    assert_eq!(attr(&p[0], "spool"), "loki");
    assert_eq!(p[0].value, Some(number_data_point::Value::AsInt(7)));
    // Past i64, the count saturates rather than wrapping negative.
    assert_eq!(p[1].value, Some(number_data_point::Value::AsInt(i64::MAX)));
    assert!(p
        .iter()
        .all(|p| p.start_time_unix_nano == 10 && p.time_unix_nano == 20));
    let gauge = &metrics[1];
    let Some(metric::Data::Gauge(g)) = &gauge.data else {
        panic!("a gauge is a gauge: {gauge:?}")
    };
    assert_eq!(
        g.data_points[0].value,
        Some(number_data_point::Value::AsDouble(0.5))
    );
    assert_eq!(g.data_points[0].time_unix_nano, 20);

    // One request: the host's scope left out when it has nothing, the
    // agent's under `wisp-agent`.
    let r = request(&Resource::default(), Vec::new(), metrics);
    let scopes: Vec<_> = r.resource_metrics[0]
        .scope_metrics
        .iter()
        .map(|s| s.scope.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(scopes, [AGENT_SCOPE]);
}
