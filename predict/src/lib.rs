//! `perfvmm predict`: what a program will take and cost — on more or fewer
//! vCPUs, on other hosts, after a change to its code or its hardware —
//! from the profiles `perfhint profile` wrote of earlier runs.
//!
//! Pure: profiles and tables in, a [`Report`] out; no devices, no I/O
//! beyond what the caller reads. See `docs/predict.md` for the models and
//! their limits.

#![forbid(unsafe_code)]

pub mod hosts;
pub mod model;
pub mod report;
pub mod whatif;

use guest_hints::profile::Profile;
use serde::Serialize;

pub use hosts::{HostFit, HostTable};
pub use model::{median, HostCpus, PhaseModel, ProgramModel};
pub use whatif::Change;

/// A further vCPU "stops paying" once the next count saves less than this.
pub const PAYING_SAVING: f64 = 0.05;

/// Why a prediction could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("no profile given")]
    NoProfile,
    #[error("profile {0} has no phases (an empty run?)")]
    EmptyProfile(usize),
    #[error("profile {0} does not say how many CPUs it ran on (written before perfhint recorded it): profile the program again")]
    NoCpus(usize),
    #[error("profile {0} is of another program than the first (build-id or command differ)")]
    OtherProgram(usize),
    #[error("--what-if '{0}': {1}")]
    WhatIf(String, String),
    #[error("no phase \"{0}\" in the profiles; nearest: {near}", near = .1.join(", "))]
    NoSuchPhase(String, Vec<String>),
    #[error("no function \"{0}\" in the profiles; nearest: {near}", near = .1.join(", "))]
    NoSuchFunction(String, Vec<String>),
    #[error("no function \"{0}\": the profiles have no per-function attribution (profile again with perfhint 0.1 or later, where perf events are allowed)")]
    NoFunctions(String),
    #[error("{0}: {1}")]
    Hosts(String, String),
    #[error("--vcpus: {0}")]
    Vcpus(String),
    #[error("calibration: {0}")]
    Calibration(String),
}

/// What to predict.
#[derive(Clone, Debug)]
pub struct Request {
    /// vCPU counts for the scaling table, ascending.
    pub vcpus: Vec<u32>,
    pub changes: Vec<Change>,
    pub hosts: Option<HostTable>,
    pub deadline_ms: Option<f64>,
    pub runs_per_day: f64,
    /// Added to the largest peak for the memory need (0.1 = 10 %).
    pub memory_margin: f64,
    /// Physical cores of the machine the VMs (profiled and predicted) run
    /// on: vCPUs beyond them run no faster. `None`: as many as vCPUs.
    pub host_cores: Option<u32>,
    /// What vCPUs are worth on that machine, measured ([`calibrate`]):
    /// `(vCPUs, effective CPUs)`. Empty: each vCPU a CPU (up to the cores).
    pub host_scaling: Vec<(u32, f64)>,
}

/// One row of the scaling table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScalePoint {
    pub vcpus: u32,
    pub time_ms: f64,
    /// Each phase's time, in the model's order.
    pub phases_ms: Vec<f64>,
    /// After the what-if changes (when there are any).
    pub time_after_ms: Option<f64>,
}

/// The hosts part of a report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostsReport {
    pub source: Option<String>,
    pub date: Option<String>,
    pub currency: String,
    pub fits: Vec<HostFit>,
    pub fastest: Option<String>,
    pub cheapest: Option<String>,
}

/// Everything `perfvmm predict` says.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub program: String,
    /// The CPU counts of the profiles used.
    pub profiled_cpus: Vec<u32>,
    pub memory_need_bytes: u64,
    pub memory_margin: f64,
    pub scaling: Vec<ScalePoint>,
    /// The vCPU count past which more stop paying (saving < 5 %).
    pub stops_paying_at: Option<u32>,
    pub changes: Vec<Change>,
    pub model: ProgramModel,
    pub hosts: Option<HostsReport>,
    pub deadline_ms: Option<f64>,
    /// The machine the VMs run on, as the prediction took it.
    pub host: HostCpus,
}

/// Parses `1,2,4,8` into ascending, distinct counts (each 1..=1024).
pub fn parse_vcpus(s: &str) -> Result<Vec<u32>, PredictError> {
    let mut v = s
        .split(',')
        .map(|t| match t.trim().parse::<u32>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(PredictError::Vcpus(format!(
                "\"{}\" is not a count from 1 to 1024",
                t.trim()
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Fits the profiles and answers `req`.
pub fn predict(profiles: &[Profile], req: &Request) -> Result<Report, PredictError> {
    let host = HostCpus {
        cores: req.host_cores,
        measured: req.host_scaling.clone(),
    };
    let model = ProgramModel::fit_on(profiles, &host)?;
    let eff = |n: u32| host.effective(n);
    let (after, speed) = whatif::apply(&model, &req.changes)?;
    let changed = !req.changes.is_empty();
    let scaling: Vec<ScalePoint> = req
        .vcpus
        .iter()
        .map(|&n| ScalePoint {
            vcpus: n,
            time_ms: model.time_at(eff(n), 1.0),
            phases_ms: model
                .phases
                .iter()
                .map(|p| p.time_at(eff(n), 1.0))
                .collect(),
            time_after_ms: changed.then(|| after.time_at(eff(n), speed)),
        })
        .collect();
    let stops_paying_at = scaling
        .windows(2)
        .find(|w| w[1].time_ms > w[0].time_ms * (1.0 - PAYING_SAVING))
        .map(|w| w[0].vcpus);
    let memory_need_bytes = after.memory_bytes(req.memory_margin);
    let hosts = req.hosts.as_ref().map(|t| {
        let fits = hosts::evaluate(
            &after,
            speed,
            t,
            memory_need_bytes,
            req.deadline_ms,
            req.runs_per_day,
        );
        let (fastest, cheapest) = hosts::best(&fits);
        HostsReport {
            source: t.source.clone(),
            date: t.date.clone(),
            currency: t.currency.clone(),
            fastest: fastest.map(|f| f.name.clone()),
            cheapest: cheapest.map(|f| f.name.clone()),
            fits,
        }
    });
    let mut profiled_cpus: Vec<u32> = profiles.iter().map(|p| p.cpus).collect();
    profiled_cpus.sort_unstable();
    Ok(Report {
        program: model.program.clone(),
        profiled_cpus,
        memory_need_bytes,
        memory_margin: req.memory_margin,
        scaling,
        stops_paying_at,
        changes: req.changes.clone(),
        model: after,
        hosts,
        deadline_ms: req.deadline_ms,
        host,
    })
}

/// What vCPUs are worth on the machine the profiles ran on, from profiles
/// of one *calibration* program taken on 1 vCPU and on more: for each
/// other vCPU count `n`, the effective CPUs at which the model fitted on
/// 1 vCPU takes the median measured time at `n` (between 1 and `n`;
/// without the profiler's time where it ran on the program's CPUs, as the
/// model is: [`model::alone_wall_ms`]).
/// Work on `n` vCPUs is then predicted at those CPUs: on a machine whose
/// vCPUs share cores, or slow each other down, less than `n`.
pub fn calibrate(profiles: &[Profile]) -> Result<Vec<(u32, f64)>, PredictError> {
    let one: Vec<Profile> = profiles.iter().filter(|p| p.cpus == 1).cloned().collect();
    if one.is_empty() {
        return Err(PredictError::Calibration(
            "no profile taken on 1 vCPU".to_string(),
        ));
    }
    let model = ProgramModel::fit(&one)?;
    let mut counts: Vec<u32> = profiles.iter().map(|p| p.cpus).filter(|&c| c > 1).collect();
    counts.sort_unstable();
    counts.dedup();
    if counts.is_empty() {
        return Err(PredictError::Calibration(
            "no profile taken on more than 1 vCPU".to_string(),
        ));
    }
    Ok(counts
        .into_iter()
        .map(|n| {
            // The model is of the program alone: so are the runs it is
            // held against (where their profiler ran among their CPUs).
            let walls = profiles
                .iter()
                .filter(|p| p.cpus == n)
                .map(model::alone_wall_ms)
                .collect();
            (n, effective_for(&model, median(walls), f64::from(n)))
        })
        .collect())
}

/// The CPUs in `[1, n]` at which `model` takes `measured` ms (bisection:
/// its time falls as CPUs rise).
fn effective_for(model: &ProgramModel, measured: f64, n: f64) -> f64 {
    let (mut lo, mut hi) = (1.0_f64, n);
    if model.time_at(lo, 1.0) <= measured {
        return lo;
    }
    if model.time_at(hi, 1.0) >= measured {
        return hi;
    }
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if model.time_at(mid, 1.0) > measured {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 s of CPU work on 4 threads, done in `wall_ms` on `cpus` vCPUs.
    fn run(cpus: u32, wall_ms: u64) -> Profile {
        let cpu = 4000.0_f64.min(wall_ms as f64 * f64::from(cpus));
        crate::model::tests::profile(cpus, &[(Some("work"), wall_ms, cpu, 4)])
    }

    #[test]
    fn calibration_finds_what_vcpus_are_worth() {
        // 4 s of parallel work: 4 s on 1 vCPU, 2.5 s on 2 (1.6 CPUs'
        // worth), 2, 2.5 and 9 s on 4 (the median, 2.5 s: 1.6).
        let runs = [
            run(1, 4000),
            run(2, 2500),
            run(4, 2000),
            run(4, 2500),
            run(4, 9000),
        ];
        let c = calibrate(&runs).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].0, 2);
        assert!((c[0].1 - 1.6).abs() < 1e-6, "{c:?}");
        assert!((c[1].1 - 1.6).abs() < 1e-6, "{c:?}");
        // Slower than on 1 vCPU: worth 1; faster than linear: worth n.
        let c = calibrate(&[run(1, 4000), run(2, 5000), run(4, 500)]).unwrap();
        assert_eq!(c, vec![(2, 1.0), (4, 4.0)]);
        assert!(matches!(
            calibrate(&[run(2, 2000)]),
            Err(PredictError::Calibration(_))
        ));
        assert!(matches!(
            calibrate(&[run(1, 2000)]),
            Err(PredictError::Calibration(_))
        ));
    }

    #[test]
    fn calibration_holds_the_runs_without_their_profiler_against_the_model() {
        // The profiler on the program's CPUs took 1 s of CPU in each run:
        // alone, 4 s on 1 vCPU and 2 s on 2 (2 CPUs' worth). Its 2.5 s
        // profiled on 2 vCPUs is 2 s alone (1 s over 2 CPUs), not a sign
        // that 2 vCPUs are worth 1.6.
        let mut one = run(1, 5000);
        one.phases[0].profiler_cpu_ms = Some(1000.0);
        let mut two = run(2, 2500);
        two.phases[0].profiler_cpu_ms = Some(1000.0);
        assert!((model::alone_wall_ms(&two) - 2000.0).abs() < 1e-6);
        let c = calibrate(&[one, two]).unwrap();
        assert!((c[0].1 - 2.0).abs() < 1e-6, "{c:?}");
    }
}
