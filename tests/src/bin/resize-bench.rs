//! Resize benchmark, in the nested harness (prints figures, asserts nothing):
//!
//! 1. latency: hint → vCPU online and hint → hot-plugged memory usable, as
//!    the guest sees them (the policy's own decision takes well under 1 µs,
//!    see `cargo bench -p perfvmm-policy --bench engine`), with `shrink_after_ms = 0`;
//! 2. allocation slack and shortage over the demo workload (its phases
//!    stretched SCALE times), sampled in the guest every 100 ms: perfvmm with
//!    its default policy and with a tighter one, against a static VM sized
//!    for the workload's peak (4 vCPUs, 704 MiB).
//!
//!   cargo run --release -p perfvmm-tests --bin resize-bench -- [ROUNDS] [SCALE]

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

/// Slack (unused share of what is allocated) and shortage (share of samples
/// where demand exceeded the allocation) for one resource.
struct Fit {
    slack: f64,
    shortage: f64,
}

fn fit(samples: &[(f64, f64)]) -> Fit {
    let alloc: f64 = samples.iter().map(|s| s.1).sum();
    let unused: f64 = samples.iter().map(|s| (s.1 - s.0).max(0.0)).sum();
    let short = samples.iter().filter(|s| s.0 > s.1).count();
    Fit {
        slack: unused / alloc,
        shortage: short as f64 / samples.len().max(1) as f64,
    }
}

fn sampled_demo(
    label: &str,
    scale: f64,
    args: &[&str],
    files: &[(&str, &str)],
) -> Option<(Fit, Fit, f64)> {
    let mut run = GuestRun::demo(&format!("pvrun=sampled-demo pvscale={scale}"), args)
        .timeout(Duration::from_secs(900));
    for (name, text) in files {
        run = run.file(name, text.as_bytes().to_vec());
    }
    let out = run.run();
    let samples: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.contains("sample t_ms="))
        .collect();
    if samples.len() < 10 || !out.console.contains("demo-workload: done") {
        println!("{label}: run failed; console tail:\n{}", out.tail(30));
        return None;
    }
    let cpu: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|l| Some((field(l, "running")?, field(l, "cpus")?)))
        .collect();
    let mem: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|l| Some((field(l, "mem_used_kib")?, field(l, "mem_total_kib")?)))
        .collect();
    let mean_mem = mem.iter().map(|m| m.1).sum::<f64>() / mem.len() as f64 / 1024.0;
    Some((fit(&cpu), fit(&mem), mean_mem))
}

fn main() {
    let arg = |n: usize| std::env::args().nth(n).and_then(|a| a.parse::<f64>().ok());
    let rounds = arg(1).unwrap_or(5.0) as u32;
    let scale = arg(2).unwrap_or(1.0);
    latency(rounds);

    println!("\ndemo workload (phases x{scale}), sampled in the guest every 100 ms");
    println!(
        "  {:<34} {:>9} {:>10} {:>9} {:>10} {:>12}",
        "VM", "CPU slack", "CPU short", "mem slack", "mem short", "mean MemTotal"
    );
    let dynamic = sampled_demo(
        "perfvmm, default policy",
        scale,
        &["--cpus", "1,max=4", "--memory", "512M,max=1G"],
        &[],
    );
    let tight = sampled_demo(
        "perfvmm, tight policy",
        scale,
        &[
            "--cpus",
            "1,max=4",
            "--memory",
            "512M,max=1G",
            "--policy",
            "@FILES@/tight.toml",
        ],
        &[(
            "tight.toml",
            "[memory]\nreserve = \"96M\"\n[timing]\nshrink_after_ms = 500\ncooldown_ms = 200\n",
        )],
    );
    let fixed = sampled_demo(
        "static 4 vCPUs, 704 MiB",
        scale,
        &[
            "--cpus",
            "4",
            "--memory",
            "704M",
            "--policy",
            "@FILES@/static.toml",
        ],
        &[("static.toml", "[vcpus]\nmin = 4\n[memory]\nmin = \"1T\"\n")],
    );
    for (label, r) in [
        ("perfvmm default (1-4, 512M-1G)", dynamic),
        ("perfvmm tight (96M, 500 ms)", tight),
        ("static (4 vCPUs, 704 MiB)", fixed),
    ] {
        if let Some((c, m, mean)) = r {
            println!(
                "  {label:<34} {:>8.1}% {:>9.1}% {:>8.1}% {:>9.1}% {:>9.0} MiB",
                c.slack * 100.0,
                c.shortage * 100.0,
                m.slack * 100.0,
                m.shortage * 100.0,
                mean
            );
        }
    }
}
