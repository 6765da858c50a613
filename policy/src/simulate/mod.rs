//! The trace simulator: replays a recorded trace (the guest's demand
//! samples, its hints, and optionally what the VM really had) through the
//! very same [`Engine`] perfvmm runs, with resize latencies drawn from a
//! [`LatencyModel`], and measures allocation slack and shortage the way
//! `resize-bench` does. Reference: `docs/simulator.md`.
//!
//! Pure, like the rest of this crate: [`Trace::parse`] takes the trace's
//! text and [`LatencyModel::from_json`] a latency file's; the caller reads
//! the files.
//!
//! What the simulation does, step by step, as perfvmm's hint path and
//! controller do (`vmm/src/control/`):
//!
//! * each hint, decoded into the wire format's
//!   [`Hint`](guest_hints::wire::Hint), goes to
//!   [`Engine::on_hint`] at its time, which puts a manifest's schedule or
//!   a standalone `phase_needs` in force itself;
//! * every [`SimConfig::tick`] (perfvmm's 200 ms) the controller times the
//!   grows the guest has taken ([`Engine::observe_latency`]), reports the
//!   memory the VM must keep — what the guest has less its `MemAvailable`,
//!   refreshed every [`SimConfig::stats_period`] as the balloon's
//!   statistics are ([`Engine::observe_memory_in_use`]) — and the busy
//!   vCPUs since the previous tick ([`Engine::observe_usage`]), then calls
//!   [`Engine::tick`];
//! * every decision is applied at once, and the guest has the new size a
//!   latency later, drawn from the model with a seeded RNG ([`Rng`]); a
//!   newer decision for the same resource replaces one not yet visible;
//! * each demand sample is compared with what the guest had at that time.

mod latency;
mod report;
mod trace;

use std::time::Duration;

pub use latency::{LatencyError, LatencyModel, Rng, MAX_LATENCIES, MAX_LATENCY_MS};
pub use report::{
    Difference, Figures, Fit, HintCounts, PerResource, Report, SimDecision, VALIDATION_POINTS,
};
pub use trace::{
    Demand, Measured, Record, TimedRecord, Trace, TraceError, TraceHeader, TraceHint, MAX_T_MS,
    TRACE_FORMAT, TRACE_VERSION,
};

use super::config::Policy;
use super::engine::{Decision, Engine, Resource};
use report::Sample;

/// A grow the guest has not taken after this long is no longer timed (as
/// perfvmm's controller gives up).
pub const LATENCY_GIVE_UP: Duration = Duration::from_secs(30);

/// What a simulation runs with.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub policy: Policy,
    pub latency: LatencyModel,
    pub seed: u64,
    /// perfvmm's controller tick (200 ms).
    pub tick: Duration,
    /// How often the guest's memory statistics are refreshed (1 s).
    pub stats_period: Duration,
}

impl SimConfig {
    /// perfvmm's timing: a tick every 200 ms, memory statistics every second.
    pub fn new(policy: Policy, latency: LatencyModel, seed: u64) -> Self {
        SimConfig {
            policy,
            latency,
            seed,
            tick: Duration::from_millis(200),
            stats_period: Duration::from_secs(1),
        }
    }
}

/// A decision applied and not yet visible in the guest.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    to: u64,
    at: Duration,
    index: usize,
}

/// The simulated VM and controller.
struct Sim<'a> {
    cfg: &'a SimConfig,
    engine: Engine,
    rng: Rng,
    /// What the guest has: vCPUs, memory bytes.
    guest: [u64; 2],
    inflight: [Option<InFlight>; 2],
    /// Grows being timed, as the controller does: (target, applied at).
    timing: [Option<(u64, u64, Duration)>; 2],
    decisions: Vec<SimDecision>,
    /// Memory the guest's kernel keeps out of `MemTotal`, in bytes.
    reserved: u64,
    /// The guest's memory statistics: (when refreshed, `MemAvailable` in bytes).
    stats: Option<(Duration, u64)>,
    last_demand: Option<Demand>,
    /// Busy vCPUs seen since the previous tick: (sum, samples).
    busy: (f64, u32),
    last_tick: Option<Duration>,
}

impl<'a> Sim<'a> {
    fn new(cfg: &'a SimConfig, header: &TraceHeader) -> Self {
        let vm = header.vm;
        Sim {
            cfg,
            engine: Engine::new(cfg.policy.clone(), vm),
            rng: Rng::new(cfg.seed),
            guest: [u64::from(vm.boot_vcpus), vm.boot_memory],
            inflight: [None, None],
            timing: [None, None],
            decisions: Vec::new(),
            reserved: header.reserved_kib.saturating_mul(1024),
            stats: None,
            last_demand: None,
            busy: (0.0, 0),
            last_tick: None,
        }
    }

    /// One hint, at its time, as perfvmm's hint path takes it: the engine
    /// puts a manifest's schedule, or a standalone `phase_needs`, in force.
    fn hint(&mut self, now: Duration, h: &TraceHint, counts: &mut HintCounts) {
        counts.total += 1;
        let Some(hint) = &h.hint else {
            counts.skipped += 1;
            return;
        };
        let (outcome, ds) = self.engine.on_stream_hint(now, h.stream, h.seq, hint);
        if h.outcome.as_deref().is_some_and(|o| o != outcome.as_str()) {
            counts.outcome_mismatches += 1;
        }
        self.apply(now, ds);
    }

    /// One demand sample: what the guest had then, and its busy vCPUs.
    fn demand(&mut self, t: Duration, d: Demand) -> Sample {
        self.last_demand = Some(d);
        let b = self.busy_now(d);
        self.busy.0 += b;
        self.busy.1 += 1;
        Sample {
            t,
            demand: d,
            alloc: self.guest,
        }
    }

    /// The guest takes every change due by `now`.
    fn advance(&mut self, now: Duration) {
        for r in Resource::ALL {
            if let Some(f) = self.inflight[r as usize].filter(|f| f.at <= now) {
                self.guest[r as usize] = f.to;
                self.decisions[f.index].visible_ms = Some(f.at.as_millis() as u64);
                self.inflight[r as usize] = None;
            }
        }
    }

    fn apply(&mut self, now: Duration, ds: Vec<Decision>) {
        for d in ds {
            let r = d.resource;
            let grow = d.to > d.from;
            let latency = self.cfg.latency.draw(r, grow, &mut self.rng);
            self.inflight[r as usize] = Some(InFlight {
                to: d.to,
                at: now + latency,
                index: self.decisions.len(),
            });
            self.timing[r as usize] = grow.then_some((d.from, d.to, now));
            self.decisions.push(SimDecision {
                t_ms: d.t_ms,
                resource: r,
                from: d.from,
                to: d.to,
                reason: d.reason,
                hints: d.hints,
                latency_ms: latency.as_millis() as u64,
                visible_ms: None,
            });
            // A zero latency is visible at once.
            self.advance(now);
        }
    }

    /// The controller's periodic work, in its order.
    fn tick(&mut self, now: Duration) {
        self.advance(now);
        self.time_grows(now);
        if let Some(bytes) = self.memory_in_use(now) {
            self.engine.observe_memory_in_use(bytes);
            self.engine
                .observe_usage(now, Resource::Memory, bytes as f64);
        }
        // perfvmm needs two ticks to measure run time over wall time.
        if self.last_tick.is_some() {
            let busy = match self.busy {
                (sum, n) if n > 0 => Some(sum / f64::from(n)),
                _ => self.last_demand.map(|d| self.busy_now(d)),
            };
            if let Some(b) = busy {
                self.engine.observe_usage(now, Resource::Vcpus, b);
            }
        }
        self.last_tick = Some(now);
        self.busy = (0.0, 0);
        let ds = self.engine.tick(now);
        self.apply(now, ds);
    }

    /// Grows the guest has taken: their latency goes to the engine.
    fn time_grows(&mut self, now: Duration) {
        for r in Resource::ALL {
            let Some((from, to, at)) = self.timing[r as usize] else {
                continue;
            };
            let waited = now.saturating_sub(at);
            let taken = self.guest[r as usize] >= to;
            if taken {
                self.engine
                    .observe_latency(r, waited, to.saturating_sub(from));
            }
            if taken || waited > LATENCY_GIVE_UP {
                self.timing[r as usize] = None;
            }
        }
    }

    /// The memory the VM must keep, as perfvmm's controller reports it:
    /// what the guest has less its `MemAvailable` from the latest
    /// statistics (refreshed every `stats_period` from the latest demand
    /// sample). The guest's `MemTotal` is what it has less the kernel's
    /// reserved memory, so this is `mem_used_kib` plus the reserved memory
    /// while the guest has room; when the replayed demand exceeds its
    /// `MemTotal`, `MemAvailable` is 0 and the VM must keep all it has.
    fn memory_in_use(&mut self, now: Duration) -> Option<u64> {
        let has = self.guest[Resource::Memory as usize];
        if let Some(d) = self.last_demand {
            let due = self
                .stats
                .is_none_or(|(at, _)| now.saturating_sub(at) >= self.cfg.stats_period);
            if due {
                let total = has.saturating_sub(self.reserved);
                let available = total.saturating_sub(d.mem_used_kib.saturating_mul(1024));
                self.stats = Some((now, available));
            }
        }
        self.stats
            .map(|(_, available)| has.saturating_sub(available))
    }

    /// vCPUs busy for a demand: its runnable tasks, as far as the guest has
    /// vCPUs to run them (the host sees vCPU threads' run time).
    fn busy_now(&self, d: Demand) -> f64 {
        d.running.min(self.guest[Resource::Vcpus as usize] as f64)
    }
}

/// What a replay collects besides the engine's decisions.
#[derive(Default)]
struct Replay {
    samples: Vec<Sample>,
    measured: Vec<(Duration, Measured)>,
    hints: HintCounts,
}

/// Replays `trace` through perfvmm's policy engine under `cfg`.
pub fn simulate(trace: &Trace, cfg: &SimConfig) -> Report {
    let mut sim = Sim::new(cfg, &trace.header);
    let tick = cfg.tick.max(Duration::from_millis(1));
    let mut next_tick = tick;
    let mut out = Replay::default();
    for rec in &trace.records {
        // Ticks due before the record; at the same time the record comes first.
        while next_tick < rec.t {
            sim.tick(next_tick);
            next_tick += tick;
        }
        sim.advance(rec.t);
        match &rec.record {
            Record::Hint(h) => sim.hint(rec.t, h, &mut out.hints),
            Record::Demand(d) => out.samples.push(sim.demand(rec.t, *d)),
            Record::Measured(m) => out.measured.push((rec.t, *m)),
        }
    }
    report(trace, cfg, sim, out)
}

/// The report of a finished replay.
fn report(trace: &Trace, cfg: &SimConfig, sim: Sim<'_>, out: Replay) -> Report {
    let reserved = trace.header.reserved_kib;
    let simulated = report::figures(&out.samples, reserved, |s| Some(s.alloc));
    let measured = (!out.measured.is_empty())
        .then(|| report::measured_figures(&out.samples, &out.measured, reserved));
    let count = |r: Resource| sim.decisions.iter().filter(|d| d.resource == r).count();
    let lead = |r: Resource| sim.engine.lead(r).as_millis() as u64;
    Report {
        source: trace.header.source.clone(),
        mode: cfg.policy.mode.as_str(),
        latency: cfg.latency.name.clone(),
        seed: cfg.seed,
        samples: out.samples.len(),
        duration_ms: report::duration_ms(&out.samples),
        hints: out.hints,
        decision_counts: PerResource {
            vcpus: count(Resource::Vcpus),
            memory: count(Resource::Memory),
        },
        lead_ms: PerResource {
            vcpus: lead(Resource::Vcpus),
            memory: lead(Resource::Memory),
        },
        difference_points: measured.map(|m| Difference::between(&simulated, &m)),
        measured,
        simulated,
        decisions: sim.decisions,
    }
}

/// What the tests of this module and its parts share.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::config::Mode;

    /// The trace shipped with perfvmm (synthetic, see docs/simulator.md).
    pub const DEMO: &str = include_str!("../../traces/demo-nested.jsonl");

    pub const HEADER: &str = r#"{"format":"perfvmm-trace","version":1,"vm":{"boot_vcpus":1,"max_vcpus":4,"boot_memory":536870912,"max_memory":1073741824}}"#;

    pub fn demo() -> Trace {
        Trace::parse(DEMO).unwrap()
    }

    pub fn config(mode: Mode, latency: LatencyModel) -> SimConfig {
        let policy = Policy {
            mode,
            ..Policy::default()
        };
        SimConfig::new(policy, latency, 1)
    }

    pub fn run(mode: Mode) -> Report {
        simulate(&demo(), &config(mode, LatencyModel::nested()))
    }
}

#[cfg(test)]
mod tests {
    use guest_hints::wire::Hint;

    use super::testing::{config, demo, run, HEADER};
    use super::*;
    use crate::config::Mode;

    /// The time of the hint with this sequence number, in ms.
    fn hint_ms(t: &Trace, seq: u32) -> u64 {
        t.records
            .iter()
            .find_map(|r| match &r.record {
                Record::Hint(h) if h.seq == seq => Some(r.t.as_millis() as u64),
                _ => None,
            })
            .unwrap()
    }

    fn decisions(r: &Report, res: Resource) -> Vec<&SimDecision> {
        r.decisions.iter().filter(|d| d.resource == res).collect()
    }

    #[test]
    fn static_mode_decides_nothing() {
        let r = run(Mode::Static);
        assert_eq!(r.mode, "static");
        assert!(r.decisions.is_empty(), "{:?}", r.decisions);
        assert_eq!(r.hints.total, 14);
        let s = &r.simulated;
        // 1 vCPU all along: the parallel phase is short of CPUs.
        assert_eq!(s.cpu.mean, 1.0);
        assert!(s.cpu.shortage > 0.15 && s.cpu.shortage < 0.4, "{s:?}");
        assert!(s.cpu.deficit > 0.3, "{s:?}");
        // 512 MiB less the kernel's 47 MiB, never short.
        assert_eq!(s.memory.mean, 465.0);
        assert_eq!(s.memory.shortage, 0.0);
        assert!(s.memory.slack > 0.5 && s.memory.slack < 0.9, "{s:?}");
        // 12.8 s of samples, the last one standing for 100 ms: 12.9 s.
        assert!((s.vcpu_seconds - 12.9).abs() < 1e-9, "{}", s.vcpu_seconds);
        assert!(
            (s.gib_seconds - 12.9 / 2.0).abs() < 1e-9,
            "{}",
            s.gib_seconds
        );
        assert!(r.measured.is_none() && r.difference_points.is_none());
    }

    #[test]
    fn hints_mode_decides_at_the_phase_boundaries() {
        let t = demo();
        let r = run(Mode::Hints);
        let v = decisions(&r, Resource::Vcpus);
        // The manifest's 4 tasks grow the VM at once; the serial phase's
        // 1 task shrinks it after the 2 s window; the serial phase's end
        // brings the manifest's 4 back (between phases the manifest is the
        // demand), 10 ms before the parallel phase asks for them; the idle
        // hint's 1 shrinks it after the window.
        let steps: Vec<(u64, u64, u64)> = v.iter().map(|d| (d.t_ms, d.from, d.to)).collect();
        let (manifest, serial, serial_end, idle) = (
            hint_ms(&t, 0),
            hint_ms(&t, 1),
            hint_ms(&t, 3),
            hint_ms(&t, 13),
        );
        assert_eq!(steps[0], (manifest, 1, 4), "{steps:?}");
        assert_eq!((steps[1].1, steps[1].2), (4, 1), "{steps:?}");
        assert!(
            steps[1].0 >= serial + 2_000 && steps[1].0 < serial_end,
            "{steps:?}"
        );
        assert_eq!(steps[2], (serial_end, 1, 4), "{steps:?}");
        assert_eq!(hint_ms(&t, 4) - serial_end, 10);
        assert_eq!((steps[3].1, steps[3].2), (4, 1), "{steps:?}");
        assert!(steps[3].0 >= idle + 2_000, "{steps:?}");
        assert_eq!(steps.len(), 4, "{steps:?}");
        // Memory: the memory phase's peak (512 MiB + 192 MiB reserve)
        // grows it at the phase's start.
        let m = decisions(&r, Resource::Memory);
        let memory_phase = hint_ms(&t, 7);
        assert!(
            m.iter()
                .any(|d| d.t_ms == memory_phase && d.to == 704 << 20),
            "{m:?}"
        );
        // Every decision becomes visible one drawn latency later.
        for d in &r.decisions {
            if let Some(at) = d.visible_ms {
                assert_eq!(at, d.t_ms + d.latency_ms, "{d:?}");
                assert!(LatencyModel::nested()
                    .list(d.resource, true)
                    .contains(&d.latency_ms));
            }
        }
        // The parallel phase waits for its vCPUs: some shortage, less than static.
        let s = run(Mode::Static).simulated;
        assert!(
            r.simulated.cpu.deficit < s.cpu.deficit,
            "{:?} vs {:?}",
            r.simulated,
            s
        );
    }

    #[test]
    fn schedule_mode_without_a_schedule_follows_the_hints() {
        // The demo's manifest carries no per-phase schedule.
        let (h, s) = (run(Mode::Hints), run(Mode::Schedule));
        assert_eq!(s.mode, "schedule");
        assert_eq!(h.decisions, s.decisions);
        assert_eq!(h.simulated, s.simulated);
    }

    #[test]
    fn reactive_mode_grows_after_usage_rises() {
        let t = demo();
        let r = run(Mode::Reactive);
        let v = decisions(&r, Resource::Vcpus);
        let parallel = hint_ms(&t, 4);
        let first_grow_to_4 = v.iter().find(|d| d.to == 4).expect("grows to 4 in the end");
        assert!(first_grow_to_4.t_ms > parallel, "{v:?}");
        assert!(
            v.iter()
                .all(|d| d.reason.contains("usage") || d.reason.starts_with("shrink")),
            "{v:?}"
        );
        // No vCPU grows before the parallel phase but for helper noise
        // (at most 2 vCPUs); none reacts to the manifest.
        assert!(
            v.iter().filter(|d| d.t_ms < parallel).all(|d| d.to <= 2),
            "{v:?}"
        );
        // The host sees at most the vCPUs the guest has: the VM climbs step by step.
        let climb: Vec<u64> = v
            .iter()
            .filter(|d| d.t_ms >= parallel && d.to > d.from)
            .map(|d| d.to)
            .collect();
        assert!(climb.len() >= 2, "{v:?}");
        // Memory follows the guest's memory in use, never the hinted peak.
        let m = decisions(&r, Resource::Memory);
        assert!(m.iter().all(|d| d.to < 704 << 20), "{m:?}");
    }

    #[test]
    fn results_are_deterministic_for_a_seed() {
        for mode in [Mode::Static, Mode::Reactive, Mode::Hints, Mode::Schedule] {
            let a = simulate(&demo(), &config(mode, LatencyModel::nested()));
            let b = simulate(&demo(), &config(mode, LatencyModel::nested()));
            assert_eq!(a, b, "{mode:?}");
        }
        let mut c = config(Mode::Hints, LatencyModel::nested());
        let lat = |seed: u64, c: &mut SimConfig| {
            c.seed = seed;
            simulate(&demo(), c)
                .decisions
                .iter()
                .map(|d| d.latency_ms)
                .collect::<Vec<_>>()
        };
        let draws: Vec<Vec<u64>> = (0..8).map(|s| lat(s, &mut c)).collect();
        assert!(
            draws.windows(2).any(|w| w[0] != w[1]),
            "seeds change the draws"
        );
    }

    #[test]
    fn hardware_latency_shortens_the_shortage() {
        let n = run(Mode::Hints).simulated;
        let h = simulate(&demo(), &config(Mode::Hints, LatencyModel::hardware())).simulated;
        assert!(h.cpu.deficit < n.cpu.deficit, "{h:?} vs {n:?}");
    }

    #[test]
    fn unknown_hint_kinds_are_skipped_and_outcomes_compared() {
        let t = Trace::parse(&format!(
            "{HEADER}\n\
             {{\"t_ms\":0,\"hint\":{{\"seq\":0,\"kind\":\"teleport\",\"fields\":{{}}}}}}\n\
             {{\"t_ms\":0,\"hint\":{{\"seq\":1,\"kind\":\"parallelism\",\"fields\":{{\"runnable_tasks\":9}},\"outcome\":\"accepted\"}}}}\n\
             {{\"t_ms\":0,\"demand\":{{\"running\":1,\"mem_used_kib\":1}}}}"
        ))
        .unwrap();
        let r = simulate(&t, &config(Mode::Hints, LatencyModel::hardware()));
        // 9 tasks on a 4-vCPU VM: perfvmm clamps it, the log said accepted.
        assert_eq!(
            r.hints,
            HintCounts {
                total: 2,
                skipped: 1,
                outcome_mismatches: 1
            }
        );
        assert_eq!(r.decisions[0].to, 4);
    }

    #[test]
    fn a_schedule_is_provisioned_ahead_and_its_lead_adapts() {
        // A manifest whose schedule has a 4-thread phase 3 s in; hardware
        // latency. The lead starts at the policy's 1 s and then follows the
        // measured latency (rounded up to the 200 ms tick), with its margin.
        let manifest = r#"{"t_ms":1000,"hint":{"seq":0,"kind":"manifest","fields":{"app":"a","schedule":[{"id":1,"start_ms":0,"duration_ms":3000,"parallelism_p50_milli":1000,"parallelism_p95_milli":1000},{"id":2,"start_ms":3000,"duration_ms":2000,"parallelism_p50_milli":3500,"parallelism_p95_milli":3800,"working_set_bytes":1048576}]}}}"#;
        let mut text = format!("{HEADER}\n");
        for i in 0..100 {
            text.push_str(&format!(
                "{{\"t_ms\":{},\"demand\":{{\"running\":1,\"mem_used_kib\":1}}}}\n",
                i * 100
            ));
            if i == 10 {
                text.push_str(manifest);
                text.push('\n');
            }
        }
        let t = Trace::parse(&text).unwrap();
        let Some(Hint::Manifest(m)) = t.records.iter().find_map(|r| match &r.record {
            Record::Hint(h) => h.hint,
            _ => None,
        }) else {
            panic!("a manifest")
        };
        let Some([Some(p1), Some(p2)]) = m.schedule.get(..2) else {
            panic!("two scheduled phases: {m:?}")
        };
        assert_eq!((p1.id, p2.parallelism_p95_milli), (1, 3_800));
        assert!(m.schedule[2..].iter().all(Option::is_none));
        let r = simulate(&t, &config(Mode::Schedule, LatencyModel::hardware()));
        let v = decisions(&r, Resource::Vcpus);
        // Phase 2 is expected at 4 s: provisioned the policy's 900 ms per
        // vCPU added (three) before.
        assert_eq!((v[0].t_ms, v[0].to), (1_400, 4), "{v:?}");
        // One measurement (200 ms, at the next tick) does not undercut the
        // policy's initial 1 s.
        assert_eq!(r.lead_ms.vcpus, 900, "the initial lead (per vCPU) holds");
        // In hints mode the schedule is not used.
        let h = simulate(&t, &config(Mode::Hints, LatencyModel::hardware()));
        assert!(decisions(&h, Resource::Vcpus).is_empty());
    }

    /// A trace of demand samples every 100 ms for 10 s, with `hints` (JSON
    /// records) added after the sample at 1 s.
    fn trace_with(hints: &[&str]) -> Trace {
        let mut text = format!("{HEADER}\n");
        for i in 0..100 {
            text.push_str(&format!(
                "{{\"t_ms\":{},\"demand\":{{\"running\":1,\"mem_used_kib\":1}}}}\n",
                i * 100
            ));
            if i == 10 {
                for h in hints {
                    text.push_str(h);
                    text.push('\n');
                }
            }
        }
        Trace::parse(&text).unwrap()
    }

    #[test]
    fn a_standalone_phase_needs_goes_to_the_engine() {
        // Phase 1 expected 2 s after it arrives, needing the 3 threads the
        // profile saw running (its effective parallelism is 1): the engine
        // takes the most threads seen running.
        let needs = r#"{"t_ms":1000,"hint":{"seq":0,"kind":"phase_needs","fields":{"id":1,"start_ms":2000,"duration_ms":3000,"parallelism_p50_milli":900,"parallelism_p95_milli":1000,"max_useful":3,"working_set_bytes":0,"peak_bytes":0,"io_class":"none","io_bytes_per_sec":0}}}"#;
        let t = trace_with(&[needs]);
        let Record::Hint(h) = &t.records[11].record else {
            panic!("{:?}", t.records[11])
        };
        let Some(Hint::PhaseNeeds(n)) = h.hint else {
            panic!("{h:?}")
        };
        assert_eq!((n.id, n.max_useful, n.parallelism_p95_milli), (1, 3, 1_000));
        let r = simulate(&t, &config(Mode::Schedule, LatencyModel::hardware()));
        assert_eq!(r.hints.skipped, 0);
        let v = decisions(&r, Resource::Vcpus);
        // Due at 3 s, provisioned the policy's 900 ms per vCPU added (two) before.
        assert_eq!((v[0].t_ms, v[0].from, v[0].to), (1_200, 1, 3), "{v:?}");
        assert!(v[0].reason.contains("scheduled phase 1"), "{v:?}");
        // In hints mode a schedule is not used.
        let h = simulate(&t, &config(Mode::Hints, LatencyModel::hardware()));
        assert!(decisions(&h, Resource::Vcpus).is_empty());
    }

    #[test]
    fn hints_perfvmm_would_not_decode_are_refused() {
        let bad = |fields: &str, kind: &str| {
            let text = format!(
                "{HEADER}\n{{\"t_ms\":0,\"hint\":{{\"seq\":0,\"kind\":\"{kind}\",\"fields\":{fields}}}}}"
            );
            Trace::parse(&text).unwrap_err().to_string()
        };
        let e = bad(
            r#"{"runnable_tasks":1,"serial_ppm":1000001}"#,
            "parallelism",
        );
        assert!(
            e.contains("line 2: parallelism hint: serial_ppm 1000001 is above 1000000"),
            "{e}"
        );
        let e = bad(
            r#"{"schedule":[{"id":7,"start_ms":0,"duration_ms":1,"parallelism_p50_milli":2000,"parallelism_p95_milli":1000}]}"#,
            "manifest",
        );
        assert!(
            e.contains("line 2: manifest hint: phase 7: the wire format refuses"),
            "{e}"
        );
    }

    /// Reactive mode over 10 s of a guest using 160 MiB, then 400 MiB from
    /// 6 s on, on a VM whose kernel keeps `reserved_kib` out of `MemTotal`:
    /// the memory decisions (ms, MiB before, MiB after).
    fn reactive_memory(reserved_kib: Option<u64>) -> Vec<(u64, u64, u64)> {
        let reserved = reserved_kib.map_or(String::new(), |r| format!(",\"reserved_kib\":{r}"));
        let mut text = HEADER.replace("1073741824}", &format!("1073741824{reserved}}}"));
        for i in 0..100 {
            let used: u64 = if i < 60 { 160 << 10 } else { 400 << 10 };
            text.push_str(&format!(
                "\n{{\"t_ms\":{},\"demand\":{{\"running\":1,\"mem_used_kib\":{used}}}}}",
                i * 100
            ));
        }
        let t = Trace::parse(&text).unwrap();
        let r = simulate(&t, &config(Mode::Reactive, LatencyModel::hardware()));
        decisions(&r, Resource::Memory)
            .iter()
            .map(|d| (d.t_ms, d.from >> 20, d.to >> 20))
            .collect()
    }

    #[test]
    fn memory_in_use_is_what_the_vm_must_keep() {
        // Without reserved memory: 160 MiB in use, plus the 10 % margin.
        let m = reactive_memory(None);
        assert_eq!((m[0].1, m[0].2), (512, 176), "{m:?}");
        // The kernel's 48 MiB count: the allocation less MemAvailable is
        // 208 MiB, plus the margin (rounded up to the 2 MiB step).
        let m = reactive_memory(Some(48 << 10));
        assert_eq!((m[0].1, m[0].2), (512, 230), "{m:?}");
        // Past the guest's MemTotal (202 MiB) MemAvailable is 0: perfvmm
        // sees the VM keep all it has, not the replayed 400 MiB (448 MiB
        // with the kernel's), and grows by the margin.
        let grow = m.iter().find(|d| d.2 > d.1).expect("a grow");
        assert!(grow.0 >= 6_000 && grow.2 <= 300, "{m:?}");
    }
}
