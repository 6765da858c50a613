//! What a simulation found: slack and shortage figures, their difference
//! from measured ones, and the report as a table (or, serialised, JSON).

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use super::trace::{Demand, Measured};
use crate::engine::Resource;

/// One decision the simulated controller applied.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimDecision {
    pub t_ms: u64,
    pub resource: Resource,
    pub from: u64,
    pub to: u64,
    pub reason: String,
    pub hints: Vec<u32>,
    /// The latency drawn for it.
    pub latency_ms: u64,
    /// When the guest had it; `None` when a later decision replaced it
    /// first, or the trace ended before.
    pub visible_ms: Option<u64>,
}

/// Slack and shortage of one resource over the demand samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Fit {
    /// The unused share of what was allocated: Σ max(0, alloc − demand) / Σ alloc.
    pub slack: f64,
    /// The share of samples where demand exceeded the allocation.
    pub shortage: f64,
    /// The unmet share of demand: Σ max(0, demand − alloc) / Σ demand.
    pub deficit: f64,
    /// The mean allocation (vCPUs; memory in MiB as the guest sees it, as
    /// its `MemTotal`).
    pub mean: f64,
}

impl Fit {
    /// `samples`: (demand, allocation) pairs.
    pub fn of(samples: &[(f64, f64)]) -> Fit {
        let n = samples.len();
        if n == 0 {
            return Fit::default();
        }
        let alloc: f64 = samples.iter().map(|s| s.1).sum();
        let demand: f64 = samples.iter().map(|s| s.0).sum();
        let unused: f64 = samples.iter().map(|s| (s.1 - s.0).max(0.0)).sum();
        let unmet: f64 = samples.iter().map(|s| (s.0 - s.1).max(0.0)).sum();
        let share = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        Fit {
            slack: share(unused, alloc),
            shortage: samples.iter().filter(|s| s.0 > s.1).count() as f64 / n as f64,
            deficit: share(unmet, demand),
            mean: alloc / n as f64,
        }
    }
}

/// The figures for one allocation history (simulated or measured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    pub cpu: Fit,
    /// Memory in use against the memory the guest has (`MemTotal`); `mean` in MiB.
    pub memory: Fit,
    /// vCPUs allocated, integrated over the samples' time.
    pub vcpu_seconds: f64,
    /// Guest memory allocated (as the host grants it, `MemTotal` plus the
    /// header's `reserved_kib`), integrated over the samples' time.
    pub gib_seconds: f64,
}

/// Simulated minus measured, in percentage points.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Difference {
    pub cpu_slack: f64,
    pub cpu_shortage: f64,
    pub memory_slack: f64,
    pub memory_shortage: f64,
    /// All four within [`VALIDATION_POINTS`].
    pub within: bool,
}

/// How close simulated slack and shortage must be to the measured ones.
pub const VALIDATION_POINTS: f64 = 5.0;

impl Difference {
    pub fn between(sim: &Figures, measured: &Figures) -> Self {
        let pts = |a: f64, b: f64| (a - b) * 100.0;
        let cpu_slack = pts(sim.cpu.slack, measured.cpu.slack);
        let cpu_shortage = pts(sim.cpu.shortage, measured.cpu.shortage);
        let memory_slack = pts(sim.memory.slack, measured.memory.slack);
        let memory_shortage = pts(sim.memory.shortage, measured.memory.shortage);
        let within = [cpu_slack, cpu_shortage, memory_slack, memory_shortage]
            .iter()
            .all(|d| d.abs() <= VALIDATION_POINTS);
        Difference {
            cpu_slack,
            cpu_shortage,
            memory_slack,
            memory_shortage,
            within,
        }
    }
}

/// Hints replayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HintCounts {
    pub total: usize,
    /// Kinds this perfvmm's wire format does not have.
    pub skipped: usize,
    /// Hints whose outcome differs from the one recorded with them.
    pub outcome_mismatches: usize,
}

/// One figure per resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PerResource<T> {
    pub vcpus: T,
    pub memory: T,
}

/// What a simulation found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub source: String,
    pub mode: &'static str,
    pub latency: String,
    pub seed: u64,
    pub samples: usize,
    pub duration_ms: u64,
    pub hints: HintCounts,
    /// Decisions per resource.
    pub decision_counts: PerResource<usize>,
    pub decisions: Vec<SimDecision>,
    /// The engine's lead time per resource at the end, in ms.
    pub lead_ms: PerResource<u64>,
    pub simulated: Figures,
    /// From the trace's `measured` records, when it has them.
    pub measured: Option<Figures>,
    pub difference_points: Option<Difference>,
}

/// One demand sample and what the guest had then.
pub(super) struct Sample {
    pub(super) t: Duration,
    pub(super) demand: Demand,
    /// vCPUs, memory bytes.
    pub(super) alloc: [u64; 2],
}

/// The time from the first sample to the last, in ms.
pub(super) fn duration_ms(samples: &[Sample]) -> u64 {
    match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => b.t.saturating_sub(a.t).as_millis() as u64,
        _ => 0,
    }
}

/// The figures for what the VM really had: each sample against the
/// `measured` record of the same time (samples without one are left out).
pub(super) fn measured_figures(
    samples: &[Sample],
    measured: &[(Duration, Measured)],
    reserved_kib: u64,
) -> Figures {
    figures(samples, reserved_kib, |s| {
        let i = measured.partition_point(|(t, _)| *t < s.t);
        let (t, m) = measured.get(i)?;
        (*t == s.t).then(|| {
            [
                u64::from(m.cpus),
                (m.mem_total_kib.saturating_add(reserved_kib)).saturating_mul(1024),
            ]
        })
    })
}

/// Slack, shortage and resource-time over the samples for which `alloc`
/// gives the allocation ([vCPUs, memory bytes as granted by the host]).
pub(super) fn figures(
    samples: &[Sample],
    reserved_kib: u64,
    alloc: impl Fn(&Sample) -> Option<[u64; 2]>,
) -> Figures {
    let mut cpu = Vec::new();
    let mut mem = Vec::new();
    let (mut vcpu_s, mut gib_s) = (0.0, 0.0);
    let mut last_dt = 0.0;
    for (i, s) in samples.iter().enumerate() {
        let Some([vcpus, bytes]) = alloc(s) else {
            continue;
        };
        // Each sample stands for the time until the next one.
        let dt = match samples.get(i + 1) {
            Some(n) => n.t.saturating_sub(s.t).as_secs_f64(),
            None => last_dt,
        };
        last_dt = dt;
        let visible_kib = (bytes / 1024).saturating_sub(reserved_kib) as f64;
        cpu.push((s.demand.running, vcpus as f64));
        mem.push((s.demand.mem_used_kib as f64, visible_kib));
        vcpu_s += vcpus as f64 * dt;
        gib_s += bytes as f64 / f64::from(1u32 << 30) * dt;
    }
    let mut memory = Fit::of(&mem);
    memory.mean /= 1024.0;
    Figures {
        cpu: Fit::of(&cpu),
        memory,
        vcpu_seconds: vcpu_s,
        gib_seconds: gib_s,
    }
}

impl Report {
    /// The report as a short table, for people.
    pub fn table(&self) -> String {
        let mut out = self.summary();
        let _ = writeln!(
            out,
            "\n{:<18} {:>9} {:>9} {:>11} {:>9} {:>9} {:>10} {:>8} {:>7}",
            "",
            "CPU slack",
            "CPU short",
            "CPU deficit",
            "mem slack",
            "mem short",
            "mean mem",
            "vCPU-s",
            "GiB-s"
        );
        row(&mut out, "simulated", &self.simulated);
        if let Some(m) = &self.measured {
            row(&mut out, "measured", m);
        }
        if let Some(d) = &self.difference_points {
            difference_rows(&mut out, d);
        }
        out
    }

    /// The table's first lines: what ran, and the decisions.
    fn summary(&self) -> String {
        let skipped = match self.hints.skipped {
            0 => String::new(),
            n => format!(" ({n} of kinds this perfvmm does not know, skipped)"),
        };
        let mut out = format!(
            "policy mode {}, latency model {}, seed {}: {} demand samples over {:.1} s, {} hints{skipped}\n",
            self.mode,
            self.latency,
            self.seed,
            self.samples,
            self.duration_ms as f64 / 1000.0,
            self.hints.total,
        );
        let _ = writeln!(
            out,
            "decisions: {} vCPU, {} memory; lead time at the end: {} ms (vCPUs), {} ms (memory)",
            self.decision_counts.vcpus,
            self.decision_counts.memory,
            self.lead_ms.vcpus,
            self.lead_ms.memory
        );
        out
    }
}

/// One row of figures.
fn row(out: &mut String, label: &str, f: &Figures) {
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let _ = writeln!(
        out,
        "{label:<18} {:>9} {:>9} {:>11} {:>9} {:>9} {:>6.0} MiB {:>8.1} {:>7.2}",
        pct(f.cpu.slack),
        pct(f.cpu.shortage),
        pct(f.cpu.deficit),
        pct(f.memory.slack),
        pct(f.memory.shortage),
        f.memory.mean,
        f.vcpu_seconds,
        f.gib_seconds
    );
}

/// Simulated minus measured, and whether it is within the bound.
fn difference_rows(out: &mut String, d: &Difference) {
    let _ = writeln!(
        out,
        "{:<18} {:>+9.1} {:>+9.1} {:>11} {:>+9.1} {:>+9.1}",
        "difference (pts)", d.cpu_slack, d.cpu_shortage, "", d.memory_slack, d.memory_shortage
    );
    let _ = writeln!(
        out,
        "simulated slack and shortage within {VALIDATION_POINTS} points of the measured: {}",
        if d.within { "yes" } else { "no" }
    );
}

#[cfg(test)]
mod tests {
    use super::super::testing::{config, run, HEADER};
    use super::super::{simulate, LatencyModel, Trace};
    use crate::config::Mode;

    /// A trace of `n` samples 100 ms apart, `running` tasks each, with
    /// what the VM had recorded beside them.
    fn measured_trace(n: u32, running: u32, cpus: u32, mem_total_kib: u64) -> Trace {
        let mut text = String::from(HEADER);
        text.push('\n');
        for i in 0..n {
            let t = i * 100;
            text.push_str(&format!(
                "{{\"t_ms\":{t},\"demand\":{{\"running\":{running},\"mem_used_kib\":102400}}}}\n\
                 {{\"t_ms\":{t},\"measured\":{{\"cpus\":{cpus},\"mem_total_kib\":{mem_total_kib}}}}}\n"
            ));
        }
        Trace::parse(&text).unwrap()
    }

    #[test]
    fn measured_figures_are_compared_in_points() {
        // The VM really had what a static simulation gives: no difference.
        let t = measured_trace(50, 2, 1, 512 << 10);
        let r = simulate(&t, &config(Mode::Static, LatencyModel::nested()));
        let m = r.measured.unwrap();
        assert_eq!(m, r.simulated);
        let d = r.difference_points.unwrap();
        assert_eq!(
            (d.cpu_slack, d.cpu_shortage, d.memory_slack),
            (0.0, 0.0, 0.0)
        );
        assert!(d.within);
        assert!(
            r.table().contains("within 5 points of the measured: yes"),
            "{}",
            r.table()
        );
        // It had 2 vCPUs: the simulation's 1 is 100 points short of it.
        let t = measured_trace(50, 2, 2, 512 << 10);
        let r = simulate(&t, &config(Mode::Static, LatencyModel::nested()));
        let d = r.difference_points.unwrap();
        assert_eq!((d.cpu_shortage, d.cpu_slack), (100.0, 0.0));
        assert!(!d.within);
        assert!(r.table().contains("measured"));
    }

    #[test]
    fn the_table_reports_the_benchmarks_figures() {
        let text = run(Mode::Hints).table();
        for needle in [
            "policy mode hints",
            "latency model nested",
            "CPU slack",
            "CPU short",
            "mem slack",
            "mem short",
            "mean mem",
            "vCPU-s",
            "GiB-s",
            "simulated",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        assert!(!text.contains("measured"));
    }
}
