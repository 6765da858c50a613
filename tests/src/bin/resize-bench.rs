//! Resize benchmark, in the nested harness (prints figures, asserts nothing):
//!
//! 1. latency: hint → vCPU online and hint → hot-plugged memory usable, as
//!    the guest sees them (the policy's own decision takes well under 1 µs,
//!    see `cargo bench -p perfvmm-policy --bench engine`), with `shrink_after_ms = 0`;
//! 2. a set of workloads — the demo, an OpenMP kernel, a hash join (a
//!    memory phase), a parallel compressor (xz) and a `make -j` build —
//!    each in four VMs:
//!    static (sized for the peak), reactive (host-observed usage), hints
//!    (hand-written: the demo's own, `perfhint phase` around the others, the
//!    OMPT tool for the OpenMP kernel) and schedule (a profile-derived
//!    schedule embedded in the binary: step 1 a profile run in the guest,
//!    step 2 `perfhint embed` here), sampled in the guest every 100 ms:
//!    CPU (demand: the workload's own running threads, counted in its
//!    cgroup; the shortage against every runnable task in the guest beside
//!    it) and memory slack, shortage and deficit, run time, vCPU- and
//!    GiB-seconds and their cost at a public price; for the demo, how often
//!    its parallel phase starts with its 4 vCPUs online.
//!
//!    Each run is also recorded as a trace (its samples, its hint log) and
//!    replayed through `perfvmm simulate`: with the nested latency model
//!    the simulated figures against the measured ones validate the
//!    simulator (`docs/simulator.md`); with the hardware model they say
//!    what the same run would give where resizes take milliseconds.
//!
//!   cargo run --release -p perfvmm-tests --bin resize-bench -- [--rounds N]
//!       [--only latency|workloads] [--workloads demo,omp,hashjoin,xz,make|sort,autopar,pipeline]
//!       [--modes static,reactive,hints,schedule] [--svg DIR] [--traces DIR]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use perfvmm_tests::bench::{self, field};
use perfvmm_tests::fit::Fit;
use perfvmm_tests::timeline::Timeline;
use perfvmm_tests::trace::{self, parse_sample, GuestSample, VmShape};
use perfvmm_tests::{GuestRun, RunOutput};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
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
        "  vCPU online (1 -> 2, the guest onlines it on the kernel's uevent): p50 {:.0} ms, max {:.0} ms",
        percentile(&mut cpu, 0.5),
        percentile(&mut cpu, 1.0)
    );
    println!(
        "  memory +128 MiB usable (virtio-mem plug + online): p50 {:.0} ms, max {:.0} ms",
        percentile(&mut mem, 0.5),
        percentile(&mut mem, 1.0)
    );
}

/// A workload of the benchmark's set (`images/guest-scenario`'s
/// `pvwork=`).
struct Workload {
    /// Its `pvwork=` name.
    name: &'static str,
    /// Its program in the guest's `/perfvmm` (and the image's `build/guest/extra`).
    binary: &'static str,
    label: &'static str,
    /// Its schedule comes from a profile run in the guest (step 1, in the
    /// static VM), embedded on this host into a copy of its binary (step 2)
    /// that the schedule VM gets as `/ship/NAME`. Otherwise (the demo) the
    /// image ships the scheduled binary.
    profiled: bool,
    /// Of the reactive policy's training set (`tune-reactive`), not of the
    /// evaluation set: run only when `--workloads` names it.
    training: bool,
}

const WORKLOADS: [Workload; 8] = [
    Workload {
        name: "demo",
        binary: "demo-workload",
        label: "demo (serial 2.5 s, parallel 4 x 2 s, memory 384 MiB, I/O)",
        profiled: false,
        training: false,
    },
    Workload {
        name: "omp",
        binary: "omp-work",
        label: "OpenMP kernel (3 bursts of 4 s on 4 threads, 4 s serial gaps)",
        profiled: true,
        training: false,
    },
    Workload {
        name: "hashjoin",
        binary: "hashjoin",
        label: "hash join (2 s scan, build and probe a 256 MiB table, 2 s emit)",
        profiled: true,
        training: false,
    },
    Workload {
        name: "xz",
        binary: "xz",
        label: "parallel compressor (xz -T4 -1, 13.4 MiB in 512 KiB blocks)",
        profiled: true,
        training: false,
    },
    Workload {
        name: "make",
        binary: "make",
        label: "make -j4: generate (awk), compile 16 units (tcc), link",
        profiled: true,
        training: false,
    },
    Workload {
        name: "sort",
        binary: "sort",
        label: "training: coreutils sort --parallel=4, 1.56 M lines",
        profiled: false,
        training: true,
    },
    Workload {
        name: "autopar",
        binary: "autopar",
        label: "training: Polly-parallelised Jacobi sweeps (200 on 4 threads)",
        profiled: false,
        training: true,
    },
    Workload {
        name: "pipeline",
        binary: "autopar",
        label: "training: gzip (serial), 60 Jacobi sweeps on 4 threads, gzip",
        profiled: false,
        training: true,
    },
];

/// One sampled run of a workload.
struct Run {
    /// Against the workload's own running threads.
    cpu: Fit,
    /// Against every runnable task in the guest (the earlier measure).
    cpu_all: Fit,
    mem: Fit,
    /// The demo only: vCPUs online when its parallel phase (4 threads) began.
    parallel_start_cpus: Option<u32>,
    /// From the workload's start to its end, in ms.
    work_ms: f64,
    /// vCPUs and GiB of guest memory (MemTotal) held over the run, in
    /// unit-seconds.
    vcpu_seconds: f64,
    gib_seconds: f64,
    /// The run's trace replayed by the simulator.
    sim: Option<Replayed>,
}

impl Run {
    /// Dollars, at [`PRICE_VCPU_HOUR`] and [`PRICE_GIB_HOUR`].
    fn cost(&self) -> f64 {
        (self.vcpu_seconds * PRICE_VCPU_HOUR + self.gib_seconds * PRICE_GIB_HOUR) / 3600.0
    }
}

/// Public on-demand prices per vCPU-hour and per GiB-hour of memory: AWS
/// Fargate, Linux/x86, US East (N. Virginia), as listed on
/// <https://aws.amazon.com/fargate/pricing/> in 2024 (Fargate bills memory
/// "per GB"; taken here as GiB). `docs/benchmarks.md` states the same.
const PRICE_VCPU_HOUR: f64 = 0.04048;
const PRICE_GIB_HOUR: f64 = 0.004445;

/// Four figures of a fit, in points or fractions: CPU slack and shortage,
/// memory slack and shortage.
#[derive(Clone, Copy, Default)]
struct Four {
    cpu_slack: f64,
    cpu_shortage: f64,
    memory_slack: f64,
    memory_shortage: f64,
}

impl Four {
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

    fn of(v: &serde_json::Value) -> Option<Four> {
        Some(Four {
            cpu_slack: v["cpu_slack"].as_f64()?,
            cpu_shortage: v["cpu_shortage"].as_f64()?,
            memory_slack: v["memory_slack"].as_f64()?,
            memory_shortage: v["memory_shortage"].as_f64()?,
        })
    }

    fn of_simulated(v: &serde_json::Value) -> Option<Four> {
        Some(Four {
            cpu_slack: v["cpu"]["slack"].as_f64()?,
            cpu_shortage: v["cpu"]["shortage"].as_f64()?,
            memory_slack: v["memory"]["slack"].as_f64()?,
            memory_shortage: v["memory"]["shortage"].as_f64()?,
        })
    }
}

/// A run's trace through `perfvmm simulate`: with the nested latency model,
/// simulated − measured in points (`difference_points`); with the
/// hardware model, the simulated fractions and vCPU-seconds.
#[derive(Clone, Copy)]
struct Replayed {
    nested_diff: Four,
    hardware: Option<(Four, f64)>,
}

/// Where a run's pictures and traces go.
#[derive(Default)]
struct Outputs {
    svg: Option<PathBuf>,
    traces: Option<PathBuf>,
}

/// A VM configuration each workload runs in.
struct Config {
    label: &'static str,
    /// Names the run's files.
    slug: &'static str,
    /// perfvmm's `--cpus` and `--memory`, for the trace's header.
    shape: VmShape,
    /// The program variant the guest runs: `plain` (hand-written hints) or
    /// `scheduled` (its profile-derived schedule embedded).
    variant: &'static str,
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
        variant: "plain",
        args: &["--cpus", "4", "--memory", "704M"],
        policy: "mode = \"static\"\n",
    },
    Config {
        label: "reactive (usage, tuned: p95 + 10 %, 2 s)",
        slug: "reactive",
        shape: ELASTIC,
        variant: "plain",
        args: &["--cpus", "1,max=4", "--memory", "512M,max=1G"],
        // The tuned defaults (docs/policy.md, `[reactive]`), and the same
        // memory bounds as the hint-driven VMs.
        policy: "mode = \"reactive\"\n",
    },
    Config {
        label: "hints (hand-written)",
        slug: "hints",
        shape: ELASTIC,
        variant: "plain",
        args: &["--cpus", "1,max=4", "--memory", "512M,max=1G"],
        // Memory no hint names follows usage (docs/policy.md, `[hints]`).
        policy: "mode = \"hints\"\n[hints]\nunhinted_memory = \"usage\"\n",
    },
    Config {
        label: "schedule (profile-derived)",
        slug: "schedule",
        shape: ELASTIC,
        variant: "scheduled",
        args: &["--cpus", "1,max=4", "--memory", "512M,max=1G"],
        policy: "mode = \"schedule\"\n[hints]\nunhinted_memory = \"usage\"\n",
    },
];

/// Step 1 and 2 of a profiled workload: profiled in the static VM, its
/// profile embedded into a copy of its binary here. The copy's bytes.
fn scheduled_binary(w: &Workload) -> Result<Vec<u8>, String> {
    let c = &CONFIGS[0];
    let out = GuestRun::demo(
        &format!("pvrun=sampled pvwork={} pvprofile=1", w.name),
        c.args,
    )
    .l1_cpus(4)
    .timeout(Duration::from_secs(300))
    .try_run()?;
    let profile = out
        .console
        .lines()
        .find_map(|l| Some(&l[l.find("scenario: profile ")? + "scenario: profile ".len()..]))
        .filter(|p| p.trim_start().starts_with('{'))
        .ok_or_else(|| format!("the profile run printed no profile:\n{}", out.tail(20)))?;
    let build = &perfvmm_tests::workspace().build;
    let dir = std::env::temp_dir().join(format!("resize-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (pfile, copy) = (
        dir.join(format!("{}.profile.json", w.name)),
        dir.join(w.name),
    );
    std::fs::write(&pfile, profile.trim()).map_err(|e| format!("{}: {e}", pfile.display()))?;
    let embed = Command::new(build.join("static-target/x86_64-unknown-linux-gnu/release/perfhint"))
        .arg("embed")
        .arg(build.join("guest/extra").join(w.binary))
        .arg(&pfile)
        .arg("-o")
        .arg(&copy)
        .output()
        .map_err(|e| format!("perfhint embed: {e}"))?;
    if !embed.status.success() {
        return Err(format!(
            "perfhint embed: {}",
            String::from_utf8_lossy(&embed.stderr).trim()
        ));
    }
    std::fs::read(&copy).map_err(|e| format!("{}: {e}", copy.display()))
}

/// The vCPUs and GiB held over the samples, in unit-seconds (each sample
/// holds until the next).
fn held(samples: &[GuestSample]) -> (f64, f64) {
    samples.windows(2).fold((0.0, 0.0), |(c, m), w| {
        let dt = (w[1].t_ms - w[0].t_ms).max(0.0) / 1000.0;
        (
            c + f64::from(w[0].cpus) * dt,
            m + w[0].mem_total_kib as f64 / (1u64 << 20) as f64 * dt,
        )
    })
}

/// The workload's exit status and run time, from its scenario line.
fn work_done(console: &str) -> Option<(i64, f64)> {
    console.lines().rev().find_map(|l| {
        let rest = &l[l.find("scenario: workload ")?..];
        let exit = field(rest, "exit")?;
        let ms = rest.split_once("work done in ")?.1.split(' ').next()?;
        Some((exit as i64, ms.parse().ok()?))
    })
}

fn sampled(
    w: &Workload,
    c: &Config,
    ship: Option<&[u8]>,
    round: u32,
    outputs: &Outputs,
) -> Option<Run> {
    let mut args: Vec<&str> = c.args.to_vec();
    args.extend([
        "--policy",
        "@FILES@/policy.toml",
        "--hint-log",
        "@FILES@/hints.jsonl",
        "--decision-log",
        "@FILES@/decisions.jsonl",
    ]);
    let ship = ship.filter(|_| c.variant == "scheduled");
    let cmdline = format!(
        "pvrun=sampled pvwork={} pvdemo={}{}",
        w.name,
        c.variant,
        if ship.is_some() { " pvhintd=1" } else { "" }
    );
    let mut run = GuestRun::demo(&cmdline, &args);
    if let Some(bytes) = ship {
        run = run.with_guest_files(&[(&format!("/ship/{}", w.name), bytes)]);
    }
    let out = run
        .file("policy.toml", c.policy.as_bytes().to_vec())
        .fetch("hints.jsonl")
        .fetch("decisions.jsonl")
        .l1_cpus(4)
        .timeout(Duration::from_secs(420))
        .try_run()
        .map_err(|e| println!("  {} in {}: {e}", w.name, c.label))
        .ok()?;
    let samples: Vec<GuestSample> = out.console.lines().filter_map(parse_sample).collect();
    let parallel_start_cpus = perfvmm_tests::parallel_start_cpus(&out.console)
        .first()
        .copied();
    let done = work_done(&out.console);
    let Some((0, work_ms)) = done.filter(|_| w.name != "demo" || parallel_start_cpus.is_some())
    else {
        let tail: Vec<&str> = out
            .console
            .lines()
            .filter(|l| !l.contains("qemu-system"))
            .collect();
        println!(
            "{} in {}: run failed; console tail:\n{}",
            w.name,
            c.label,
            tail[tail.len().saturating_sub(25)..].join("\n")
        );
        return None;
    };
    let pairs = |f: fn(&GuestSample) -> (f64, f64)| samples.iter().map(f).collect::<Vec<_>>();
    let (vcpu_seconds, gib_seconds) = held(&samples);
    Some(Run {
        cpu: Fit::of(&pairs(|s| (s.running, f64::from(s.cpus)))),
        cpu_all: Fit::of(&pairs(|s| (s.procs, f64::from(s.cpus)))),
        mem: Fit::of(&pairs(|s| (s.mem_used_kib as f64, s.mem_total_kib as f64))),
        parallel_start_cpus,
        work_ms,
        vcpu_seconds,
        gib_seconds,
        sim: record(w, c, round, &out, outputs),
    })
}

/// Assembles the run's trace, replays it through the simulator, and draws
/// its timeline; says on standard error what could not be done.
fn record(
    w: &Workload,
    c: &Config,
    round: u32,
    out: &RunOutput,
    outputs: &Outputs,
) -> Option<Replayed> {
    let name = format!("{}-{}-{}", w.name, c.slug, round + 1);
    let source = format!(
        "nested resize-bench: {}, {}, round {}",
        w.name,
        c.label,
        round + 1
    );
    let rec = trace::from_run(out, "hints.jsonl", c.shape, &source)
        .map_err(|e| eprintln!("resize-bench: {name}: no trace: {e}"))
        .ok();
    if let Some(dir) = &outputs.traces {
        // The console, to see what a run that gave no trace printed.
        let path = dir.join(format!("{name}.console.txt"));
        if let Err(e) = std::fs::write(&path, &out.console) {
            eprintln!("resize-bench: {}: {e}", path.display());
        }
    }
    if let Some(dir) = &outputs.svg {
        let mut t = Timeline::from_console(&format!("{}, {}", w.name, c.label), &out.console);
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
    let nested = simulate(&dir, &name, "nested")?;
    let hardware = simulate(&dir, &name, "hardware").and_then(|v| {
        let s = &v["simulated"];
        Some((Four::of_simulated(s)?, s["vcpu_seconds"].as_f64()?))
    });
    if outputs.traces.is_none() {
        for ext in ["jsonl", "policy.toml"] {
            let _ = std::fs::remove_file(dir.join(format!("{name}.{ext}")));
        }
    }
    Some(Replayed {
        nested_diff: Four::of(&nested["difference_points"])?,
        hardware,
    })
}

/// `perfvmm simulate --json` on a recorded trace with its policy and a
/// latency model.
fn simulate(dir: &Path, name: &str, latency: &str) -> Option<serde_json::Value> {
    let out = Command::new(perfvmm_tests::static_perfvmm())
        .arg("simulate")
        .arg("--trace")
        .arg(dir.join(format!("{name}.jsonl")))
        .arg("--policy")
        .arg(dir.join(format!("{name}.policy.toml")))
        .args(["--latency", latency, "--json"])
        .output()
        .map_err(|e| eprintln!("resize-bench: perfvmm simulate: {e}"))
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "resize-bench: {name}: perfvmm simulate --latency {latency}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// "mean (min-max)" of a figure over runs, in percent.
fn spread(runs: &[Run], f: impl Fn(&Run) -> f64) -> String {
    let v: Vec<f64> = runs.iter().map(f).collect();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    format!("{:.1} ({:.1}-{:.1})", mean * 100.0, lo * 100.0, hi * 100.0)
}

fn mean(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    runs.iter().map(f).sum::<f64>() / runs.len().max(1) as f64
}

fn workloads(chosen: &[&Workload], modes: &[&str], rounds: u32, outputs: &Outputs) {
    for w in chosen {
        println!(
            "\n{} ({rounds} runs per VM, alternating), sampled in the guest every 100 ms; \
             figures in % as mean (min-max)",
            w.label
        );
        let ship = if w.profiled && modes.contains(&"schedule") {
            eprintln!(
                "resize-bench: {}: step 1, a profile run in the static VM",
                w.name
            );
            match scheduled_binary(w) {
                Ok(b) => Some(b),
                Err(e) => {
                    println!("  {}: no schedule: {e}", w.name);
                    None
                }
            }
        } else {
            None
        };
        let mut runs: Vec<Vec<Run>> = CONFIGS.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for (i, c) in CONFIGS.iter().enumerate() {
                let skipped = !modes.contains(&c.slug)
                    || (w.profiled && ship.is_none() && c.variant == "scheduled");
                if skipped {
                    continue;
                }
                eprintln!(
                    "resize-bench: {}: round {}/{rounds}: {}",
                    w.name,
                    round + 1,
                    c.label
                );
                runs[i].extend(sampled(w, c, ship.as_deref(), round, outputs));
            }
        }
        print_table(&runs);
        print_hardware(&runs);
        print_validation(&runs);
    }
}

fn print_table(runs: &[Vec<Run>]) {
    println!(
        "  {:<38} {:>9} {:>18} {:>18} {:>18} {:>18} {:>18} {:>18} {:>9} {:>7} {:>7} {:>6}",
        "VM",
        "4 online",
        "CPU slack",
        "CPU shortage",
        "CPU deficit",
        "all shortage",
        "mem slack",
        "mem shortage",
        "work ms",
        "vCPU-s",
        "GiB-s",
        "u$"
    );
    let base = mean(&runs[0], |r| r.work_ms);
    for (c, r) in CONFIGS.iter().zip(runs) {
        if r.is_empty() {
            println!("  {:<38} no successful run", c.label);
            continue;
        }
        let on_time = match r.iter().filter_map(|r| r.parallel_start_cpus).count() {
            0 => "-".to_string(),
            n => format!(
                "{}/{n}",
                r.iter()
                    .filter(|r| r.parallel_start_cpus.is_some_and(|c| c >= 4))
                    .count()
            ),
        };
        let work = mean(r, |r| r.work_ms);
        println!(
            "  {:<38} {:>9} {:>18} {:>18} {:>18} {:>18} {:>18} {:>18} {:>9.0} {:>7.1} {:>7.1} {:>6.1}",
            c.label,
            on_time,
            spread(r, |r| r.cpu.slack),
            spread(r, |r| r.cpu.shortage),
            spread(r, |r| r.cpu.deficit),
            spread(r, |r| r.cpu_all.shortage),
            spread(r, |r| r.mem.slack),
            spread(r, |r| r.mem.shortage),
            work,
            mean(r, |r| r.vcpu_seconds),
            mean(r, |r| r.gib_seconds),
            mean(r, |r| r.cost()) * 1e6,
        );
        if base > 0.0 && !runs[0].is_empty() {
            println!(
                "  {:<38} work time {:+.1} % against static",
                "",
                (work / base - 1.0) * 100.0
            );
        }
    }
}

/// Each run's trace replayed with the hardware latency model: what the
/// same demand and hints would give where a resize takes milliseconds.
fn print_hardware(runs: &[Vec<Run>]) {
    println!(
        "\n  simulated with hardware latency (perfvmm simulate --latency hardware on each run's \
         trace), % as mean over runs: CPU slack / shortage, mem slack / shortage, vCPU-s"
    );
    for (c, r) in CONFIGS.iter().zip(runs) {
        let hw: Vec<(Four, f64)> = r.iter().filter_map(|r| r.sim?.hardware).collect();
        if hw.is_empty() {
            println!("  {:<38} no trace", c.label);
            continue;
        }
        let n = hw.len() as f64;
        let m = |f: fn(&(Four, f64)) -> f64| hw.iter().map(f).sum::<f64>() / n;
        println!(
            "  {:<38} {:>5.1} / {:>4.1}   {:>5.1} / {:>4.1}   {:>6.1}   ({} runs)",
            c.label,
            m(|h| h.0.cpu_slack) * 100.0,
            m(|h| h.0.cpu_shortage) * 100.0,
            m(|h| h.0.memory_slack) * 100.0,
            m(|h| h.0.memory_shortage) * 100.0,
            m(|h| h.1),
            hw.len()
        );
    }
}

/// The simulator against the runs: per VM, the simulated − measured
/// difference of the four figures, per run.
fn print_validation(runs: &[Vec<Run>]) {
    println!(
        "\n  simulator validation: each run's trace replayed by `perfvmm simulate --latency nested`; \
         simulated - measured in points (CPU slack, CPU shortage, mem slack, mem shortage), \
         goal: all within 5"
    );
    let (mut all, mut within) = (0, 0);
    for (c, r) in CONFIGS.iter().zip(runs) {
        let cells: Vec<String> = r
            .iter()
            .map(|run| match run.sim {
                Some(s) => {
                    let d = s.nested_diff;
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

/// `flag`'s value as a count of at least 1, or the benchmark ends with
/// status 2 (a typo must not quietly run the default).
fn count_or_exit(flag: &str, v: &str) -> u32 {
    match v.parse() {
        Ok(n) if n >= 1 => n,
        _ => {
            eprintln!("resize-bench: {flag} takes a count of at least 1, not {v:?}\n{USAGE}");
            std::process::exit(2);
        }
    }
}

fn main() {
    let mut latency_rounds = 5;
    let mut rounds = 3;
    let mut only: Option<String> = None;
    let mut names: Option<String> = None;
    let mut mode_names: Option<String> = None;
    let mut outputs = Outputs::default();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    bench::help_or_go_on(&argv, USAGE);
    let mut args = argv.into_iter();
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--latency-rounds" => latency_rounds = count_or_exit(&a, &value()),
            "--rounds" => rounds = count_or_exit(&a, &value()),
            "--only" => only = Some(value()),
            "--workloads" => names = Some(value()),
            "--modes" => mode_names = Some(value()),
            "--svg" => outputs.svg = Some(PathBuf::from(value())),
            "--traces" => outputs.traces = Some(PathBuf::from(value())),
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
    let chosen: Vec<&Workload> = match &names {
        None => WORKLOADS.iter().filter(|w| !w.training).collect(),
        Some(list) => {
            let mut v = Vec::new();
            for n in list.split(',') {
                match WORKLOADS.iter().find(|w| w.name == n) {
                    Some(w) => v.push(w),
                    None => {
                        eprintln!("resize-bench: unknown workload {n}\n{USAGE}");
                        std::process::exit(2);
                    }
                }
            }
            v
        }
    };
    let all: Vec<&str> = CONFIGS.iter().map(|c| c.slug).collect();
    let modes: Vec<&str> = match &mode_names {
        None => all,
        Some(list) => {
            let v: Vec<&str> = list.split(',').collect();
            if let Some(bad) = v.iter().find(|m| !all.contains(m)) {
                eprintln!("resize-bench: unknown mode {bad}\n{USAGE}");
                std::process::exit(2);
            }
            v
        }
    };
    match only.as_deref() {
        None => {
            latency(latency_rounds);
            workloads(&chosen, &modes, rounds, &outputs);
        }
        Some("latency") => latency(latency_rounds),
        Some("workloads" | "demo") => workloads(&chosen, &modes, rounds, &outputs),
        Some(o) => {
            eprintln!("resize-bench: --only {o}: latency or workloads\n{USAGE}");
            std::process::exit(2);
        }
    }
}

const USAGE: &str =
    "usage: resize-bench [--latency-rounds N] [--rounds N] [--only latency|workloads]
                    [--workloads demo,omp,hashjoin,xz,make|sort,autopar,pipeline] [--modes static,reactive,hints,schedule]
                    [--svg DIR] [--traces DIR]
  latency:      hint -> resize visible in the guest, N rounds (5)
  workloads:    each workload of the evaluation set (demo, omp, hashjoin, xz,
                make) unless --workloads names some (sort, autopar and pipeline,
                the reactive policy's training set, only when named) in a
                static, a reactive, a hint-driven and a schedule-driven VM,
                N runs each, alternating (3); a profiled workload's schedule
                comes from one profile run in the static VM first. Each run's
                trace is replayed by `perfvmm simulate`, with the nested
                latency model (compared) and the hardware one
  --modes LIST  only these VMs (all four by default)
  --svg DIR     a timeline picture per run (DIR/WORKLOAD-MODE-ROUND.svg)
  --traces DIR  keep each run's trace, policy and console (DIR/WORKLOAD-MODE-ROUND.*)";
