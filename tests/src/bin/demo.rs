//! The demo (`scripts/demo`): boots the demo guest under perfvmm (directly
//! on hardware KVM, nested elsewhere) with the demo workload carrying its
//! profile-derived schedule, streams what the guest and perfvmm say, and
//! ends with a short summary and a timeline picture. The raw hint and
//! decision logs are kept in the output directory (`--raw` streams them
//! live as well).
//!
//!   cargo run --release -p perfvmm-tests --bin demo -- [--raw] [--out DIR] [PERFVMM-ARGS...]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use perfvmm_tests::fit::Fit;
use perfvmm_tests::timeline::Timeline;
use perfvmm_tests::trace::{self, GuestSample, VmShape};
use perfvmm_tests::{GuestRun, RunOutput};

const USAGE: &str = "usage: demo [--raw] [--out DIR] [PERFVMM-ARGS...]
  boots the demo guest (--cpus 1,max=4 --memory 512M,max=1G) running the demo
  workload with its profile-derived schedule, then prints a summary and writes
  a timeline picture
  --raw      stream the hint and decision logs and the guest's samples too
  --out DIR  where the logs, the console and the picture go (build/demo)
  extra arguments go to perfvmm";

const SHAPE: VmShape = VmShape {
    boot_vcpus: 1,
    max_vcpus: 4,
    boot_memory: 512 << 20,
    max_memory: 1 << 30,
};

/// Console lines worth showing live: not the sampler's, nor the hint trace.
fn worth_showing(line: &str) -> bool {
    !line.contains("sample t_ms=") && !line.contains("perfhint-trace seq=")
}

struct Options {
    raw: bool,
    out: PathBuf,
    perfvmm: Vec<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        raw: false,
        out: perfvmm_tests::workspace().build.join("demo"),
        perfvmm: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--raw" => o.raw = true,
            "--out" => o.out = PathBuf::from(args.next().ok_or("--out needs a directory")?),
            _ => o.perfvmm.push(a),
        }
    }
    Ok(o)
}

fn run(o: &Options) -> RunOutput {
    let mut args: Vec<String> = [
        "--kernel",
        "@KERNEL@",
        "--initrd",
        "@INITRD@",
        "--cpus",
        "1,max=4",
        "--memory",
        "512M,max=1G",
        "--boot-timer",
        "--cmdline",
        "quiet pvrun=sampled-demo pvdemo=scheduled pvhintd=1",
    ]
    .map(String::from)
    .to_vec();
    if o.raw {
        args.extend(
            ["--hint-log", "/dev/stderr", "--decision-log", "/dev/stderr"].map(String::from),
        );
    }
    // The logs also go to files, for the summary and the picture (a raw
    // run's copies to standard error are in the console).
    args.extend(
        [
            "--hint-log",
            "@FILES@/hints.jsonl",
            "--decision-log",
            "@FILES@/decisions.jsonl",
        ]
        .map(String::from),
    );
    args.extend(o.perfvmm.iter().cloned());
    let run = GuestRun::raw(args)
        .fetch("hints.jsonl")
        .fetch("decisions.jsonl")
        .l1_cpus(4)
        .timeout(Duration::from_secs(600));
    let run = if o.raw {
        run.streaming()
    } else {
        run.streaming_lines(worth_showing)
    };
    run.run()
}

/// Writes the run's logs and console into `dir`; returns what failed.
fn keep(dir: &Path, out: &RunOutput) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<(&str, &str)> = vec![("console.log", &out.console)];
    for name in ["hints.jsonl", "decisions.jsonl"] {
        if let Some(text) = out.files.get(name) {
            files.push((name, text));
        }
    }
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The summary's lines.
fn summary(out: &RunOutput, picture: Option<&Path>, dir: &Path) -> Vec<String> {
    let samples: Vec<GuestSample> = out
        .console
        .lines()
        .filter_map(trace::parse_sample)
        .collect();
    let cpu = Fit::of(
        &samples
            .iter()
            .map(|s| (s.running, f64::from(s.cpus)))
            .collect::<Vec<_>>(),
    );
    let mem = Fit::of(
        &samples
            .iter()
            .map(|s| (s.mem_used_kib as f64, s.mem_total_kib as f64))
            .collect::<Vec<_>>(),
    );
    let started = perfvmm_tests::parallel_start_cpus(&out.console)
        .first()
        .copied();
    let decisions: Vec<serde_json::Value> = out
        .files
        .get("decisions.jsonl")
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default();
    let count = |r: &str| decisions.iter().filter(|d| d["resource"] == r).count();
    let hints = out
        .files
        .get("hints.jsonl")
        .map_or(0, |t| t.lines().filter(|l| l.contains("\"seq\"")).count());
    let pct = |x: f64| format!("{:.0} %", x * 100.0);
    vec![
        match started {
            Some(n) => format!("the parallel phase (4 threads) started with {n} of 4 vCPUs online"),
            None => "the demo workload did not reach its parallel phase".to_string(),
        },
        format!(
            "vCPUs: {} slack, short {} of the time; memory: {} slack, short {} of the time ({} samples)",
            pct(cpu.slack),
            pct(cpu.shortage),
            pct(mem.slack),
            pct(mem.shortage),
            samples.len()
        ),
        format!(
            "{hints} hints, {} vCPU and {} memory decisions; work done in {} ms",
            count("vcpus"),
            count("memory"),
            out.guest_line_value("demo-workload: work done in ")
                .map_or("?".to_string(), |v| v.to_string())
        ),
        format!("logs: {}/{{hints,decisions}}.jsonl, console.log", dir.display()),
        match picture {
            Some(p) => format!("timeline: {}", p.display()),
            None => "timeline: not drawn (see above)".to_string(),
        },
    ]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    perfvmm_tests::bench::help_or_go_on(&args, USAGE);
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("demo: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "demo: mode {:?}; output in {}",
        perfvmm_tests::mode(),
        o.out.display()
    );
    let out = run(&o);
    if let Err(e) = keep(&o.out, &out) {
        eprintln!("demo: {e}");
    }
    let offset = out
        .files
        .get("hints.jsonl")
        .and_then(|log| trace::assemble(&out.console, log, SHAPE, "demo").ok())
        .map(|r| r.offset_ms);
    let mut t = Timeline::from_console("demo workload, profile-derived schedule", &out.console);
    if let (Some(off), Some(log)) = (offset, out.files.get("decisions.jsonl")) {
        t = t.with_decisions(log, off);
    }
    let svg = o.out.join("timeline.svg");
    let picture = match t.write_svg(&svg) {
        Ok(()) => Some(svg.as_path()),
        Err(e) => {
            eprintln!("demo: {e}");
            None
        }
    };
    println!();
    for line in summary(&out, picture, &o.out) {
        println!("demo: {line}");
    }
    if out.timed_out {
        eprintln!("demo: timed out");
        return ExitCode::from(124);
    }
    ExitCode::from(out.exit_code.map_or(125, |c| c.clamp(0, 255) as u8))
}
