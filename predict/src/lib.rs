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
pub use model::{PhaseModel, ProgramModel};
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
    pub host_cores: Option<u32>,
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
    let model = ProgramModel::fit_on(profiles, req.host_cores)?;
    let eff = |n: u32| req.host_cores.map_or(n, |h| n.min(h.max(1)));
    let (after, speed) = whatif::apply(&model, &req.changes)?;
    let changed = !req.changes.is_empty();
    let scaling: Vec<ScalePoint> = req
        .vcpus
        .iter()
        .map(|&n| ScalePoint {
            vcpus: n,
            time_ms: model.time_ms(eff(n), 1.0),
            phases_ms: model
                .phases
                .iter()
                .map(|p| p.time_ms(eff(n), 1.0))
                .collect(),
            time_after_ms: changed.then(|| after.time_ms(eff(n), speed)),
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
        host_cores: req.host_cores,
    })
}
