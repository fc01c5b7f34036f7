//! OTLP building blocks shared by the host's metrics ([`super::build`]) and
//! the agent's own ([`super::agent`]): data points, sums, gauges, and a time
//! in nanoseconds since the epoch.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint, Sum,
};

/// `t` in nanoseconds since the epoch (0 before it, saturating past u64).
pub(super) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn int_point(
    attributes: Vec<KeyValue>,
    v: i64,
    start: u64,
    now: u64,
) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsInt(v)),
        ..Default::default()
    }
}

pub(super) fn double_point(
    attributes: Vec<KeyValue>,
    v: f64,
    start: u64,
    now: u64,
) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

pub(super) fn sum(
    name: &str,
    description: &str,
    unit: &str,
    monotonic: bool,
    data_points: Vec<NumberDataPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: monotonic,
        })),
        ..Default::default()
    }
}

pub(super) fn gauge(
    name: &str,
    description: &str,
    unit: &str,
    data_points: Vec<NumberDataPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge { data_points })),
        ..Default::default()
    }
}
