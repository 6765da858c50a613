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
//!   cargo run --release -p perfvmm-tests --bin resize-bench -- [--rounds N] [--only latency|demo]

use std::time::Duration;

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

/// How well an allocation fitted the demand over a run's samples of
/// (demand, allocation): slack is the unused share of what was allocated,
/// shortage the share of samples where demand exceeded the allocation, and
/// deficit the demand-weighted share that was missing.
#[derive(Clone, Copy, Default)]
struct Fit {
    slack: f64,
    shortage: f64,
    deficit: f64,
}

fn fit(samples: &[(f64, f64)]) -> Fit {
    let alloc: f64 = samples.iter().map(|s| s.1).sum();
    let demand: f64 = samples.iter().map(|s| s.0).sum();
    let unused: f64 = samples.iter().map(|s| (s.1 - s.0).max(0.0)).sum();
    let missing: f64 = samples.iter().map(|s| (s.0 - s.1).max(0.0)).sum();
    let short = samples.iter().filter(|s| s.0 > s.1).count();
    Fit {
        slack: unused / alloc.max(f64::MIN_POSITIVE),
        shortage: short as f64 / samples.len().max(1) as f64,
        deficit: missing / demand.max(f64::MIN_POSITIVE),
    }
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
}

/// A VM configuration the demo runs in.
struct Config {
    label: &'static str,
    /// Which demo binary the guest runs: `plain` (hand-written hints) or
    /// `scheduled` (the same with its profile-derived schedule embedded).
    demo: &'static str,
    args: &'static [&'static str],
    policy: &'static str,
}

const CONFIGS: [Config; 4] = [
    Config {
        label: "static, sized for the peak (4, 704M)",
        demo: "plain",
        args: &["--cpus", "4", "--memory", "704M"],
        policy: "mode = \"static\"\n",
    },
    Config {
        label: "reactive (usage, p95 + 20 %, 10 s)",
        demo: "plain",
        args: &["--cpus", "1,max=4", "--memory", "512M,max=1G"],
        // Memory no lower than the boot size, so that this row compares CPU
        // sizing: a reactive balloon grows back only after the memory
        // phase has begun, and too slowly under emulation.
        policy: "mode = \"reactive\"\n[memory]\nmin = \"512M\"\n",
    },
    Config {
        label: "hints (hand-written)",
        demo: "plain",
        args: &["--cpus", "1,max=4", "--memory", "512M,max=1G"],
        policy: "mode = \"hints\"\n",
    },
    Config {
        label: "schedule (profile-derived)",
        demo: "scheduled",
        args: &["--cpus", "1,max=4", "--memory", "512M,max=1G"],
        policy: "mode = \"schedule\"\n",
    },
];

fn sampled_demo(c: &Config) -> Option<DemoRun> {
    let mut args: Vec<&str> = c.args.to_vec();
    args.extend(["--policy", "@FILES@/policy.toml"]);
    let out = GuestRun::demo(&format!("pvrun=sampled-demo pvdemo={}", c.demo), &args)
        .file("policy.toml", c.policy.as_bytes().to_vec())
        .l1_cpus(4)
        .timeout(Duration::from_secs(300))
        .run();
    let samples: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.contains("sample t_ms="))
        .collect();
    let started = out.console.lines().find_map(|l| {
        l.split_once("phase parallel (4 threads) starts with ")?
            .1
            .split(' ')
            .next()?
            .parse()
            .ok()
    });
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
        cpu: fit(&pairs("running", "cpus")),
        cpu_all: fit(&pairs("procs", "cpus")),
        mem: fit(&mem),
        parallel_start_cpus,
        work_ms: work_ms as f64,
        mean_mem_mib,
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

fn demo(rounds: u32) {
    println!(
        "\ndemo workload ({rounds} runs per VM, alternating), sampled in the guest every 100 ms; \
         figures in % as mean (min-max)"
    );
    let mut runs: Vec<Vec<DemoRun>> = CONFIGS.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, c) in CONFIGS.iter().enumerate() {
            eprintln!("resize-bench: round {}/{rounds}: {}", round + 1, c.label);
            runs[i].extend(sampled_demo(c));
        }
    }
    println!(
        "  {:<38} {:>9} {:>18} {:>18} {:>18} {:>18} {:>18} {:>9} {:>8}",
        "VM",
        "4 online",
        "CPU slack",
        "CPU shortage",
        "CPU deficit",
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
}

fn main() {
    let mut latency_rounds = 5;
    let mut rounds = 3;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--latency-rounds" => latency_rounds = value().parse().unwrap_or(latency_rounds),
            "--rounds" => rounds = value().parse().unwrap_or(rounds),
            "--only" => only = Some(value()),
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
    if only.as_deref() != Some("demo") {
        latency(latency_rounds);
    }
    if only.as_deref() != Some("latency") {
        demo(rounds);
    }
}

const USAGE: &str = "usage: resize-bench [--latency-rounds N] [--rounds N] [--only latency|demo]
  latency: hint -> resize visible in the guest, N rounds (5)
  demo:    the demo workload in a static, a reactive, a hint-driven and a
           schedule-driven VM, N runs each, alternating (3)";
