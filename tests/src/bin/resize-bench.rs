//! Resize benchmark, in the nested harness (prints figures, asserts nothing):
//!
//! 1. latency: hint → vCPU online and hint → hot-plugged memory usable, as
//!    the guest sees them (the policy's own decision takes well under 1 µs,
//!    see `cargo bench -p perfvmm-policy --bench engine`), with `shrink_after_ms = 0`;
//! 2. the demo workload in four VMs — static (sized for its peak), reactive
//!    (host-observed usage), hints (its hand-written hints) and schedule
//!    (its profile-derived schedule embedded) — sampled in the guest every
//!    100 ms: how often the parallel phase starts with its 4 vCPUs online,
//!    CPU (demand: the workload's own running threads; the shortage against
//!    every runnable task in the guest beside it) and memory slack,
//!    shortage and deficit, and the work's run time.
//!
//!    Each run is also recorded as a trace (its samples, its hint log) and
//!    replayed through `perfvmm simulate` with the nested latency model:
//!    the simulated figures against the measured ones validate the
//!    simulator (`docs/simulator.md`).
//!
//!   cargo run --release -p perfvmm-tests --bin resize-bench -- [--rounds N] [--only latency|demo]
//!       [--svg DIR] [--traces DIR]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use perfvmm_tests::fit::Fit;
use perfvmm_tests::timeline::Timeline;
use perfvmm_tests::trace::{self, VmShape};
use perfvmm_tests::{GuestRun, RunOutput};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn values(out: &RunOutput, key: &str) -> Vec<f64> {
    out.console.lines().filter_map(|l| field(l, key)).collect()
}

fn latency(rounds: u32) {
    let policy = "[timing]\nshrink_after_ms = 0\ncooldown_ms = 0\n";
    let out = GuestRun::demo(
        &format!("pvrun=latency pvrounds={rounds}"),
        &[
            "--cpus",
            "1,max=2",
            "--memory",
            "512M,max=1G",
            "--policy",
            "@FILES@/policy.toml",
        ],
    )
    .file("policy.toml", policy.as_bytes().to_vec())
    .timeout(Duration::from_secs(900))
    .run();
    let mut cpu = values(&out, "vcpu_online_ms");
    let mut mem = values(&out, "memory_plug_ms");
    if cpu.is_empty() || mem.is_empty() {
        println!("latency run failed; console tail:\n{}", out.tail(30));
        return;
    }
    println!("hint -> resize visible in the guest ({} rounds)", cpu.len());
    println!(
        "  vCPU online (1 -> 2, guest onliner polls every 50 ms): p50 {:.0} ms, max {:.0} ms",
        percentile(&mut cpu, 0.5),
        percentile(&mut cpu, 1.0)
    );
    println!(
        "  memory +128 MiB usable (virtio-mem plug + online): p50 {:.0} ms, max {:.0} ms",
        percentile(&mut mem, 0.5),
        percentile(&mut mem, 1.0)
    );
}

/// One sampled run of the demo workload.
struct DemoRun {
    /// Against the workload's own running threads.
    cpu: Fit,
    /// Against every runnable task in the guest (the earlier measure).
    cpu_all: Fit,
    mem: Fit,
    /// vCPUs online when the parallel phase (4 threads) began.
    parallel_start_cpus: u32,
    /// The workload's phases, start to end, in ms.
    work_ms: f64,
    /// Mean guest MemTotal in MiB.
    mean_mem_mib: f64,
    /// The simulator's figures less the measured ones, when the run's
    /// trace could be assembled and replayed.
    sim: Option<SimCheck>,
}

/// Simulated minus measured, in points (`perfvmm simulate`'s
/// `difference_points`).
#[derive(Clone, Copy)]
struct SimCheck {
    cpu_slack: f64,
    cpu_shortage: f64,
    memory_slack: f64,
    memory_shortage: f64,
}

impl SimCheck {
    fn worst(&self) -> f64 {
        [
            self.cpu_slack,
            self.cpu_shortage,
            self.memory_slack,
            self.memory_shortage,
        ]
        .iter()
        .fold(0.0, |m, d| m.max(d.abs()))
    }
}

/// Where a run's pictures and traces go.
#[derive(Default)]
struct Outputs {
    svg: Option<PathBuf>,
    traces: Option<PathBuf>,
}

/// A VM configuration the demo runs in.
struct Config {
    label: &'static str,
    /// Names the run's files.
    slug: &'static str,
    /// perfvmm's `--cpus` and `--memory`, for the trace's header.
    shape: VmShape,
    /// Which demo binary the guest runs: `plain` (hand-written hints) or
    /// `scheduled` (the same with its profile-derived schedule embedded).
    demo: &'static str,
    args: &'static [&'static str],
    policy: &'static str,
}

/// `--cpus 1,max=4 --memory 512M,max=1G`.
const ELASTIC: VmShape = VmShape {
    boot_vcpus: 1,
    max_vcpus: 4,
    boot_memory: 512 << 20,
    max_memory: 1 << 30,
};

const CONFIGS: [Config; 4] = [
    Config {
        label: "static, sized for the peak (4, 704M)",
        slug: "static",
        shape: VmShape {
            boot_vcpus: 4,
            max_vcpus: 4,
            boot_memory: 704 << 20,
            max_memory: 704 << 20,
        },
        demo: "plain",
        args: &["--cpus", "4", "--memory", "704M"],
        policy: "mode = \"static\"\n",
    },
    Config {
        label: "reactive (usage, p95 + 20 %, 10 s)",
        slug: "reactive",
        shape: ELASTIC,
        demo: "plain",
        args: &["--cpus", "1,max=4", "--memory", "512M,max=1G"],
        // Memory no lower than the boot size, so that this row compares CPU
        // sizing: a reactive balloon grows back only after the memory
        // phase has begun, and too slowly under emulation.
        policy: "mode = \"reactive\"\n[memory]\nmin = \"512M\"\n",
    },
    Config {
        label: "hints (hand-written)",
        slug: "hints",
        shape: ELASTIC,
        demo: "plain",
        args: &["--cpus", "1,max=4", "--memory", "512M,max=1G"],
        policy: "mode = \"hints\"\n",
    },
    Config {
        label: "schedule (profile-derived)",
        slug: "schedule",
        shape: ELASTIC,
        demo: "scheduled",
        args: &["--cpus", "1,max=4", "--memory", "512M,max=1G"],
        policy: "mode = \"schedule\"\n",
    },
];

fn sampled_demo(c: &Config, round: u32, outputs: &Outputs) -> Option<DemoRun> {
    let mut args: Vec<&str> = c.args.to_vec();
    args.extend([
        "--policy",
        "@FILES@/policy.toml",
        "--hint-log",
        "@FILES@/hints.jsonl",
        "--decision-log",
        "@FILES@/decisions.jsonl",
    ]);
    let out = GuestRun::demo(&format!("pvrun=sampled-demo pvdemo={}", c.demo), &args)
        .file("policy.toml", c.policy.as_bytes().to_vec())
        .fetch("hints.jsonl")
        .fetch("decisions.jsonl")
        .l1_cpus(4)
        .timeout(Duration::from_secs(300))
        .run();
    let samples: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.contains("sample t_ms="))
        .collect();
    let started = perfvmm_tests::parallel_start_cpus(&out.console)
        .first()
        .copied();
    let work_ms = out.guest_line_value("demo-workload: work done in ");
    let (Some(parallel_start_cpus), Some(work_ms)) = (started, work_ms) else {
        println!("{}: run failed; console tail:\n{}", c.label, out.tail(30));
        return None;
    };
    let pairs = |a: &str, b: &str| -> Vec<(f64, f64)> {
        samples
            .iter()
            .filter_map(|l| Some((field(l, a)?, field(l, b)?)))
            .collect()
    };
    let mem = pairs("mem_used_kib", "mem_total_kib");
    let mean_mem_mib = mem.iter().map(|m| m.1).sum::<f64>() / mem.len().max(1) as f64 / 1024.0;
    Some(DemoRun {
        cpu: Fit::of(&pairs("running", "cpus")),
        cpu_all: Fit::of(&pairs("procs", "cpus")),
        mem: Fit::of(&mem),
        parallel_start_cpus,
        work_ms: work_ms as f64,
        mean_mem_mib,
        sim: record(c, round, &out, outputs),
    })
}

/// Assembles the run's trace, replays it through the simulator, and draws
/// its timeline; says on standard error what could not be done.
fn record(c: &Config, round: u32, out: &RunOutput, outputs: &Outputs) -> Option<SimCheck> {
    let name = format!("{}-{}", c.slug, round + 1);
    let source = format!(
        "nested resize-bench: demo, {}, round {}",
        c.label,
        round + 1
    );
    let rec = trace::from_run(out, "hints.jsonl", c.shape, &source)
        .map_err(|e| eprintln!("resize-bench: {name}: no trace: {e}"))
        .ok();
    if let Some(dir) = &outputs.svg {
        let mut t = Timeline::from_console(&format!("demo workload, {}", c.label), &out.console);
        if let (Some(r), Some(log)) = (&rec, out.files.get("decisions.jsonl")) {
            t = t.with_decisions(log, r.offset_ms);
        }
        let path = dir.join(format!("{name}.svg"));
        match t.write_svg(&path) {
            Ok(()) => eprintln!("resize-bench: timeline {}", path.display()),
            Err(e) => eprintln!("resize-bench: {e}"),
        }
    }
    let rec = rec?;
    let dir = match &outputs.traces {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("resize-bench-{}", std::process::id())),
    };
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(format!("{name}.jsonl")), &rec.jsonl))
        .and_then(|()| std::fs::write(dir.join(format!("{name}.policy.toml")), c.policy));
    if let Err(e) = written {
        eprintln!("resize-bench: {}: {e}", dir.display());
        return None;
    }
    let check = simulate(&dir, &name);
    if outputs.traces.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    check
}

/// `perfvmm simulate` on a recorded trace with its policy and the nested
/// latency model: simulated minus measured.
fn simulate(dir: &Path, name: &str) -> Option<SimCheck> {
    let out = Command::new(perfvmm_tests::static_perfvmm())
        .arg("simulate")
        .arg("--trace")
        .arg(dir.join(format!("{name}.jsonl")))
        .arg("--policy")
        .arg(dir.join(format!("{name}.policy.toml")))
        .args(["--latency", "nested", "--json"])
        .output()
        .map_err(|e| eprintln!("resize-bench: perfvmm simulate: {e}"))
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "resize-bench: {name}: perfvmm simulate: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let d = &v["difference_points"];
    Some(SimCheck {
        cpu_slack: d["cpu_slack"].as_f64()?,
        cpu_shortage: d["cpu_shortage"].as_f64()?,
        memory_slack: d["memory_slack"].as_f64()?,
        memory_shortage: d["memory_shortage"].as_f64()?,
    })
}

/// "mean (min–max)" of a figure over runs, in percent.
fn spread(runs: &[DemoRun], f: impl Fn(&DemoRun) -> f64) -> String {
    let v: Vec<f64> = runs.iter().map(f).collect();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    format!("{:.1} ({:.1}-{:.1})", mean * 100.0, lo * 100.0, hi * 100.0)
}

fn demo(rounds: u32, outputs: &Outputs) {
    println!(
        "\ndemo workload ({rounds} runs per VM, alternating), sampled in the guest every 100 ms; \
         figures in % as mean (min-max)"
    );
    let mut runs: Vec<Vec<DemoRun>> = CONFIGS.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, c) in CONFIGS.iter().enumerate() {
            eprintln!("resize-bench: round {}/{rounds}: {}", round + 1, c.label);
            runs[i].extend(sampled_demo(c, round, outputs));
        }
    }
    println!(
        "  {:<38} {:>9} {:>18} {:>18} {:>18} {:>18} {:>18} {:>18} {:>9} {:>8}",
        "VM",
        "4 online",
        "CPU slack",
        "CPU shortage",
        "CPU deficit",
        "all shortage",
        "mem slack",
        "mem shortage",
        "work ms",
        "MemTotal"
    );
    let base = runs[0].iter().map(|r| r.work_ms).sum::<f64>() / runs[0].len().max(1) as f64;
    for (c, r) in CONFIGS.iter().zip(&runs) {
        if r.is_empty() {
            println!("  {:<38} no successful run", c.label);
            continue;
        }
        let on_time = r.iter().filter(|r| r.parallel_start_cpus >= 4).count();
        let work = r.iter().map(|r| r.work_ms).sum::<f64>() / r.len() as f64;
        let mem = r.iter().map(|r| r.mean_mem_mib).sum::<f64>() / r.len() as f64;
        println!(
            "  {:<38} {:>4}/{:<4} {:>18} {:>18} {:>18} {:>18} {:>18} {:>18} {:>9.0} {:>7.0}M",
            c.label,
            on_time,
            r.len(),
            spread(r, |r| r.cpu.slack),
            spread(r, |r| r.cpu.shortage),
            spread(r, |r| r.cpu.deficit),
            spread(r, |r| r.cpu_all.shortage),
            spread(r, |r| r.mem.slack),
            spread(r, |r| r.mem.shortage),
            work,
            mem
        );
        if base > 0.0 {
            println!(
                "  {:<38} work time {:+.1} % against static",
                "",
                (work / base - 1.0) * 100.0
            );
        }
    }
    print_validation(&runs);
}

/// The simulator against the runs: per VM, the largest simulated −
/// measured difference of the four figures, per run.
fn print_validation(runs: &[Vec<DemoRun>]) {
    println!(
        "\nsimulator validation: each run's trace replayed by `perfvmm simulate --latency nested`; \
         simulated - measured in points (CPU slack, CPU shortage, mem slack, mem shortage), \
         goal: all within 5"
    );
    let (mut all, mut within) = (0, 0);
    for (c, r) in CONFIGS.iter().zip(runs) {
        let cells: Vec<String> = r
            .iter()
            .map(|run| match run.sim {
                Some(d) => {
                    all += 1;
                    within += usize::from(d.worst() <= 5.0);
                    format!(
                        "{:+.1}/{:+.1}/{:+.1}/{:+.1}",
                        d.cpu_slack, d.cpu_shortage, d.memory_slack, d.memory_shortage
                    )
                }
                None => "no trace".to_string(),
            })
            .collect();
        println!("  {:<38} {}", c.label, cells.join("   "));
    }
    println!("  runs within 5 points on all four: {within}/{all}");
}

fn main() {
    let mut latency_rounds = 5;
    let mut rounds = 3;
    let mut only: Option<String> = None;
    let mut outputs = Outputs::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--latency-rounds" => latency_rounds = value().parse().unwrap_or(latency_rounds),
            "--rounds" => rounds = value().parse().unwrap_or(rounds),
            "--only" => only = Some(value()),
            "--svg" => outputs.svg = Some(PathBuf::from(value())),
            "--traces" => outputs.traces = Some(PathBuf::from(value())),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            _ => {
                eprintln!("resize-bench: unknown argument {a}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    for dir in [&outputs.svg, &outputs.traces].into_iter().flatten() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("resize-bench: {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
    if only.as_deref() != Some("demo") {
        latency(latency_rounds);
    }
    if only.as_deref() != Some("latency") {
        demo(rounds, &outputs);
    }
}

const USAGE: &str = "usage: resize-bench [--latency-rounds N] [--rounds N] [--only latency|demo]
                    [--svg DIR] [--traces DIR]
  latency:      hint -> resize visible in the guest, N rounds (5)
  demo:         the demo workload in a static, a reactive, a hint-driven and a
                schedule-driven VM, N runs each, alternating (3); each run's
                trace is replayed by `perfvmm simulate` and compared
  --svg DIR     a timeline picture per demo run (DIR/MODE-ROUND.svg)
  --traces DIR  keep each demo run's trace and policy (DIR/MODE-ROUND.jsonl)";
