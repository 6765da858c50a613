//! Checks `perfvmm predict` against real runs in the nested harness and
//! prints the validation table of docs/predict.md.
//!
//!   predict-validate [--units N] [--rounds N] [--first-round K] [--runs NAME,...] [--l1-cpus N]
//!       [--profiler-cpus apart|among]
//!   predict-validate --native [--rounds N] [--units N] [--runs NAME,...]
//!   predict-validate --console FILE [--console FILE ...]
//!
//! `--native` makes the runs on this machine instead, outside any VM
//! (`predict::run_native`): no emulation, so far less spread from run to
//! run, but only what its CPUs and its cgroups allow (`NATIVE_RUNS`).
//!
//! `--host-cores N` (default: this machine's CPUs; 0: none) is the
//! physical cores the VMs run on, as `perfvmm predict --host-cores`.
//! `--l1-cpus N` (default 4) is the nested harness's L1 host's vCPUs.
//! `--profiler-cpus among` runs each profiler on its program's own CPUs
//! instead of on CPU 3 apart from them (`predict::ProfilerCpus`);
//! `--held-out-profile lean` profiles the held-out programs with only
//! what their scaling checks need (`predict::Profiling`).
//!
//! Each round of runs is one guest boot (5 to 10 minutes for the whole
//! set; given up when `predict::time_bound` passes) in a process of its
//! own (the harness retries a crashed nested boot once per process, and
//! a round that fails again is lost alone), its console
//! saved to target/predict-validate.round-N.console as soon as it ends, so
//! that a round lost to a crash of the nested harness loses only itself;
//! `--console` reads saved consoles instead of booting.

use std::process::{Command, ExitCode};

use perfvmm_tests::predict::{
    calibration, markdown, read_runs, run_guest, run_native, time_bound, validate, NativeWork,
    ProfilerCpus, Profiling, NATIVE_RUNS, RUNS,
};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    perfvmm_tests::bench::help_or_go_on(&args, USAGE);
    let native = args.iter().any(|a| a == "--native");
    args.retain(|a| a != "--native");
    let mut units: Option<u32> = None;
    let mut rounds = 3;
    let mut runs: Vec<String> = RUNS.iter().map(|s| s.to_string()).collect();
    let mut consoles: Vec<String> = Vec::new();
    let mut first = 1;
    let mut only: Option<u32> = None;
    let mut l1_cpus = 4;
    let mut profiling = Profiling::default();
    let mut runs_given = false;
    // The physical cores under the VMs: this machine's (the nested
    // harness's L1 runs on them).
    let mut host_cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .ok();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--units", Some(v)) => match v.parse() {
                Ok(n) => units = Some(n),
                Err(_) => return usage(),
            },
            ("--rounds", Some(v)) => match v.parse() {
                Ok(n) if n >= 1 => rounds = n,
                _ => return usage(),
            },
            ("--first-round", Some(v)) => match v.parse() {
                Ok(n) if n >= 1 => first = n,
                _ => return usage(),
            },
            // Internal: make round N alone, in this process.
            ("--round", Some(v)) => match v.parse() {
                Ok(n) if n >= 1 => only = Some(n),
                _ => return usage(),
            },
            ("--l1-cpus", Some(v)) => match v.parse() {
                Ok(n) if (1..=8).contains(&n) => l1_cpus = n,
                _ => return usage(),
            },
            ("--profiler-cpus", Some(v)) => match v.as_str() {
                "apart" => profiling.cpus = ProfilerCpus::Apart,
                "among" => profiling.cpus = ProfilerCpus::Among,
                _ => return usage(),
            },
            ("--held-out-profile", Some(v)) => match v.as_str() {
                "full" => profiling.held_out_lean = false,
                "lean" => profiling.held_out_lean = true,
                _ => return usage(),
            },
            ("--runs", Some(v)) => {
                runs = v.split(',').map(str::to_string).collect();
                runs_given = true;
            }
            ("--console", Some(v)) => consoles.push(v.clone()),
            ("--host-cores", Some(v)) => match v.parse() {
                Ok(0) => host_cores = None,
                Ok(n) => host_cores = Some(n),
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
    if native {
        let native_runs: Vec<String> = if runs_given {
            runs.clone()
        } else {
            NATIVE_RUNS.iter().map(|s| s.to_string()).collect()
        };
        let work = NativeWork {
            units: units.unwrap_or(NativeWork::default().units),
            ..NativeWork::default()
        };
        match native_rounds(&native_runs, rounds, &work, profiling.held_out_lean) {
            Ok(file) => consoles.push(file),
            Err(code) => return code,
        }
    }
    let units = units.unwrap_or(20);
    if let Some(r) = only {
        return one_round(r, &runs, units, l1_cpus, profiling);
    }
    if consoles.is_empty() {
        let last = first + rounds - 1;
        for r in first..=last {
            let names = round_names(&runs, r);
            eprintln!(
                "predict-validate: round {r} of {first}..{last}: {} runs in a nested guest (taken for hung after {} minutes)",
                names.len(),
                time_bound(&names, units).as_secs() / 60
            );
            let file = round_file(r);
            let _ = std::fs::remove_file(&file);
            let ran = std::env::current_exe().and_then(|exe| {
                Command::new(exe)
                    .args(["--round", &r.to_string(), "--units", &units.to_string()])
                    .args(["--runs", &runs.join(",")])
                    .args(["--l1-cpus", &l1_cpus.to_string()])
                    .args(["--profiler-cpus", profiling.cpus.name()])
                    .args([
                        "--held-out-profile",
                        if profiling.held_out_lean {
                            "lean"
                        } else {
                            "full"
                        },
                    ])
                    .status()
            });
            match ran {
                Ok(s) if s.success() => consoles.push(file),
                _ => eprintln!("predict-validate: round {r} lost (see above); going on"),
            }
        }
    }
    let mut console = String::new();
    for f in &consoles {
        match std::fs::read_to_string(f) {
            Ok(t) => console.push_str(&t),
            Err(e) => {
                eprintln!("predict-validate: {f}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let (r, bad) = read_runs(&console);
    for e in &bad {
        eprintln!("predict-validate: left out (its profile does not parse): {e}");
    }
    match validate(&r, host_cores) {
        Ok(v) => {
            match host_cores {
                Some(h) => println!("Predictions for VMs on {h} physical cores."),
                None => println!("Predictions taking every vCPU as a core of its own."),
            }
            if let Some((c, from)) = calibration(&r.profiles) {
                let pts: Vec<String> = c
                    .iter()
                    .map(|(n, e)| format!("{n} vCPUs = {e:.2} CPUs"))
                    .collect();
                println!(
                    "Held-out programs predicted with the machine's measured scaling (from {from}): {}.",
                    pts.join(", ")
                );
            }
            print!("{}", markdown(&v));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("predict-validate: {e}");
            ExitCode::from(1)
        }
    }
}

/// Makes `rounds` rounds of `runs` on this machine, outside any VM, one
/// after the other in one process (no harness to crash), and saves what
/// they printed; returns the file.
fn native_rounds(
    runs: &[String],
    rounds: u32,
    work: &NativeWork,
    held_out_lean: bool,
) -> Result<String, ExitCode> {
    let names: Vec<String> = (1..=rounds).flat_map(|r| round_names(runs, r)).collect();
    eprintln!(
        "predict-validate: {} runs on this machine ({rounds} rounds; predict-work at {} units, \
         xz on {} copies of its input, make {})",
        names.len(),
        work.units,
        work.xz_copies,
        work.make_vars
    );
    let console = run_native(&names, work, held_out_lean).map_err(|e| {
        eprintln!("predict-validate: {e}");
        ExitCode::from(1)
    })?;
    let file = "target/predict-validate.native.console".to_string();
    if let Err(e) = std::fs::write(&file, &console) {
        eprintln!("predict-validate: {file}: {e}");
        return Err(ExitCode::from(1));
    }
    eprintln!("predict-validate: saved in {file}");
    Ok(file)
}

/// `runs` as round `r` names them (`base-1.3`).
fn round_names(runs: &[String], r: u32) -> Vec<String> {
    runs.iter().map(|n| format!("{n}.{r}")).collect()
}

fn round_file(r: u32) -> String {
    format!("target/predict-validate.round-{r}.console")
}

/// Makes round `r` of `runs` in one boot and saves its console.
fn one_round(r: u32, runs: &[String], units: u32, l1_cpus: u32, profiling: Profiling) -> ExitCode {
    let names = round_names(runs, r);
    let out = run_guest(&names, units, l1_cpus, profiling);
    let file = round_file(r);
    if let Err(e) = std::fs::write(&file, &out.console) {
        eprintln!("predict-validate: {file}: {e}");
        return ExitCode::from(1);
    }
    for l in out
        .console
        .lines()
        .filter(|l| l.contains("scenario: predict"))
    {
        eprintln!("{l}");
    }
    eprintln!("predict-validate: round {r} saved in {file}");
    ExitCode::SUCCESS
}

const USAGE: &str =
    "usage: predict-validate [--units N] [--rounds N] [--first-round K] [--runs NAME,...]
                        [--host-cores N] [--l1-cpus N] [--profiler-cpus apart|among]
                        [--held-out-profile full|lean]
       predict-validate --native [--held-out-profile full|lean] [--rounds N] [--units N] [--runs NAME,...]
       predict-validate --console FILE [--console FILE ...]
  Boots the nested harness once a round (3 rounds by default), makes the runs of
  docs/predict.md's validation table (--runs: only these), saves each round's
  console to target/predict-validate.round-N.console, and prints the table.
  --units: predict-work's units (20); --first-round: number rounds from K;
  --host-cores: physical cores under the VMs (this machine's; 0: none);
  --l1-cpus: the harness's L1 vCPUs (4); --profiler-cpus among: each profiler
  on its program's own CPUs instead of on CPU 3; --held-out-profile lean: the
  held-out programs and the calibration runs profiled without functions or
  working set, a sample every 100 ms, the profiler among their CPUs (their
  checks are of scaling only).
  --native: make the runs on this machine instead, outside any VM, with the
  guest's programs (build/guest/extra) at sizes that take seconds here: the
  runs a 2-CPU machine can make (no 4-CPU, cpu.max or memory-limit runs),
  3 rounds one after the other, saved to target/predict-validate.native.console.
  --console: compute the table from saved consoles instead of booting.";

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}
