//! Every metric family `run` can serve on `/metrics` (and push over OTLP): the
//! tables of the stages it registers, in one list, so that the reference
//! (`docs/REFERENCE.md`) and the host stack's translation can be checked
//! against them.

/// Every family `/metrics` can serve, with its type, in the order served
/// ([`crate::metric::ORDER`]): the tables the stages register, so the
/// reference can be checked against them.
pub fn metric_families() -> Vec<(&'static str, &'static str)> {
    use crate::metric::{Family, Kind};
    fn of<T>(f: &[Family<T>]) -> impl Iterator<Item = (&'static str, Kind)> + '_ {
        f.iter().map(|f| (f.name, f.kind))
    }
    let (spool_a, spool_b) = crate::spool::SpoolCountersSnapshot::split();
    of(crate::discovery::metrics::FAMILIES)
        .chain(of(super::reload::FAMILIES))
        .chain(of(crate::source::file::TailStats::FAMILIES))
        .chain(of(crate::parse::ParseCountersSnapshot::FAMILIES))
        .chain(of(spool_a))
        .chain(of(crate::spool::SPOOL_MAX_BYTES))
        .chain(of(spool_b))
        .chain(of(crate::sink::loki::LokiCounters::FAMILIES))
        .chain(of(crate::tap::TapCounters::FAMILIES))
        .chain(of(crate::source::otlp::ReceiverCounters::FAMILIES))
        .chain(of(crate::sink::otlp::OtlpCounters::FAMILIES))
        .chain(of(crate::listen::ListenerCounters::FAMILIES))
        .chain(of(crate::source::exec::metrics::ExecCounters::FAMILIES))
        .chain(of(crate::procfs::ProcessStats::FAMILIES))
        .map(|(name, kind)| (name, kind.as_str()))
        .collect()
}
