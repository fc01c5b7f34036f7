//! The daemon's count of `exec` runs, served on `/metrics` (and pushed over
//! OTLP with the agent's other families): runs by job and exit status, their
//! wall time, and the cost their commands reported ([`super::cost`]).
//!
//! A run is counted when the daemon makes its span ([`super::server`]), so a
//! run replayed or flushed later is counted once, like its span, and a run
//! whose `exec` died has `exit_code="unknown"`.
//!
//! Bounds: at most `agent.max_label_values` jobs are told apart (a further
//! `--name` counts as `other`, as promoted labels do), and an exit status
//! outside 0-255 (no shell gives one) is `other`: the label sets stay within
//! (jobs + 1) × 258.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::metric::{
    counter, encode, labelled, load, names, one, single, Family, Registry, Sample,
};
use crate::parse::labels::OVERFLOW_VALUE;

/// What one job's runs add up to.
#[derive(Debug, Default)]
struct JobRuns {
    /// By `exit_code` label value.
    runs: BTreeMap<String, u64>,
    seconds: f64,
    /// `None` until a run of the job reported a cost.
    cost_usd: Option<f64>,
}

/// The exec runs the daemon handled; see the module doc.
#[derive(Debug)]
pub struct ExecCounters {
    max_jobs: usize,
    jobs: Mutex<BTreeMap<String, JobRuns>>,
    /// Runs whose lines got `job` and label values `other` (their user's
    /// label sets were at the bound, see the exec server).
    relabelled: AtomicU64,
}

/// A run as counted.
pub struct CountedRun<'a> {
    pub job: &'a str,
    /// `None`: its `exec` died before recording the end.
    pub exit: Option<i32>,
    pub seconds: f64,
    pub cost_usd: Option<f64>,
}

impl ExecCounters {
    /// Registers the exec families ([`ExecCounters::FAMILIES`]).
    pub fn register(self: Arc<Self>, metrics: &mut Registry) {
        metrics.add("exec", names(Self::FAMILIES), move |out| {
            encode(out, Self::FAMILIES, &single(self.as_ref()))
        });
    }

    /// Counters telling at most `max_jobs` jobs apart (`agent.max_label_values`).
    pub fn new(max_jobs: usize) -> ExecCounters {
        ExecCounters {
            max_jobs: max_jobs.max(1),
            jobs: Mutex::default(),
            relabelled: AtomicU64::new(0),
        }
    }

    /// Counts a run whose lines are shipped as `other`.
    pub fn relabelled(&self) {
        self.relabelled.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one handled run.
    pub fn count(&self, run: &CountedRun<'_>) {
        let Ok(mut jobs) = self.jobs.lock() else {
            return;
        };
        let job = if jobs.contains_key(run.job) || jobs.len() < self.max_jobs {
            run.job
        } else {
            OVERFLOW_VALUE
        };
        let counts = jobs.entry(job.to_string()).or_default();
        let exit = match run.exit {
            Some(code @ 0..=255) => code.to_string(),
            Some(_) => OVERFLOW_VALUE.to_string(),
            None => "unknown".to_string(),
        };
        *counts.runs.entry(exit).or_insert(0) += 1;
        if run.seconds.is_finite() && run.seconds > 0.0 {
            counts.seconds += run.seconds;
        }
        if let Some(cost) = run.cost_usd.filter(|c| c.is_finite() && *c >= 0.0) {
            // Served as a number a scraper reads: it never becomes +Inf.
            let sum = counts.cost_usd.get_or_insert(0.0);
            *sum = (*sum + cost).min(f64::MAX);
        }
    }

    /// One sample per job (and exit status) from `each`.
    fn samples(&self, each: impl Fn(&str, &JobRuns, &mut Vec<Sample>)) -> Vec<Sample> {
        let mut out = Vec::new();
        if let Ok(jobs) = self.jobs.lock() {
            for (job, runs) in jobs.iter() {
                each(job, runs, &mut out);
            }
        }
        out
    }

    /// The exec families: the one place their names and help live.
    pub(crate) const FAMILIES: &'static [Family<ExecCounters>] = &[
        counter(
            "wisp_exec_runs_total",
            "wisp-agent exec runs handled, by job (--name) and exit status (128+N for signal N; unknown when the exec died before recording the end).",
            |c| {
                c.samples(|job, runs, out| {
                    for (exit, n) in &runs.runs {
                        out.push(labelled(
                            [("job", owned(job)), ("exit_code", owned(exit))],
                            *n,
                        ));
                    }
                })
            },
        ),
        counter(
            "wisp_exec_run_seconds_total",
            "Wall time of the exec runs handled, by job.",
            |c| c.samples(|job, runs, out| out.push(labelled([("job", owned(job))], runs.seconds))),
        ),
        counter(
            "wisp_exec_cost_usd_total",
            "Cost in US dollars the exec runs' commands reported (a JSON output line's total_cost_usd, else cost_usd; the last one of a run), by job; absent for a job none of whose runs reported one.",
            |c| {
                c.samples(|job, runs, out| {
                    if let Some(cost) = runs.cost_usd {
                        out.push(labelled([("job", owned(job))], cost));
                    }
                })
            },
        ),
        counter(
            "wisp_exec_runs_relabelled_total",
            "exec runs whose lines were shipped with job and --label values \"other\": their user had used agent.max_label_values distinct label sets (--name and --label values) already.",
            |c| one(load(&c.relabelled)),
        ),
    ];
}

fn owned(s: &str) -> Cow<'static, str> {
    Cow::Owned(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::Value;

    fn run(job: &str, exit: Option<i32>, cost_usd: Option<f64>) -> CountedRun<'_> {
        CountedRun {
            job,
            exit,
            seconds: 1.5,
            cost_usd,
        }
    }

    fn read(c: &ExecCounters, family: usize) -> Vec<(Vec<String>, Value)> {
        (ExecCounters::FAMILIES[family].read)(c)
            .into_iter()
            .map(|s| {
                (
                    s.labels.iter().map(|(_, v)| v.to_string()).collect(),
                    s.value,
                )
            })
            .collect()
    }

    #[test]
    fn runs_are_counted_by_job_and_exit_status_with_their_time_and_cost() {
        let c = ExecCounters::new(50);
        c.count(&run("ralph", Some(0), Some(0.25)));
        c.count(&run("ralph", Some(3), None));
        c.count(&run("ralph", Some(0), Some(0.5)));
        c.count(&run("build", None, None));
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            read(&c, 0),
            vec![
                (s(&["build", "unknown"]), Value::Int(1)),
                (s(&["ralph", "0"]), Value::Int(2)),
                (s(&["ralph", "3"]), Value::Int(1)),
            ]
        );
        assert_eq!(
            read(&c, 1),
            vec![
                (s(&["build"]), Value::Float(1.5)),
                (s(&["ralph"]), Value::Float(4.5))
            ]
        );
        assert_eq!(read(&c, 2), vec![(s(&["ralph"]), Value::Float(0.75))]);
    }

    #[test]
    fn a_flood_of_names_and_odd_exit_codes_stays_bounded() {
        let c = ExecCounters::new(3);
        for i in 0..1000 {
            c.count(&run(&format!("job{i}"), Some(i), None));
        }
        let runs = read(&c, 0);
        let jobs: std::collections::BTreeSet<_> = runs.iter().map(|(l, _)| l[0].clone()).collect();
        assert_eq!(jobs.len(), 4, "{jobs:?}");
        assert!(jobs.contains("other"));
        assert!(runs.len() <= 4 * 258);
        assert!(runs.iter().any(|(l, _)| l == &["other", "other"]));
        assert!(!runs.iter().any(|(l, _)| l[1] == "999"));
    }
}
