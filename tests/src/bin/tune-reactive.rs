//! Tunes the `reactive` policy's parameters on a training set of traces,
//! so that the baseline hints are compared with is a serious one (issue 11).
//!
//! Each training trace is a run of a training workload in the static VM
//! (sized for the peak, so that its demand is the workload's own, not what a
//! smaller VM let it have), recorded by
//!
//!   cargo run --release -p perfvmm-tests --bin resize-bench -- --only workloads \
//!       --workloads sort,autopar --modes static --traces DIR
//!
//! Every point of a grid of `window_ms` × `percentile` × `margin` replays
//! every trace through the policy engine (`perfvmm simulate`'s code) as the
//! elastic VM of the benchmark (1 to 4 vCPUs, 512 MiB to 1 GiB) with the
//! nested latency model, several seeds each. The chosen point is the one
//! with the least mean slack (CPU and memory alike) among those whose mean
//! CPU and memory shortage are both at most 1 % — the project's own
//! target — or, when none is, the one with the least shortage.
//!
//!   cargo run --release -p perfvmm-tests --bin tune-reactive -- [--latency nested|hardware]
//!       [--seeds N] TRACE.jsonl...

use std::path::PathBuf;

use perfvmm_policy::config::{Mode, Policy, ReactivePolicy};
use perfvmm_policy::engine::VmLimits;
use perfvmm_policy::simulate::{simulate, LatencyModel, SimConfig, Trace};
use perfvmm_tests::bench;

/// The benchmark's elastic VM (resize-bench's `--cpus 1,max=4 --memory
/// 512M,max=1G`).
const ELASTIC: VmLimits = VmLimits {
    boot_vcpus: 1,
    max_vcpus: 4,
    boot_memory: 512 << 20,
    max_memory: 1 << 30,
};

const WINDOWS_MS: [u64; 5] = [2_000, 5_000, 10_000, 20_000, 40_000];
const PERCENTILES: [f64; 5] = [0.5, 0.75, 0.9, 0.95, 1.0];
const MARGINS: [f64; 5] = [0.0, 0.1, 0.2, 0.35, 0.5];
/// The project's shortage target.
const MAX_SHORTAGE: f64 = 0.01;

/// Means over the training traces and seeds, as fractions.
#[derive(Clone, Copy, Default)]
struct Score {
    cpu_slack: f64,
    cpu_shortage: f64,
    mem_slack: f64,
    mem_shortage: f64,
}

impl Score {
    fn slack(&self) -> f64 {
        (self.cpu_slack + self.mem_slack) / 2.0
    }

    fn shortage(&self) -> f64 {
        self.cpu_shortage.max(self.mem_shortage)
    }

    fn meets_target(&self) -> bool {
        self.shortage() <= MAX_SHORTAGE
    }
}

fn score(traces: &[Trace], params: ReactivePolicy, latency: &LatencyModel, seeds: u64) -> Score {
    let policy = Policy {
        mode: Mode::Reactive,
        reactive: params,
        ..Policy::default()
    };
    let mut sum = Score::default();
    let mut n = 0.0;
    for trace in traces {
        for seed in 0..seeds {
            let r = simulate(
                trace,
                &SimConfig::new(policy.clone(), latency.clone(), seed),
            );
            let f = r.simulated;
            sum.cpu_slack += f.cpu.slack;
            sum.cpu_shortage += f.cpu.shortage;
            sum.mem_slack += f.memory.slack;
            sum.mem_shortage += f.memory.shortage;
            n += 1.0;
        }
    }
    let n = f64::max(n, 1.0);
    Score {
        cpu_slack: sum.cpu_slack / n,
        cpu_shortage: sum.cpu_shortage / n,
        mem_slack: sum.mem_slack / n,
        mem_shortage: sum.mem_shortage / n,
    }
}

/// The better of two points, given the least shortage of any point: those
/// within the shortage target (or, when no point meets it, within one point
/// of the least shortage — a difference the runs' own noise exceeds) come
/// first, the least slack among them; the others by shortage.
fn better(a: &Score, b: &Score, least_shortage: f64) -> bool {
    let limit = MAX_SHORTAGE.max(least_shortage + 0.01);
    match (a.shortage() <= limit, b.shortage() <= limit) {
        (true, false) => true,
        (false, true) => false,
        (true, true) => a.slack() < b.slack(),
        (false, false) => (a.shortage(), a.slack()) < (b.shortage(), b.slack()),
    }
}

fn load(path: &PathBuf) -> Result<Trace, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut trace = Trace::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    trace.header.vm = ELASTIC;
    Ok(trace)
}

fn pct(x: f64) -> String {
    format!("{:5.1}", x * 100.0)
}

fn main() {
    let mut latency = "nested".to_string();
    let mut seeds = 3;
    let mut paths = Vec::new();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    bench::help_or_go_on(&argv, USAGE);
    let mut args = argv.into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--latency" => latency = args.next().unwrap_or_default(),
            "--seeds" => match args.next().and_then(|s| s.parse().ok()) {
                Some(n) if n > 0 => seeds = n,
                _ => fail("--seeds takes a positive number"),
            },
            _ if a.starts_with('-') => fail(&format!("unknown argument {a}")),
            _ => paths.push(PathBuf::from(a)),
        }
    }
    if paths.is_empty() {
        fail("no training trace given");
    }
    let Some(model) = LatencyModel::builtin(&latency) else {
        fail("--latency takes nested or hardware");
    };
    let traces: Vec<Trace> = paths
        .iter()
        .map(load)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| fail(&e));
    let mut points = Vec::new();
    for window_ms in WINDOWS_MS {
        for percentile in PERCENTILES {
            for margin in MARGINS {
                let p = ReactivePolicy {
                    window_ms,
                    percentile,
                    margin,
                };
                points.push((p, score(&traces, p, &model, seeds)));
            }
        }
    }
    let least = points
        .iter()
        .map(|(_, s)| s.shortage())
        .fold(f64::INFINITY, f64::min);
    points.sort_by(|a, b| match better(&a.1, &b.1, least) {
        true => std::cmp::Ordering::Less,
        false if better(&b.1, &a.1, least) => std::cmp::Ordering::Greater,
        false => std::cmp::Ordering::Equal,
    });
    println!(
        "{} training traces × {seeds} seeds, {latency} latency; {} grid points; best first \
         (slack and shortage in %, means)",
        traces.len(),
        points.len()
    );
    println!("  window_ms  percentile  margin   CPU slack  shortage   mem slack  shortage");
    for (p, s) in points.iter().take(12) {
        println!(
            "  {:>9}  {:>10}  {:>6}      {}     {}       {}     {}",
            p.window_ms,
            p.percentile,
            p.margin,
            pct(s.cpu_slack),
            pct(s.cpu_shortage),
            pct(s.mem_slack),
            pct(s.mem_shortage)
        );
    }
    if let Some((p, s)) = points.first() {
        println!(
            "chosen: [reactive] window_ms = {}, percentile = {}, margin = {}{}",
            p.window_ms,
            p.percentile,
            p.margin,
            if s.meets_target() {
                String::new()
            } else {
                format!(
                    " (no point meets 1 % shortage; the least slack within a point of the least, {})",
                    pct(least).trim()
                )
            }
        );
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("tune-reactive: {msg}\n{USAGE}");
    std::process::exit(2);
}

const USAGE: &str = "usage: tune-reactive [--latency nested|hardware] [--seeds N] TRACE.jsonl...
  Replays each training trace (a static-VM run of resize-bench's training
  workloads, --traces DIR) through the reactive policy for every point of
  a grid of window_ms x percentile x margin, and prints the best points:
  least slack among those with CPU and memory shortage <= 1 % (or, when
  none reaches it, within one point of the least shortage).";
