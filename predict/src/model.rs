//! Per-phase run-time models fitted from profiles.
//!
//! A phase's wall time on `n` CPUs at relative speed `s` is
//!
//! ```text
//! T(n, s) = wait + (serial + parallel / k + contention × (k − 1)) / s,   k = min(n, threads)
//! ```
//!
//! `wait` is time none of the program's threads ran (I/O, sleeps): it
//! neither scales with CPUs nor with their speed. `serial` is CPU time on one
//! thread, `parallel` CPU work that divides over up to `threads` threads
//! (Amdahl), and `contention` the time each further CPU adds (the Universal
//! Scalability Law's coherency term, linearised), fitted only when profiles
//! at three or more CPU counts are given.

use guest_hints::profile::{weighted_functions, FunctionTime, Profile, ProfilePhase};
use serde::Serialize;

use crate::PredictError;

/// Effective parallelism at or below which CPU time counts as serial.
const SERIAL_PARALLELISM: f64 = 1.05;

/// What `n` vCPUs are worth, in CPUs of work, on the machine the VMs run
/// on (profiled and predicted alike).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HostCpus {
    /// Physical cores: vCPUs beyond them run no faster.
    pub cores: Option<u32>,
    /// Measured `(vCPUs, effective CPUs)` points ([`calibrate`]), between
    /// which it interpolates; past the last, no further gain.
    pub measured: Vec<(u32, f64)>,
}

impl HostCpus {
    /// A machine of `n` physical cores, nothing measured.
    pub fn cores(n: u32) -> Self {
        HostCpus {
            cores: Some(n),
            measured: Vec::new(),
        }
    }

    /// Effective CPUs of `n` vCPUs (at least 1).
    pub fn effective(&self, n: u32) -> f64 {
        let n = n.max(1);
        let mut e = f64::from(n);
        if !self.measured.is_empty() {
            let mut pts: Vec<(f64, f64)> = vec![(1.0, 1.0)];
            pts.extend(self.measured.iter().map(|&(v, c)| (f64::from(v), c)));
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let x = f64::from(n);
            e = match pts.iter().position(|p| p.0 >= x) {
                Some(0) => pts[0].1,
                Some(i) => {
                    let (a, b) = (pts[i - 1], pts[i]);
                    a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0).max(1e-9)
                }
                None => pts.iter().map(|p| p.1).fold(1.0, f64::max),
            };
        }
        if let Some(c) = self.cores {
            e = e.min(f64::from(c.max(1)));
        }
        e.max(1.0)
    }
}

/// One phase's model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseModel {
    /// The program's name for the phase, or `phase N`.
    pub name: String,
    pub wait_ms: f64,
    pub serial_ms: f64,
    pub parallel_ms: f64,
    pub contention_ms: f64,
    /// The most threads the phase keeps busy (its `max_useful`).
    pub threads: u32,
    /// `none`, `light`, `sequential` or `random`.
    pub io_class: String,
    pub io_bytes_per_sec: u64,
    pub working_set_bytes: u64,
    pub peak_bytes: u64,
    /// Where its CPU time went (from the profile at the fewest CPUs).
    pub functions: Vec<FunctionTime>,
    /// The CPU counts of the profiles it was fitted from.
    pub fitted_from: Vec<u32>,
    /// Its duration in each of those profiles, ms.
    pub observed_ms: Vec<f64>,
}

impl PhaseModel {
    /// Effective CPUs for the phase on `cpus` (possibly fractional: see
    /// [`HostCpus`]).
    fn k(&self, cpus: f64) -> f64 {
        cpus.min(f64::from(self.threads)).max(1.0)
    }

    /// Predicted wall time, ms, on `cpus` CPUs at relative speed `speed`.
    pub fn time_ms(&self, cpus: u32, speed: f64) -> f64 {
        self.time_at(f64::from(cpus), speed)
    }

    /// As [`Self::time_ms`], on `cpus` effective CPUs.
    pub fn time_at(&self, cpus: f64, speed: f64) -> f64 {
        let k = self.k(cpus);
        let cpu = self.serial_ms + self.parallel_ms / k + self.contention_ms * (k - 1.0);
        self.wait_ms + cpu / speed.max(1e-9)
    }

    /// CPU time, ms, the phase uses on `cpus` CPUs.
    pub fn cpu_ms(&self, cpus: u32) -> f64 {
        let k = self.k(f64::from(cpus));
        self.serial_ms + self.parallel_ms + self.contention_ms * (k - 1.0) * k
    }

    /// Whether the phase waits on storage (its wait scales with I/O speed).
    pub fn does_io(&self) -> bool {
        !matches!(self.io_class.as_str(), "none")
    }
}

/// A program's model: its phases in order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProgramModel {
    /// The program (its command's first word).
    pub program: String,
    pub phases: Vec<PhaseModel>,
    /// Notes on how the model was made (assumptions taken).
    pub notes: Vec<String>,
}

impl ProgramModel {
    /// Predicted wall time, ms.
    pub fn time_ms(&self, cpus: u32, speed: f64) -> f64 {
        self.time_at(f64::from(cpus), speed)
    }

    /// Predicted wall time, ms, on `cpus` effective CPUs.
    pub fn time_at(&self, cpus: f64, speed: f64) -> f64 {
        self.phases.iter().map(|p| p.time_at(cpus, speed)).sum()
    }

    /// Memory the program needs: its largest peak with `margin` (0.1 =
    /// 10 %) added.
    pub fn memory_bytes(&self, margin: f64) -> u64 {
        let peak = self.phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0);
        (peak as f64 * (1.0 + margin)).ceil() as u64
    }

    /// The most threads any phase keeps busy.
    pub fn max_threads(&self) -> u32 {
        self.phases.iter().map(|p| p.threads).max().unwrap_or(1)
    }

    /// Fits a model from profiles of one program, taken at one or more
    /// CPU counts. Phases are matched by name, else by position.
    pub fn fit(profiles: &[Profile]) -> Result<ProgramModel, PredictError> {
        Self::fit_on(profiles, &HostCpus::default())
    }

    /// As [`Self::fit`], for profiles taken in VMs on `host`: a profile's
    /// CPUs count as what they are worth there.
    pub fn fit_on(profiles: &[Profile], host: &HostCpus) -> Result<ProgramModel, PredictError> {
        let first = profiles.first().ok_or(PredictError::NoProfile)?;
        check_same_program(profiles)?;
        let mut notes = profiler_cost_notes(profiles);
        for (i, p) in profiles.iter().enumerate() {
            if p.phases.is_empty() {
                return Err(PredictError::EmptyProfile(i + 1));
            }
            if p.cpus == 0 {
                return Err(PredictError::NoCpus(i + 1));
            }
        }
        // Runs cut into different phases (detected, not named, phases can
        // differ from run to run): with the same named phases, their
        // unnamed ones are gathered into one; else each run is one phase.
        let regrouped: Vec<Profile>;
        let (first, profiles) = if profiles.iter().all(|p| same_phases(first, p)) {
            (first, profiles)
        } else if profiles.iter().all(|p| named(p) == named(first)) && !named(first).is_empty() {
            notes.push(
                "the profiles' unnamed phases differ from run to run: they are modelled as one, `(unnamed)`"
                    .to_string(),
            );
            // A run with no unnamed phase (none, or all too short to be
            // seen) spent no time in one: it counts as 0 ms of `(unnamed)`,
            // so that the median over the runs is not one run's stray time.
            let rest = profiles
                .iter()
                .any(|p| p.phases.iter().any(|x| x.name.is_none()));
            regrouped = profiles
                .iter()
                .map(|p| named_and_the_rest(p, rest))
                .collect();
            (&regrouped[0], &regrouped[..])
        } else {
            notes.push(
                "the profiles' phases differ from run to run: each run is modelled as one phase"
                    .to_string(),
            );
            regrouped = profiles
                .iter()
                .map(|p| Profile {
                    phases: vec![gathered(&p.phases, "run")],
                    ..p.clone()
                })
                .collect();
            (&regrouped[0], &regrouped[..])
        };
        let phases = first
            .phases
            .iter()
            .enumerate()
            .map(|(i, ph)| {
                let name = phase_name(ph);
                let points: Vec<Point> = profiles
                    .iter()
                    .filter_map(|p| {
                        matching_phase(p, ph, i).map(|m| (p.cpus, host.effective(p.cpus), m))
                    })
                    .collect();
                fit_phase(name, &points, &mut notes)
            })
            .collect();
        let program = first
            .command
            .first()
            .map(|c| c.rsplit('/').next().unwrap_or(c).to_string())
            .unwrap_or_default();
        Ok(ProgramModel {
            program,
            phases,
            notes,
        })
    }
}

/// Whether `b` has the phases of `a`: the same names, or as many unnamed.
fn same_phases(a: &Profile, b: &Profile) -> bool {
    a.phases.len() == b.phases.len()
        && a.phases
            .iter()
            .zip(&b.phases)
            .all(|(x, y)| x.name == y.name)
}

/// The names of `p`'s named phases, in order.
fn named(p: &Profile) -> Vec<&str> {
    p.phases.iter().filter_map(|x| x.name.as_deref()).collect()
}

/// `p` with its named phases and, last, its unnamed ones as one; with
/// `rest`, that one is there even if `p` has no unnamed phase (0 ms).
fn named_and_the_rest(p: &Profile, rest: bool) -> Profile {
    let (named, unnamed): (Vec<ProfilePhase>, Vec<ProfilePhase>) =
        p.phases.iter().cloned().partition(|x| x.name.is_some());
    let mut phases = named;
    if !unnamed.is_empty() {
        phases.push(gathered(&unnamed, "(unnamed)"));
    } else if let (true, Some(any)) = (rest, phases.first()) {
        phases.push(no_time(any, "(unnamed)"));
    }
    Profile {
        phases,
        ..p.clone()
    }
}

/// `phases` (at least one) as a single phase named `name`: durations and
/// CPU time added, the most threads and memory, the I/O rate over the
/// whole, the function shares weighted by CPU time.
fn gathered(phases: &[ProfilePhase], name: &str) -> ProfilePhase {
    let mut one = phases[0].clone();
    one.name = Some(name.to_string());
    one.duration_ms = phases.iter().map(|x| x.duration_ms).sum();
    let cpu: f64 = phases.iter().map(cpu_of).sum();
    one.cpu_ms = Some(cpu);
    one.profiler_cpu_ms = phases.iter().map(|x| x.profiler_cpu_ms).sum();
    one.max_useful = phases.iter().map(|x| x.max_useful).max().unwrap_or(1);
    one.peak_bytes = phases.iter().map(|x| x.peak_bytes).max().unwrap_or(0);
    one.working_set_bytes = phases
        .iter()
        .map(|x| x.working_set_bytes)
        .max()
        .unwrap_or(0);
    let wall = one.duration_ms.max(1) as f64;
    one.io_bytes_per_sec = (phases
        .iter()
        .map(|x| x.io_bytes_per_sec as f64 * x.duration_ms as f64)
        .sum::<f64>()
        / wall) as u64;
    if let Some(x) = phases.iter().find(|x| x.io_class != "none") {
        one.io_class = x.io_class.clone();
    }
    one.functions = weighted_functions(phases.iter().map(|x| {
        let w = if cpu > 0.0 { cpu_of(x) / cpu } else { 0.0 };
        (x.functions.as_slice(), w)
    }));
    one
}

/// A phase named `name` in which nothing ran: `like`'s other fields, no
/// time, CPU, memory, I/O or functions.
fn no_time(like: &ProfilePhase, name: &str) -> ProfilePhase {
    ProfilePhase {
        name: Some(name.to_string()),
        source: "unmarked".to_string(),
        duration_ms: 0,
        parallelism_p50: 0.0,
        parallelism_p95: 0.0,
        max_useful: 1,
        working_set_bytes: 0,
        peak_bytes: 0,
        io_bytes_per_sec: 0,
        io_class: "none".to_string(),
        samples: 0,
        cpu_ms: Some(0.0),
        profiler_cpu_ms: None,
        functions: Vec::new(),
        spread: None,
        ..like.clone()
    }
}

fn phase_name(p: &ProfilePhase) -> String {
    p.name.clone().unwrap_or_else(|| format!("phase {}", p.id))
}

/// The phase of `profile` that stands for `ph` (the `i`th phase of the
/// first profile): the one of the same name, else the `i`th.
fn matching_phase<'a>(
    profile: &'a Profile,
    ph: &ProfilePhase,
    i: usize,
) -> Option<&'a ProfilePhase> {
    match &ph.name {
        Some(n) => profile.phases.iter().find(|p| p.name.as_ref() == Some(n)),
        None => profile.phases.get(i).filter(|p| p.name.is_none()),
    }
}

fn check_same_program(profiles: &[Profile]) -> Result<(), PredictError> {
    let first = &profiles[0];
    for (i, p) in profiles.iter().enumerate().skip(1) {
        let differ = match (&first.build_id, &p.build_id) {
            (Some(a), Some(b)) => a != b,
            _ => first.command.first() != p.command.first(),
        };
        if differ {
            return Err(PredictError::OtherProgram(i + 1));
        }
    }
    Ok(())
}

/// CPU time of a profiled phase, ms (older profiles: p50 × duration).
fn cpu_of(p: &ProfilePhase) -> f64 {
    p.cpu_ms.unwrap_or(p.parallelism_p50 * p.duration_ms as f64)
}

/// A note for each profile whose profiler ran on the program's CPUs and
/// took a noticeable share of them (5 % of the program's CPU time or
/// more), which the model takes out (see [`alone_ms`]). (Natively the
/// profiler costs about 1 %; under the nested harness's emulation 75 %.)
fn profiler_cost_notes(profiles: &[Profile]) -> Vec<String> {
    profiles
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let own: f64 = p.phases.iter().filter_map(|x| x.profiler_cpu_ms).sum();
            let program: f64 = p.phases.iter().map(cpu_of).sum();
            (program > 0.0 && own >= 0.05 * program).then(|| {
                format!(
                    "profile {}: the profiler used {:.1} s of CPU on the program's CPUs, {:.0} % of the \
                     program's {:.1} s; the time it kept the program off them is taken out: the \
                     predictions are of the program alone",
                    i + 1,
                    own / 1000.0,
                    100.0 * own / program,
                    program / 1000.0
                )
            })
        })
        .collect()
}

/// A phase's duration without the profiler, where it ran on the program's
/// CPUs (`profiler_cpu_ms`): when the phase had threads for all `cpus` of
/// its profile, each ms of the profiler's CPU time kept a thread off a CPU
/// and cost the phase 1/`k` ms (`k`: the CPUs it had, as worth on the
/// host); with a CPU to spare, the profiler ran on that. Never less than
/// the program's own CPU time spread over `k`.
fn alone_ms(p: &ProfilePhase, cpus: u32, k: f64, threads: u32) -> f64 {
    let d = p.duration_ms as f64;
    match p.profiler_cpu_ms {
        Some(f) if threads >= cpus && k > 0.0 => (d - f / k).max(cpu_of(p) / k).min(d),
        _ => d,
    }
}

/// A profile's run time without the profiler, ms: its wall time less what
/// [`alone_ms`] takes out of each phase (its CPUs counted as they are,
/// up to the phase's threads). What a model, which is of the program
/// alone, is compared with when it calibrates a machine.
pub fn alone_wall_ms(p: &Profile) -> f64 {
    let taken: f64 = p
        .phases
        .iter()
        .map(|ph| {
            let threads = ph.max_useful.max(1);
            let k = f64::from(p.cpus.min(threads).max(1));
            ph.duration_ms as f64 - alone_ms(ph, p.cpus, k, threads)
        })
        .sum();
    (p.wall_ms as f64 - taken).max(0.0)
}

/// One observation of a phase: the profile's vCPUs, what they were worth
/// on the host, and the phase.
type Point<'a> = (u32, f64, &'a ProfilePhase);

/// Fits one phase from its observations.
fn fit_phase(name: String, points: &[Point], notes: &mut Vec<String>) -> PhaseModel {
    let threads = points
        .iter()
        .map(|(_, _, p)| p.max_useful)
        .max()
        .unwrap_or(1)
        .max(1);
    // Observations by effective CPUs k; where several share one, the
    // median run stands for them (a run slowed by the host's other work
    // must not pull the fit, as a mean lets it).
    let mut by_k: Vec<(f64, Vec<(f64, f64)>)> = Vec::new();
    for &(vcpus, cpus, p) in points {
        let k = cpus.min(f64::from(threads)).max(1.0);
        let run = (alone_ms(p, vcpus, k, threads), cpu_of(p));
        match by_k.iter_mut().find(|(kk, _)| *kk == k) {
            Some((_, runs)) => runs.push(run),
            None => by_k.push((k, vec![run])),
        }
    }
    let mut obs: Vec<(f64, f64, f64)> = by_k
        .into_iter()
        .map(|(k, runs)| {
            let (d, c) = median_run(runs);
            (k, d, c)
        })
        .collect();
    obs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (wait, serial, parallel, contention) = match obs.len() {
        0 => (0.0, 0.0, 0.0, 0.0),
        1 => {
            let (k, d, c) = obs[0];
            if k == 1.0 && threads > 1 {
                notes.push(format!(
                    "{name}: profiled on one CPU only: its CPU time is taken to divide evenly over its {threads} threads"
                ));
            }
            let (w, s, p) = from_one(k, d, c, threads);
            (w, s, p, 0.0)
        }
        _ => from_several(&obs),
    };
    let base = points.iter().min_by_key(|(c, ..)| *c).map(|(.., p)| *p);
    PhaseModel {
        name,
        wait_ms: wait,
        serial_ms: serial,
        parallel_ms: parallel,
        contention_ms: contention,
        threads,
        io_class: base.map_or("none".into(), |p| p.io_class.clone()),
        io_bytes_per_sec: base.map_or(0, |p| p.io_bytes_per_sec),
        working_set_bytes: points
            .iter()
            .map(|(.., p)| p.working_set_bytes)
            .max()
            .unwrap_or(0),
        peak_bytes: points.iter().map(|(.., p)| p.peak_bytes).max().unwrap_or(0),
        functions: base.map(|p| p.functions.clone()).unwrap_or_default(),
        fitted_from: points.iter().map(|(c, ..)| *c).collect(),
        observed_ms: points.iter().map(|(.., p)| p.duration_ms as f64).collect(),
    }
}

/// The run of median duration among `runs` (duration, CPU time); of an
/// even number, the mean of the middle two.
fn median_run(mut runs: Vec<(f64, f64)>) -> (f64, f64) {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    middle(&runs, |a, b| ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0)).unwrap_or((0.0, 0.0))
}

/// The median of `values`; of an even number, the mean of the middle two
/// (0 of none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    middle(&values, |a, b| (a + b) / 2.0).unwrap_or(0.0)
}

/// The middle element of `sorted`; of an even number, `mean` of the middle
/// two.
fn middle<T: Copy>(sorted: &[T], mean: impl Fn(T, T) -> T) -> Option<T> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some(mean(sorted[n / 2 - 1], sorted[n / 2])),
    }
}

/// (wait, serial, parallel) from one observation: duration `d` and CPU time
/// `c` on `k` effective CPUs.
pub fn from_one(k: f64, d: f64, c: f64, threads: u32) -> (f64, f64, f64) {
    let c = c.max(0.0);
    if k <= 1.0 {
        let busy = c.min(d);
        let wait = d - busy;
        return if threads > 1 {
            (wait, 0.0, busy)
        } else {
            (wait, busy, 0.0)
        };
    }
    if c <= d * SERIAL_PARALLELISM {
        // No sign of parallel work at k CPUs.
        let busy = c.min(d);
        return (d - busy, busy, 0.0);
    }
    // serial + parallel / k = d and serial + parallel = c.
    let parallel = ((c - d) * k / (k - 1.0)).min(d * k);
    let serial = (d - parallel / k).max(0.0);
    (0.0, serial, parallel)
}

/// (wait, serial, parallel, contention) by least squares over
/// observations `(k, duration, cpu)` at two or more `k`:
/// `d = a + b / k (+ c × (k − 1))`, every term at least 0; `a` is split
/// into serial CPU and wait by the CPU time measured.
pub fn from_several(obs: &[(f64, f64, f64)]) -> (f64, f64, f64, f64) {
    let with_contention = obs.len() >= 3;
    let rows: Vec<(Vec<f64>, f64)> = obs
        .iter()
        .map(|&(k, d, _)| {
            let mut x = vec![1.0, 1.0 / k];
            if with_contention {
                x.push(k - 1.0);
            }
            (x, d)
        })
        .collect();
    let coef = nonneg_least_squares(&rows);
    let (a, b) = (coef[0], coef[1]);
    let contention = coef.get(2).copied().unwrap_or(0.0);
    // CPU time at the fewest CPUs, less the parallel work, is serial CPU.
    let cpu = obs[0].2;
    let serial = (cpu - b).clamp(0.0, a);
    (a - serial, serial, b, contention)
}

/// Least squares with every coefficient at least 0: solves the normal
/// equations, drops the most negative coefficient and solves again.
fn nonneg_least_squares(rows: &[(Vec<f64>, f64)]) -> Vec<f64> {
    let n = rows.first().map_or(0, |r| r.0.len());
    let mut active: Vec<usize> = (0..n).collect();
    loop {
        let sol = solve_normal(rows, &active);
        let worst = sol
            .iter()
            .enumerate()
            .filter(|(_, v)| **v < 0.0)
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i);
        match worst {
            Some(i) if active.len() > 1 => {
                active.remove(i);
            }
            _ => {
                let mut out = vec![0.0; n];
                for (j, &col) in active.iter().enumerate() {
                    out[col] = sol[j].max(0.0);
                }
                return out;
            }
        }
    }
}

/// Least-squares coefficients of the columns `cols` (Gaussian elimination
/// on the normal equations; a singular system gives zeros).
fn solve_normal(rows: &[(Vec<f64>, f64)], cols: &[usize]) -> Vec<f64> {
    let m = cols.len();
    let mut a = vec![vec![0.0; m + 1]; m];
    for (x, y) in rows {
        for i in 0..m {
            for j in 0..m {
                a[i][j] += x[cols[i]] * x[cols[j]];
            }
            a[i][m] += x[cols[i]] * y;
        }
    }
    for c in 0..m {
        let Some(p) = (c..m).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())) else {
            return vec![0.0; m];
        };
        if a[p][c].abs() < 1e-12 {
            return vec![0.0; m];
        }
        a.swap(c, p);
        let pivot = a[c].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                for (v, p) in row.iter_mut().zip(&pivot).skip(c) {
                    *v -= f * p;
                }
            }
        }
    }
    (0..m).map(|i| a[i][m] / a[i][i]).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn one_profile_on_several_cpus_splits_serial_and_parallel() {
        // 4 CPUs: 1 s serial then 3 s of work on 4 threads (0.75 s) = 1.75 s, 4 s CPU.
        let (w, s, p) = from_one(4.0, 1750.0, 4000.0, 4);
        assert!(
            close(w, 0.0) && close(s, 1000.0) && close(p, 3000.0),
            "{w} {s} {p}"
        );
        // Waiting, not computing: 1 s of CPU in 3 s.
        let (w, s, p) = from_one(4.0, 3000.0, 1000.0, 4);
        assert!(close(w, 2000.0) && close(s, 1000.0) && close(p, 0.0));
    }

    #[test]
    fn one_cpu_profiles_take_the_work_as_parallel_over_its_threads() {
        let (w, s, p) = from_one(1.0, 5000.0, 4000.0, 4);
        assert!(close(w, 1000.0) && close(s, 0.0) && close(p, 4000.0));
        let (_, s, p) = from_one(1.0, 5000.0, 4000.0, 1);
        assert!(close(s, 4000.0) && close(p, 0.0));
    }

    #[test]
    fn two_cpu_counts_recover_amdahl_exactly() {
        // a = 500 (300 serial CPU + 200 wait), b = 2000.
        let d = |k: f64| 500.0 + 2000.0 / k;
        let obs = [(1.0, d(1.0), 2300.0), (2.0, d(2.0), 2300.0)];
        let (w, s, p, c) = from_several(&obs);
        assert!(close(p, 2000.0) && close(s, 300.0) && close(w, 200.0) && c == 0.0);
    }

    #[test]
    fn three_cpu_counts_fit_contention_and_never_a_negative_term() {
        let d = |k: f64| 100.0 + 4000.0 / k + 50.0 * (k - 1.0);
        let obs: Vec<_> = [1.0, 2.0, 4.0].iter().map(|&k| (k, d(k), 4100.0)).collect();
        let (_, s, p, c) = from_several(&obs);
        assert!(
            close(p, 4000.0) && close(c, 50.0) && close(s, 100.0),
            "{s} {p} {c}"
        );
        // Faster than linear (noise): no negative serial part.
        let obs = [(1.0, 1000.0, 1000.0), (2.0, 400.0, 1000.0)];
        let (w, s, p, _) = from_several(&obs);
        assert!(w >= 0.0 && s >= 0.0 && p > 0.0);
    }

    /// A profile of `./prog` on `cpus` CPUs: its phases as (name, duration
    /// ms, CPU ms, threads), one after the other.
    pub(crate) fn profile(cpus: u32, phases: &[(Option<&str>, u64, f64, u32)]) -> Profile {
        let mut start = 0;
        let phases = phases
            .iter()
            .enumerate()
            .map(|(i, &(name, dur, cpu, threads))| {
                let p = ProfilePhase {
                    id: i as u32 + 1,
                    name: name.map(str::to_string),
                    source: "detected".into(),
                    start_ms: start,
                    duration_ms: dur,
                    parallelism_p50: cpu / dur as f64,
                    parallelism_p95: cpu / dur as f64,
                    max_useful: threads,
                    working_set_bytes: 1 << 20,
                    peak_bytes: 2 << 20,
                    io_bytes_per_sec: 0,
                    io_class: "none".into(),
                    samples: dur / 10,
                    cpu_ms: Some(cpu),
                    profiler_cpu_ms: None,
                    functions: Vec::new(),
                    spread: None,
                };
                start += dur;
                p
            })
            .collect();
        Profile {
            format: guest_hints::profile::FORMAT.into(),
            version: 1,
            command: vec!["./prog".into()],
            binary: None,
            build_id: None,
            wall_ms: start,
            interval_ms: 10,
            runs: 1,
            cpu_time_source: "schedstat".into(),
            working_set_source: "rss".into(),
            io_source: "chars".into(),
            cpus,
            notes: Vec::new(),
            phases,
        }
    }

    #[test]
    fn the_time_a_profiler_took_from_the_programs_cpus_is_taken_out() {
        // xz -T4 profiled on 1 CPU with the profiler on that CPU (nested
        // harness, 2026-12-04): 26.6 s, 15.0 s of the program's CPU time,
        // 11.5 s of the profiler's; alone it ran 14.9 s on 1 CPU, 7.1 s on 2.
        let mut p = profile(1, &[(None, 26_600, 15_000.0, 4)]);
        let quiet = ProgramModel::fit(std::slice::from_ref(&p)).unwrap();
        assert!(!quiet.notes.iter().any(|n| n.contains("profiler")));
        assert!(
            quiet.time_ms(2, 1.0) > 19_000.0,
            "{}",
            quiet.time_ms(2, 1.0)
        );
        p.phases[0].profiler_cpu_ms = Some(11_500.0);
        let m = ProgramModel::fit(std::slice::from_ref(&p)).unwrap();
        let note = m.notes.iter().find(|n| n.contains("profiler")).unwrap();
        assert!(note.contains("11.5 s") && note.contains("77 %"), "{note}");
        // 15.1 s alone: 15.0 s of work over 4 threads, 0.1 s of waiting.
        assert!(close(m.time_ms(1, 1.0), 15_100.0), "{}", m.time_ms(1, 1.0));
        assert!(close(m.time_ms(2, 1.0), 7_600.0), "{}", m.time_ms(2, 1.0));
        // A serial phase profiled on 1 CPU: the profiler took the CPU from
        // it too. Profiled on 2 CPUs, it had a CPU to spare.
        let mut s1 = profile(1, &[(None, 2_000, 1_000.0, 1)]);
        s1.phases[0].profiler_cpu_ms = Some(1_000.0);
        let m = ProgramModel::fit(&[s1]).unwrap();
        assert!(close(m.time_ms(2, 1.0), 1_000.0), "{}", m.time_ms(2, 1.0));
        let mut s2 = profile(2, &[(None, 1_500, 1_000.0, 1)]);
        s2.phases[0].profiler_cpu_ms = Some(700.0);
        let m = ProgramModel::fit(&[s2]).unwrap();
        assert!(close(m.time_ms(2, 1.0), 1_500.0), "{}", m.time_ms(2, 1.0));
        // A cheap profiler (natively about 1 %) is not worth a note.
        let mut p = profile(1, &[(None, 1_000, 1_000.0, 1)]);
        p.phases[0].profiler_cpu_ms = Some(10.0);
        let m = ProgramModel::fit(&[p]).unwrap();
        assert!(!m.notes.iter().any(|n| n.contains("profiler")));
    }

    #[test]
    fn runs_cut_differently_are_modelled_whole() {
        // 1 CPU: serial 1 s then 4 s of work on 4 threads, seen as two
        // phases; 2 CPUs: the detector saw one phase of 3 s.
        let a = profile(1, &[(None, 1000, 1000.0, 1), (None, 4000, 4000.0, 4)]);
        let b = profile(2, &[(None, 3000, 5000.0, 4)]);
        let m = ProgramModel::fit(&[a, b]).unwrap();
        assert_eq!(m.phases.len(), 1);
        assert!(m.notes[0].contains("one phase"));
        assert!(close(m.time_ms(4, 1.0), 2000.0), "{}", m.time_ms(4, 1.0));
        // Named phases survive unnamed ones that differ.
        let a = profile(1, &[(None, 100, 100.0, 1), (Some("x"), 1000, 1000.0, 1)]);
        let b = profile(2, &[(Some("x"), 1000, 1000.0, 1)]);
        let m = ProgramModel::fit(&[a, b]).unwrap();
        let names: Vec<&str> = m.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["x", "(unnamed)"]);
    }

    #[test]
    fn repeated_runs_are_stood_for_by_their_median_not_pulled_by_a_slow_one() {
        // Three runs of a serial 2 s program; the host slowed one to 6 s.
        let runs: Vec<Profile> = [2000, 6000, 2100]
            .iter()
            .map(|&d| profile(1, &[(Some("x"), d, d as f64, 1)]))
            .collect();
        let m = ProgramModel::fit(&runs).unwrap();
        assert!(close(m.time_ms(1, 1.0), 2100.0), "{}", m.time_ms(1, 1.0));
        // Of two, the mean of both.
        let m = ProgramModel::fit(
            &runs[..1]
                .iter()
                .chain(&runs[2..])
                .cloned()
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(close(m.time_ms(1, 1.0), 2050.0), "{}", m.time_ms(1, 1.0));
    }

    #[test]
    fn measured_host_scaling_interpolates_and_is_capped() {
        let h = HostCpus {
            cores: Some(2),
            measured: vec![(4, 1.8), (2, 1.5)],
        };
        assert!(close(h.effective(1), 1.0) && close(h.effective(2), 1.5));
        assert!(close(h.effective(3), 1.65), "{}", h.effective(3));
        assert!(close(h.effective(4), 1.8) && close(h.effective(16), 1.8));
        assert!(close(HostCpus::cores(2).effective(4), 2.0));
        assert!(close(HostCpus::default().effective(8), 8.0));
        // A fitted phase runs at the effective CPUs: 4 s of work on 4
        // threads, 1.5 CPUs' worth on 2 vCPUs.
        let p = profile(1, &[(Some("all"), 4000, 4000.0, 4)]);
        let m = ProgramModel::fit_on(std::slice::from_ref(&p), &h).unwrap();
        assert!(close(m.time_at(h.effective(2), 1.0), 4000.0 / 1.5));
    }

    #[test]
    fn a_phase_seen_in_some_runs_only_is_modelled_whatever_the_order() {
        // The unnamed start-up phase was caught in one run of two.
        let a = profile(1, &[(Some("x"), 1000, 1000.0, 1)]);
        let b = profile(1, &[(None, 100, 100.0, 1), (Some("x"), 1000, 1000.0, 1)]);
        let one = ProgramModel::fit(&[a.clone(), b.clone()]).unwrap();
        let other = ProgramModel::fit(&[b, a]).unwrap();
        assert_eq!(one.phases.len(), 2, "{:?}", one.phases);
        assert!(close(one.time_ms(1, 1.0), other.time_ms(1, 1.0)));
    }

    #[test]
    fn one_run_s_stray_unnamed_time_is_not_taken_for_every_run_s() {
        // Three runs of one program; one began with 500 ms before its
        // first named phase (validation run T's mem-2).
        let plain = profile(2, &[(Some("x"), 1000, 1000.0, 1)]);
        let stray = profile(2, &[(None, 500, 450.0, 1), (Some("x"), 1000, 1000.0, 1)]);
        for runs in [
            [stray.clone(), plain.clone(), plain.clone()],
            [plain.clone(), plain.clone(), stray.clone()],
        ] {
            let m = ProgramModel::fit(&runs).unwrap();
            assert_eq!(m.phases.len(), 2, "{:?}", m.phases);
            assert!(close(m.time_ms(2, 1.0), 1000.0), "{}", m.time_ms(2, 1.0));
        }
        // Where most runs have it, it counts.
        let m = ProgramModel::fit(&[stray.clone(), stray, plain]).unwrap();
        assert!(close(m.time_ms(2, 1.0), 1500.0), "{}", m.time_ms(2, 1.0));
    }

    #[test]
    fn on_fewer_cores_than_vcpus_a_profile_counts_the_cores() {
        // 4 vCPUs on 2 cores: 1 s serial and 4 s of work on 4 threads took
        // 1 + 4/2 = 3 s, 5 s of CPU.
        let p = profile(4, &[(Some("all"), 3000, 5000.0, 4)]);
        let m = ProgramModel::fit_on(std::slice::from_ref(&p), &HostCpus::cores(2)).unwrap();
        assert!(close(m.phases[0].serial_ms, 1000.0) && close(m.phases[0].parallel_ms, 4000.0));
        // Taken as 4 real cores, the same run reads as more serial work.
        let m = ProgramModel::fit(&[p]).unwrap();
        assert!(m.phases[0].serial_ms > 2000.0, "{:?}", m.phases[0]);
    }

    #[test]
    fn profiles_that_cannot_be_used_are_refused() {
        let a = profile(1, &[(Some("x"), 1000, 1000.0, 1)]);
        let mut other = a.clone();
        other.command = vec!["./else".into()];
        assert!(matches!(
            ProgramModel::fit(&[a.clone(), other]),
            Err(PredictError::OtherProgram(2))
        ));
        let mut old = a.clone();
        old.cpus = 0;
        assert!(matches!(
            ProgramModel::fit(&[old]),
            Err(PredictError::NoCpus(1))
        ));
        let mut empty = a;
        empty.phases.clear();
        assert!(matches!(
            ProgramModel::fit(&[empty]),
            Err(PredictError::EmptyProfile(1))
        ));
        assert!(matches!(
            ProgramModel::fit(&[]),
            Err(PredictError::NoProfile)
        ));
    }

    #[test]
    fn the_time_formula_caps_at_the_threads() {
        let m = PhaseModel {
            name: "x".into(),
            wait_ms: 100.0,
            serial_ms: 100.0,
            parallel_ms: 800.0,
            contention_ms: 0.0,
            threads: 2,
            io_class: "none".into(),
            io_bytes_per_sec: 0,
            working_set_bytes: 0,
            peak_bytes: 0,
            functions: Vec::new(),
            fitted_from: vec![1],
            observed_ms: vec![1000.0],
        };
        assert!(close(m.time_ms(1, 1.0), 1000.0));
        assert!(close(m.time_ms(2, 1.0), 600.0));
        assert!(close(m.time_ms(8, 1.0), 600.0), "2 threads");
        assert!(close(m.time_ms(2, 2.0), 350.0), "wait does not speed up");
    }
}
