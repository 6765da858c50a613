//! Validation of `perfvmm predict` against real runs (issue 13): the guest
//! scenario `predict` profiles the validation workload and held-out
//! programs on 1, 2 and 4 CPUs and with changes made for real; each check
//! predicts a run from profiles taken without its change and compares the
//! prediction with the run. Memory sizes are memory cgroups in the guest
//! (`pvmem` lines), and Coz's virtual speed-ups of the same functions
//! (`pvcoz` lines) are set beside the model's.

use std::collections::HashMap;
use std::time::Duration;

use guest_hints::profile::Profile;
use perfvmm_predict::hosts::{Host, HostTable};
use perfvmm_predict::{median, predict, Change, Request};

use crate::{GuestRun, RunOutput};

/// The runs the scenario makes by default, in order.
pub const RUNS: &[&str] = &[
    "base-1", "base-2", "base-4", "cal-1", "cal-2", "cal-4", "kernel-2", "parse-2", "solve-2",
    "slow-1", "mem-2", "memfit-2", "memlow-2", "membig-2", "coz0-2", "cozk-2", "cozp-2", "xz-1",
    "xz-2", "xz-4", "make-1", "make-2", "make-4",
];

/// The runs `predict-validate --native` makes by default: those a machine
/// of 2 CPUs, without the guest's cgroup v2 hierarchy, can make (no
/// 4-CPU, `cpu.max` or memory-limit runs), and the held-out programs
/// without the profiler beside them. Not Coz's: preloaded into `taskset`,
/// it wants debugging information for the system's `taskset`, which the
/// guest's busybox spares it.
pub const NATIVE_RUNS: &[&str] = &[
    "base-1",
    "base-2",
    "cal-1",
    "cal-2",
    "kernel-2",
    "parse-2",
    "solve-2",
    "xz-1",
    "bare-xz-1",
    "xz-2",
    "bare-xz-2",
    "make-1",
    "bare-make-1",
    "make-2",
    "bare-make-2",
];

/// How much work each native run does: sized so that a run on this kind
/// of machine takes seconds, as the guest's runs do under emulation.
#[derive(Clone, Debug)]
pub struct NativeWork {
    /// predict-work's units (`pvunits`).
    pub units: u32,
    /// Copies of the input in xz's input (`pvxzcopies`).
    pub xz_copies: u32,
    /// More make variables for the make project (`pvmakevars`).
    pub make_vars: String,
}

impl Default for NativeWork {
    fn default() -> Self {
        NativeWork {
            units: 100,
            xz_copies: 10,
            make_vars: "FUNCS=3000".into(),
        }
    }
}

/// Makes `runs` on this machine, outside any VM: the guest scenario's
/// `predict` part with the guest's programs (built by `images/build.sh`)
/// from `build/guest/extra`, each profiler on the machine's last CPU
/// (on a machine of 2, apart from a 1-CPU program but among a 2-CPU
/// program's CPUs; a lean profiler among the program's, `held_out_lean`
/// as in [`Profiling`]). Prints each run's start on standard error;
/// returns what the scenario printed.
pub fn run_native(
    runs: &[String],
    work: &NativeWork,
    held_out_lean: bool,
) -> Result<String, String> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return Err(format!(
            "this machine has {cpus} CPU; the native runs need 2"
        ));
    }
    let ws = crate::workspace();
    crate::guest_image();
    let extra = ws.build.join("guest/extra");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![extra.clone()];
    dirs.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(dirs).map_err(|e| e.to_string())?;
    let mut child = Command::new("sh")
        .arg(ws.root.join("images/guest-scenario"))
        .arg("predict")
        .env("PATH", path)
        .env("pvdir", &extra)
        .env("pvprofpin", (cpus - 1).to_string())
        .env("pvunits", work.units.to_string())
        .env("pvxzcopies", work.xz_copies.to_string())
        .env("pvmakevars", &work.make_vars)
        .env("pvpredict", runs.join(","))
        .env("pvheldlean", if held_out_lean { "1" } else { "0" })
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run the scenario: {e}"))?;
    let mut console = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.map_err(|e| format!("reading the scenario's output: {e}"))?;
            if line.starts_with("scenario: predict") {
                eprintln!("{line}");
            }
            console.push_str(&line);
            console.push('\n');
        }
    }
    match child.wait() {
        Ok(s) if s.success() => Ok(console),
        Ok(s) => Err(format!("the scenario ended with {s}")),
        Err(e) => Err(format!("the scenario: {e}")),
    }
}

/// What a check's figures count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unit {
    Ms,
    Bytes,
}

/// A memory-size run's cgroup, from its "pvmem NAME: limit=BYTES|max
/// peak=BYTES oom_kills=N ran=yes|no" line.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryRun {
    /// The repetition (`2` of `memfit-2.2`; empty without one).
    pub round: String,
    /// `memory.max` (`None`: no limit).
    pub limit: Option<u64>,
    /// `memory.peak`.
    pub peak: u64,
    pub oom_kills: u64,
    /// Whether the program ran to its end.
    pub ran: bool,
}

impl MemoryRun {
    fn parse(s: &str) -> Option<MemoryRun> {
        let mut f: HashMap<&str, &str> = HashMap::new();
        for kv in s.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            f.insert(k, v);
        }
        Some(MemoryRun {
            round: String::new(),
            limit: match *f.get("limit")? {
                "max" => None,
                v => Some(v.parse().ok()?),
            },
            peak: f.get("peak")?.parse().ok()?,
            oom_kills: f.get("oom_kills")?.parse().ok()?,
            ran: *f.get("ran")? == "yes",
        })
    }

    /// Ran to its end without the OOM killer.
    pub fn fitted(&self) -> bool {
        self.ran && self.oom_kills == 0
    }
}

/// What the scenario printed, each by run name without its repetition
/// number (`base-1.2` is one of `base-1`'s), in repetition order.
#[derive(Clone, Debug, Default)]
pub struct Runs {
    pub profiles: HashMap<String, Vec<Profile>>,
    /// Each profile by its full run name (`mem-2.2`).
    pub by_run: HashMap<String, Profile>,
    /// The memory-size runs' cgroups.
    pub memory: HashMap<String, Vec<MemoryRun>>,
    /// Coz's experiments: the run's time less the delays Coz inserted, ms.
    pub coz: HashMap<String, Vec<f64>>,
    /// Held-out programs run without the profiler (`bare-xz-2`): their
    /// wall times, ms.
    pub bare: HashMap<String, Vec<f64>>,
}

/// One prediction checked against a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// What kind of prediction: `scaling`, `function`, `phase`, `cpu speed`.
    pub kind: &'static str,
    /// What was predicted, e.g. "1 → 4 vCPUs".
    pub what: String,
    /// Whether the workload was kept out of model tuning.
    pub held_out: bool,
    /// Profiles the prediction was made from.
    pub from: Vec<&'static str>,
    /// The run it is checked against.
    pub against: &'static str,
    pub unit: Unit,
    pub predicted: f64,
    pub measured: f64,
}

/// |predicted − measured| / measured.
fn rel_error(predicted: f64, measured: f64) -> f64 {
    (predicted - measured).abs() / measured.max(1.0)
}

impl Check {
    /// |predicted − measured| / measured.
    pub fn error(&self) -> f64 {
        rel_error(self.predicted, self.measured)
    }

    /// A figure of this check, in seconds or MiB.
    pub fn show(&self, v: f64) -> String {
        match self.unit {
            Unit::Ms => format!("{:.1} s", v / 1000.0),
            Unit::Bytes => format!("{:.0} MiB", v / f64::from(1 << 20)),
        }
    }
}

/// Whether a program fits a memory size, predicted and run: each run
/// predicted from the profile of its own round (the memory size was set
/// from that profile).
#[derive(Clone, Debug, PartialEq)]
pub struct FitCheck {
    pub what: &'static str,
    pub against: &'static str,
    /// The memory size (the median of its runs').
    pub limit_bytes: u64,
    pub runs: usize,
    /// Runs predicted to fit.
    pub predicted_fits: usize,
    /// Runs that ended without the OOM killer.
    pub fitted: usize,
    /// Runs that came out as predicted.
    pub right: usize,
}

impl FitCheck {
    /// Every run came out as predicted.
    pub fn right(&self) -> bool {
        self.runs > 0 && self.right == self.runs
    }
}

/// "Function F 10 % faster" by the model and by Coz's virtual speed-up,
/// against the run with F made faster for real.
#[derive(Clone, Debug, PartialEq)]
pub struct CozCheck {
    pub what: String,
    pub against: &'static str,
    pub model_ms: f64,
    /// `base-2`'s time scaled by Coz's sped-up to baseline experiment
    /// durations.
    pub coz_ms: f64,
    pub measured_ms: f64,
}

impl CozCheck {
    pub fn model_error(&self) -> f64 {
        rel_error(self.model_ms, self.measured_ms)
    }

    pub fn coz_error(&self) -> f64 {
        rel_error(self.coz_ms, self.measured_ms)
    }
}

/// Everything a validation run checked.
#[derive(Clone, Debug, Default)]
pub struct Validation {
    pub checks: Vec<Check>,
    pub fits: Vec<FitCheck>,
    pub coz: Vec<CozCheck>,
}

/// `runs` repeated `rounds` times, round after round (`base-1.1`,
/// `base-2.1`, ..., `base-1.2`, ...), so that a drift in the machine's
/// speed touches every run alike.
pub fn in_rounds(runs: &[&str], rounds: u32) -> Vec<String> {
    (1..=rounds)
        .flat_map(|r| runs.iter().map(move |n| format!("{n}.{r}")))
        .collect()
}

/// Where the guest scenario runs the profiler of a run on fewer than 4
/// CPUs: on CPU 3, apart from the program's (the default), or among the
/// program's own CPUs (it then takes its time from the program, but keeps
/// no vCPU busy beyond the program's; `predict-validate --profiler-cpus`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProfilerCpus {
    #[default]
    Apart,
    Among,
}

impl ProfilerCpus {
    /// As `--profiler-cpus` spells it.
    pub fn name(self) -> &'static str {
        match self {
            ProfilerCpus::Apart => "apart",
            ProfilerCpus::Among => "among",
        }
    }
}

/// How the scenario profiles: where the profiler runs, and whether the
/// held-out programs' profiles and the calibration runs' are lean
/// (`pvheldlean`: no functions, no working set, a sample every 100 ms,
/// the profiler among the program's CPUs; their checks are of scaling
/// only, and under emulation each part, and a third busy vCPU, costs the
/// program time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Profiling {
    pub cpus: ProfilerCpus,
    pub held_out_lean: bool,
}

impl Profiling {
    /// The scenario's kernel command-line words for it.
    fn words(self) -> String {
        let mut w = String::new();
        if self.cpus == ProfilerCpus::Among {
            w.push_str(" pvprofcpus=among");
        }
        if self.held_out_lean {
            w.push_str(" pvheldlean=1");
        }
        w
    }
}

/// Boots a 4-vCPU guest and makes the `runs` (see [`RUNS`]; `NAME.N` is
/// the Nth repetition of NAME); `units` sizes the validation workload
/// (millions of steps per unit of work); `l1_cpus` is the nested
/// harness's L1 host's vCPUs (4 in the tests).
pub fn run_guest(runs: &[String], units: u32, l1_cpus: u32, profiling: Profiling) -> RunOutput {
    let cmdline = format!(
        "pvrun=predict pvunits={units} pvpredict={}{}",
        runs.join(","),
        profiling.words()
    );
    // A static VM: the policy resizes nothing while the runs are timed.
    GuestRun::demo(
        &cmdline,
        &[
            "--cpus",
            "4",
            "--memory",
            "1G",
            "--policy",
            "@FILES@/policy.toml",
        ],
    )
    .file("policy.toml", b"mode = \"static\"\n".to_vec())
    .timeout(time_bound(runs, units))
    .l1_cpus(l1_cpus)
    .run()
}

/// How long a boot making `runs` may take before it is taken for hung:
/// five minutes for the boot and the warm-up, then 150 s for each held-out
/// run (20–40 s each when the harness is well) and 15 s per 20 `units`
/// for each of the validation workload's (2–5 s each).
pub fn time_bound(runs: &[String], units: u32) -> Duration {
    let each = |n: &String| match n.split('-').next() {
        Some("xz" | "make" | "bare" | "xzcost") => 150,
        _ => 15 * u64::from(units.div_ceil(20)),
    };
    Duration::from_secs(300 + runs.iter().map(each).sum::<u64>())
}

/// What the scenario printed (see [`Runs`]); an error names each run
/// whose profile does not parse.
pub fn runs(console: &str) -> Result<Runs, String> {
    match read_runs(console) {
        (r, bad) if bad.is_empty() => Ok(r),
        (_, bad) => Err(bad.join("; ")),
    }
}

/// As [`runs`], leaving out the runs whose profile does not parse (the
/// console can interleave a kernel message with a profile's lines): the
/// runs, and what was wrong with each left out.
pub fn read_runs(console: &str) -> (Runs, Vec<String>) {
    let console = &mend_console(console);
    let (by_run, bad) = profiles_by_run(console);
    let mut memory = HashMap::new();
    let mut coz = HashMap::new();
    for (name, rest) in tagged(console, "pvmem ") {
        if let Some(mut m) = MemoryRun::parse(rest) {
            m.round = split_run(name).1.to_string();
            memory.insert(name.to_string(), m);
        }
    }
    for (name, rest) in tagged(console, "pvcoz ") {
        let ns = rest
            .strip_prefix("duration=")
            .and_then(|d| d.trim().parse::<u64>().ok());
        if let Some(ns) = ns {
            coz.insert(name.to_string(), ns as f64 / 1e6);
        }
    }
    let mut bare = HashMap::new();
    for (name, rest) in tagged(console, "pvtime ") {
        let real = rest
            .strip_prefix("real ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse::<f64>().ok());
        if let (true, Some(s)) = (name.starts_with("bare-"), real) {
            bare.insert(name.to_string(), s * 1000.0);
        }
    }
    let r = Runs {
        profiles: grouped(by_run.clone()),
        by_run,
        memory: grouped(memory),
        coz: grouped(coz),
        bare: grouped(bare),
    };
    (r, bad)
}

/// `base-1.2` → (`base-1`, `2`); `base-1` → (`base-1`, ``).
fn split_run(run: &str) -> (&str, &str) {
    run.split_once('.').unwrap_or((run, ""))
}

/// By run name without its repetition number, each name's in repetition
/// order (`x.2` before `x.10`).
fn grouped<T>(m: HashMap<String, T>) -> HashMap<String, Vec<T>> {
    let key = |n: &str| {
        let (base, round) = split_run(n);
        (
            base.to_string(),
            round.parse::<u64>().unwrap_or(0),
            round.to_string(),
        )
    };
    let mut v: Vec<(String, T)> = m.into_iter().collect();
    v.sort_by_cached_key(|(n, _)| key(n));
    let mut out: HashMap<String, Vec<T>> = HashMap::new();
    for (name, t) in v {
        out.entry(split_run(&name).0.to_string())
            .or_default()
            .push(t);
    }
    out
}

/// The console's "TAG NAME: REST" lines (anywhere in a line) as (NAME,
/// REST).
/// Where a kernel message's time stamp (`[  297.142103] `) starts in
/// `line`, if it holds one.
fn kernel_stamp(line: &str) -> Option<usize> {
    line.match_indices('[').map(|(i, _)| i).find(|&i| {
        let rest = line[i + 1..].trim_start_matches(' ');
        let Some((secs, tail)) = rest.split_once('.') else {
            return false;
        };
        let micros = tail.get(..6).unwrap_or("");
        !secs.is_empty()
            && secs.bytes().all(|b| b.is_ascii_digit())
            && micros.len() == 6
            && micros.bytes().all(|b| b.is_ascii_digit())
            && tail[6..].starts_with(']')
    })
}

/// The console with the lines the guest kernel's messages cut in two made
/// whole again. A message the kernel prints to the console while the
/// scenario prints a line (an RCU stall or soft-lockup report under
/// emulation) lands in the middle of it: the line's head, then the
/// message's lines, then the line's tail. `dmesg -n 1` keeps most
/// messages off the console, but not the most urgent ones.
pub fn mend_console(console: &str) -> String {
    let mut out = String::with_capacity(console.len());
    let mut head: Option<&str> = None;
    for line in console.lines() {
        let stamp = kernel_stamp(line);
        match (head, stamp) {
            // Still inside the message.
            (Some(_), Some(0)) => continue,
            (Some(h), _) => {
                out.push_str(h);
                out.push_str(line);
                out.push('\n');
                head = None;
            }
            (None, Some(i)) if i > 0 => head = Some(&line[..i]),
            (None, _) => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if let Some(h) = head {
        out.push_str(h);
        out.push('\n');
    }
    out
}

fn tagged<'a>(console: &'a str, tag: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
    console.lines().filter_map(move |line| {
        let (_, rest) = line.split_once(tag)?;
        rest.split_once(": ")
    })
}

/// The profiles the scenario printed, by run name, and what was wrong with
/// those that do not parse.
pub fn profiles_by_run(console: &str) -> (HashMap<String, Profile>, Vec<String>) {
    let mut texts: HashMap<String, String> = HashMap::new();
    for (name, json) in tagged(console, "pvprofile ") {
        let t = texts.entry(name.to_string()).or_default();
        t.push_str(json);
        t.push('\n');
    }
    let mut good = HashMap::new();
    let mut bad = Vec::new();
    for (n, t) in texts {
        match Profile::from_json(&t) {
            Ok(p) => {
                good.insert(n, p);
            }
            Err(e) => bad.push(format!("{n}: {e}")),
        }
    }
    bad.sort();
    (good, bad)
}

/// What vCPUs are worth on the machine (`perfvmm predict --calibrate`),
/// and from which runs: the calibration runs (`cal-N`: the validation
/// workload's parallel kernel alone) where there are some, else the
/// validation workload's own runs (`base-N`; consoles from before the
/// calibration runs). `--calibrate` takes its program to be parallel
/// wherever it has threads: `base-N`'s solve phase ends in a serial
/// `reduce`, which it then counted against the machine (natively, on 2
/// real CPUs: 1.76). `None` without either.
pub fn calibration(p: &HashMap<String, Vec<Profile>>) -> Option<(Vec<(u32, f64)>, &'static str)> {
    let from = |names: [&'static str; 3]| -> Option<Vec<(u32, f64)>> {
        let runs: Vec<Profile> = names
            .iter()
            .filter_map(|n| p.get(*n))
            .flatten()
            .cloned()
            .collect();
        perfvmm_predict::calibrate(&runs).ok()
    };
    from(["cal-1", "cal-2", "cal-4"])
        .map(|c| (c, "cal-1, cal-2, cal-4"))
        .or_else(|| from(["base-1", "base-2", "base-4"]).map(|c| (c, "base-1, base-2, base-4")))
}

/// Every check the profiles allow (a check whose runs are missing is left
/// out).
/// Checks with the VMs on a machine of `host_cores` physical cores (the
/// nested harness's host: its 4-vCPU L1 runs on them). The held-out
/// programs are predicted with the machine's [`calibration`] as well (the
/// validation workload's own checks are not: it measured it), and checked
/// against their runs without the profiler where there are some (`bare`,
/// see [`Runs::bare`]): what a prediction is for.
pub fn checks(
    p: &HashMap<String, Vec<Profile>>,
    bare: &HashMap<String, Vec<f64>>,
    host_cores: Option<u32>,
) -> Result<Vec<Check>, String> {
    let scaling = calibration(p).map(|c| c.0).unwrap_or_default();
    let mut out = Vec::new();
    let mut add = |kind: &'static str,
                   what: &str,
                   held_out: bool,
                   from: &[&'static str],
                   against: &'static str,
                   cpus: u32,
                   changes: &[&str]|
     -> Result<(), String> {
        let alone = bare
            .get(&format!("bare-{against}"))
            .filter(|v| held_out && !v.is_empty());
        let measured = match (alone, p.get(against)) {
            (Some(v), _) => median(v.clone()),
            (None, Some(target)) => wall_ms(target),
            (None, None) => return Ok(()),
        };
        if !from.iter().all(|f| p.contains_key(*f)) {
            return Ok(());
        }
        let what = match alone {
            Some(_) => format!("{what}, run alone"),
            None => what.to_string(),
        };
        let profiles: Vec<Profile> = from.iter().flat_map(|f| p[*f].iter().cloned()).collect();
        let req = Request {
            vcpus: vec![cpus],
            changes: changes
                .iter()
                .map(|c| Change::parse(c))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
            host_cores,
            host_scaling: if held_out {
                scaling.clone()
            } else {
                Vec::new()
            },
            ..request(0.1)
        };
        let r = predict(&profiles, &req).map_err(|e| format!("{what}: {e}"))?;
        let s = &r.scaling[0];
        out.push(Check {
            kind,
            what,
            held_out,
            from: from.to_vec(),
            against,
            unit: Unit::Ms,
            predicted: s.time_after_ms.unwrap_or(s.time_ms),
            measured,
        });
        Ok(())
    };
    add(
        "scaling",
        "1 → 2 vCPUs",
        false,
        &["base-1"],
        "base-2",
        2,
        &[],
    )?;
    add(
        "scaling",
        "1 → 4 vCPUs",
        false,
        &["base-1"],
        "base-4",
        4,
        &[],
    )?;
    add(
        "scaling",
        "1, 2 → 4 vCPUs",
        false,
        &["base-1", "base-2"],
        "base-4",
        4,
        &[],
    )?;
    add(
        "scaling",
        "1, 4 → 2 vCPUs",
        false,
        &["base-1", "base-4"],
        "base-2",
        2,
        &[],
    )?;
    add(
        "function",
        "kernel −10 %, 2 vCPUs",
        false,
        &["base-2"],
        "kernel-2",
        2,
        &["function=kernel:-10%"],
    )?;
    add(
        "function",
        "parse_input −10 %, 2 vCPUs",
        false,
        &["base-2"],
        "parse-2",
        2,
        &["function=parse_input:-10%"],
    )?;
    add(
        "phase",
        "solve −10 %, 2 vCPUs",
        false,
        &["base-2"],
        "solve-2",
        2,
        &["phase=solve:-10%"],
    )?;
    add(
        "cpu speed",
        "half a CPU (cpu.max), 1 vCPU",
        false,
        &["base-1"],
        "slow-1",
        1,
        &["cpu-speed:-50%"],
    )?;
    for w in ["xz", "make"] {
        let n = |c: u32| -> &'static str {
            match (w, c) {
                ("xz", 1) => "xz-1",
                ("xz", 2) => "xz-2",
                ("xz", 4) => "xz-4",
                ("make", 1) => "make-1",
                ("make", 2) => "make-2",
                _ => "make-4",
            }
        };
        add(
            "scaling",
            &format!("{w}: 1 → 2 vCPUs"),
            true,
            &[n(1)],
            n(2),
            2,
            &[],
        )?;
        add(
            "scaling",
            &format!("{w}: 1, 2 → 4 vCPUs"),
            true,
            &[n(1), n(2)],
            n(4),
            4,
            &[],
        )?;
    }
    Ok(out)
}

/// The median run time of `runs` without their profiler, ms: the wall
/// time less what the profiler kept the program from where it ran on the
/// program's CPUs (`model::alone_wall_ms`; the wall time itself where it
/// ran apart). The predictions are of the program alone: so is what they
/// are checked against.
fn wall_ms(runs: &[Profile]) -> f64 {
    median(
        runs.iter()
            .map(perfvmm_predict::model::alone_wall_ms)
            .collect(),
    )
}

/// Every check, fit and Coz comparison the runs allow (see [`checks`]).
pub fn validate(r: &Runs, host_cores: Option<u32>) -> Result<Validation, String> {
    let mut checks = checks(&r.profiles, &r.bare, host_cores)?;
    let fits = fit_checks(r)?;
    checks.extend(memory_checks(r, &fits, host_cores)?);
    let coz = coz_checks(r, &checks);
    Ok(Validation { checks, fits, coz })
}

/// The memory-size runs: sized from `mem-2`'s profile, each as
/// (name, what its size is).
const MEMORY_SIZES: [(&str, &str); 3] = [
    ("memfit-2", "its need (peak + 10 %)"),
    ("memlow-2", "90 % of its peak"),
    ("membig-2", "4 × its peak"),
];

/// What `perfvmm predict` says of a 2-CPU host of some memory.
struct OnHost {
    fits: bool,
    /// The run time there, ms.
    time_ms: f64,
}

/// `perfvmm predict` from `profiles` (of `mem-2`) for a 2-CPU host of
/// `memory` bytes, the program needing its peak and 10 %.
fn predict_on(
    profiles: &[Profile],
    memory: u64,
    host_cores: Option<u32>,
) -> Result<OnHost, String> {
    let req = Request {
        hosts: Some(HostTable {
            source: None,
            date: None,
            currency: "USD".into(),
            hosts: vec![Host {
                name: format!("{} MiB", memory >> 20),
                cores: 2,
                memory_bytes: memory,
                cpu_speed: 1.0,
                io_bytes_per_sec: None,
                price_per_hour: None,
            }],
        }),
        host_cores,
        ..request(0.1)
    };
    let rep = predict(profiles, &req).map_err(|e| format!("mem-2: {e}"))?;
    let fit = rep
        .hosts
        .as_ref()
        .and_then(|h| h.fits.first())
        .ok_or("mem-2: no host in the report")?;
    Ok(OnHost {
        fits: fit.unfit.is_none(),
        time_ms: fit.time_ms,
    })
}

/// A request for 2 vCPUs as they are, no hosts, `margin` of memory.
fn request(margin: f64) -> Request {
    Request {
        vcpus: vec![2],
        changes: Vec::new(),
        hosts: None,
        deadline_ms: None,
        runs_per_day: 1.0,
        memory_margin: margin,
        host_cores: None,
        host_scaling: Vec::new(),
    }
}

/// The `mem-2` profile of `m`'s round, which sized it.
fn sized_from<'a>(r: &'a Runs, m: &MemoryRun) -> Option<&'a Profile> {
    match m.round.as_str() {
        "" => r.by_run.get("mem-2"),
        n => r.by_run.get(&format!("mem-2.{n}")),
    }
}

/// Memory checks: the program's peak as `perfvmm predict` takes it (the
/// largest of `mem-2`'s profiles, their sampled resident memory) against
/// the largest the kernel counted in the cgroups of `mem-2` and of the runs
/// in 4 × the peak (neither limited near it); and the run time in each
/// memory size that every run of it was predicted to fit.
fn memory_checks(
    r: &Runs,
    fits: &[FitCheck],
    host_cores: Option<u32>,
) -> Result<Vec<Check>, String> {
    let mut out = Vec::new();
    let Some(base) = r.profiles.get("mem-2") else {
        return Ok(out);
    };
    let peak = ["mem-2", "membig-2"]
        .iter()
        .filter_map(|n| r.memory.get(*n))
        .flatten()
        .filter(|m| m.fitted())
        .map(|m| m.peak)
        .max();
    if let Some(peak) = peak {
        let need = predict(base, &request(0.0)).map_err(|e| format!("mem-2: {e}"))?;
        out.push(Check {
            kind: "memory",
            what: "peak memory, 2 vCPUs".into(),
            held_out: false,
            from: vec!["mem-2"],
            against: "mem-2, membig-2",
            unit: Unit::Bytes,
            predicted: need.memory_need_bytes as f64,
            measured: peak as f64,
        });
    }
    for f in fits.iter().filter(|f| f.predicted_fits == f.runs) {
        let Some(ran) = r.profiles.get(f.against) else {
            continue;
        };
        out.push(Check {
            kind: "memory size",
            what: format!("in {}, {} MiB, 2 vCPUs", f.what, f.limit_bytes >> 20),
            held_out: false,
            from: vec!["mem-2"],
            against: f.against,
            unit: Unit::Ms,
            predicted: predict_on(base, f.limit_bytes, host_cores)?.time_ms,
            measured: wall_ms(ran),
        });
    }
    Ok(out)
}

/// Whether the program fits each memory size, predicted (`perfvmm
/// predict --hosts` with a host of that memory, from the profile that
/// sized the run) and run.
fn fit_checks(r: &Runs) -> Result<Vec<FitCheck>, String> {
    let mut out = Vec::new();
    for (against, what) in MEMORY_SIZES {
        let Some(runs) = r.memory.get(against) else {
            continue;
        };
        let mut f = FitCheck {
            what,
            against,
            limit_bytes: 0,
            runs: 0,
            predicted_fits: 0,
            fitted: 0,
            right: 0,
        };
        let mut limits = Vec::new();
        for m in runs {
            let Some(p) = sized_from(r, m) else {
                continue;
            };
            let limit = m.limit.unwrap_or(u64::MAX);
            let fits = predict_on(std::slice::from_ref(p), limit, None)?.fits;
            limits.push(limit as f64);
            f.runs += 1;
            f.predicted_fits += usize::from(fits);
            f.fitted += usize::from(m.fitted());
            f.right += usize::from(fits == m.fitted());
        }
        if f.runs > 0 {
            f.limit_bytes = median(limits) as u64;
            out.push(f);
        }
    }
    Ok(out)
}

/// Coz's virtual speed-ups beside the model's predictions of the same
/// changes: Coz predicts `base-2`'s time times the ratio of its sped-up
/// experiment's duration to its baseline's (`coz0-2`).
fn coz_checks(r: &Runs, checks: &[Check]) -> Vec<CozCheck> {
    let (Some(base), Some(zero)) = (r.profiles.get("base-2"), r.coz.get("coz0-2")) else {
        return Vec::new();
    };
    let zero = median(zero.clone());
    [("cozk-2", "kernel-2"), ("cozp-2", "parse-2")]
        .into_iter()
        .filter_map(|(coz, against)| {
            let sped = median(r.coz.get(coz)?.clone());
            let model = checks.iter().find(|c| c.against == against)?;
            Some(CozCheck {
                what: model.what.clone(),
                against,
                model_ms: model.predicted,
                coz_ms: wall_ms(base) * sped / zero.max(1e-9),
                measured_ms: model.measured,
            })
        })
        .collect()
}

/// The median of the checks' errors.
pub fn median_error(checks: &[&Check]) -> f64 {
    median(checks.iter().map(|c| c.error()).collect())
}

/// The validation as Markdown: the checks' tables, tuned and held-out
/// apart, with their median and largest errors; the memory fits; Coz
/// beside the model.
pub fn markdown(v: &Validation) -> String {
    let mut o = String::new();
    for (title, held) in [
        ("Validation workload (predict-work)", false),
        ("Held out (not used to tune the models)", true),
    ] {
        let rows: Vec<&Check> = v.checks.iter().filter(|c| c.held_out == held).collect();
        if rows.is_empty() {
            continue;
        }
        o.push_str(&table(
            title,
            &[
                "prediction",
                "kind",
                "from",
                "predicted",
                "measured",
                "error",
            ],
            rows.iter().map(|c| {
                vec![
                    c.what.clone(),
                    c.kind.to_string(),
                    c.from.join(", "),
                    c.show(c.predicted),
                    c.show(c.measured),
                    percent(c.error()),
                ]
            }),
        ));
        let max = rows.iter().map(|c| c.error()).fold(0.0, f64::max);
        o.push_str(&format!(
            "\nmedian error {:.1} %, largest {:.1} % ({} predictions)\n",
            median_error(&rows) * 100.0,
            max * 100.0,
            rows.len()
        ));
    }
    if !v.fits.is_empty() {
        o.push_str(&table(
            "Memory sizes (predict-work -m 128; each run sized from, and predicted by, its round's mem-2 profile)",
            &["memory size", "predicted to fit", "fitted (no OOM kill)", "as predicted"],
            v.fits.iter().map(|f| {
                let of = |n: usize| format!("{n} of {}", f.runs);
                vec![
                    format!("{}, {} MiB", f.what, f.limit_bytes >> 20),
                    of(f.predicted_fits),
                    of(f.fitted),
                    of(f.right),
                ]
            }),
        ));
    }
    if !v.coz.is_empty() {
        let s = |ms: f64| format!("{:.1} s", ms / 1000.0);
        o.push_str(&table(
            "Coz's virtual speed-up beside the model (base-2's time × Coz's sped-up / baseline duration)",
            &["prediction", "model", "Coz", "measured", "model error", "Coz error"],
            v.coz.iter().map(|c| {
                vec![
                    c.what.clone(),
                    s(c.model_ms),
                    s(c.coz_ms),
                    s(c.measured_ms),
                    percent(c.model_error()),
                    percent(c.coz_error()),
                ]
            }),
        ));
    }
    o
}

/// "12.3 %" of 0.123.
fn percent(e: f64) -> String {
    format!("{:.1} %", e * 100.0)
}

/// A Markdown table under `title`, with a blank line before each.
fn table(title: &str, header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let rule = vec!["---".to_string(); header.len()];
    let mut o = format!("\n{title}:\n\n{}{}", line(&head), line(&rule));
    for r in rows {
        o.push_str(&line(&r));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_cut_by_kernel_messages_are_mended() {
        // As in validation runs G and H: a message inside a word, one of
        // two lines inside a line's indentation, and a line of its own.
        let console = "pvprofile a.1: {\n\
                       pvpro[  338.076534] rcu: INFO: stall\n\
                       [  338.076534] rcu: \t1-....: (673 ticks)\n\
                       file a.1:   \"x\": 1\n\
                       pvprofile a.1:   [  297.142103] watchdog: BUG: soft lockup\n\
                       }\n\
                       [  300.000001] a message of its own\n\
                       pvprofile a.1: [not a stamp] stays\n";
        assert_eq!(
            mend_console(console),
            "pvprofile a.1: {\npvprofile a.1:   \"x\": 1\npvprofile a.1:   }\n\
             [  300.000001] a message of its own\npvprofile a.1: [not a stamp] stays\n"
        );
        assert_eq!(kernel_stamp("x [ 1.123456] y"), Some(2));
        assert_eq!(kernel_stamp("[12.12345] short"), None);
        assert_eq!(kernel_stamp("[a.123456]"), None);
        // A console that ends inside a message keeps the line's head.
        assert_eq!(
            mend_console("pvprofile a.1: {[ 1.000000] m"),
            "pvprofile a.1: {\n"
        );
    }

    #[test]
    fn a_boot_is_bounded_by_its_runs() {
        let runs = in_rounds(&["base-1", "xz-2", "make-4"], 2);
        assert_eq!(
            time_bound(&runs, 40),
            Duration::from_secs(300 + 2 * (30 + 150 + 150))
        );
        assert_eq!(time_bound(&[], 20), Duration::from_secs(300));
    }

    #[test]
    fn memory_lines_parse_and_bad_ones_are_left_out() {
        let m = MemoryRun::parse("limit=148897792 peak=136314880 oom_kills=0 ran=yes");
        assert_eq!(
            m,
            Some(MemoryRun {
                round: String::new(),
                limit: Some(148897792),
                peak: 136314880,
                oom_kills: 0,
                ran: true
            })
        );
        let max = MemoryRun::parse("limit=max peak=1 oom_kills=2 ran=no").expect("parses");
        assert_eq!(max.limit, None);
        assert!(!max.fitted());
        assert_eq!(
            MemoryRun::parse("limit=12 peak=x oom_kills=0 ran=yes"),
            None
        );
        assert_eq!(MemoryRun::parse("limit=12 peak=1 ran=yes"), None);
        assert_eq!(MemoryRun::parse("garbage"), None);
    }

    #[test]
    fn runs_gather_memory_and_coz_lines_by_run_in_repetition_order() {
        let console = "\
[  1.0] pvmem memlow-2.2: limit=900 peak=899 oom_kills=1 ran=no
pvmem memlow-2.1: limit=800 peak=799 oom_kills=1 ran=no
pvmem memfit-2.1: limit=oops
pvcoz cozk-2.2: duration=2000000000
pvcoz cozk-2.1: duration=1000000000
pvcoz coz0-2.1: duration=soon
";
        let (r, bad) = read_runs(console);
        assert!(bad.is_empty());
        let low = &r.memory["memlow-2"];
        assert_eq!(
            low.iter().map(|m| m.limit).collect::<Vec<_>>(),
            [Some(800), Some(900)]
        );
        assert!(!r.memory.contains_key("memfit-2"), "a bad line is left out");
        assert_eq!(r.coz["cozk-2"], [1000.0, 2000.0]);
        assert!(!r.coz.contains_key("coz0-2"));
    }

    #[test]
    fn held_out_programs_are_checked_against_their_runs_without_the_profiler() {
        let console = "\
pvtime bare-xz-2.1: real 7.11 user 13.23 sys 0.74
pvtime xz-2.1: real 12.39 user 20.06 sys 4.28
pvtime bare-xz-1.1: soon
";
        let (mut r, _) = read_runs(console);
        assert_eq!(r.bare["bare-xz-2"], [7110.0]);
        assert_eq!(r.bare.len(), 1, "profiled runs and bad lines are not bare");
        // xz-2's profile and the bare run: checked against the bare one.
        r.profiles
            .insert("xz-1".into(), vec![profile("xz", 14_000, 1)]);
        r.profiles
            .insert("xz-2".into(), vec![profile("xz", 12_390, 1)]);
        let c = checks(&r.profiles, &r.bare, None).unwrap();
        let x = c.iter().find(|c| c.what.starts_with("xz: 1 → 2")).unwrap();
        assert_eq!(
            (x.measured, x.what.as_str()),
            (7110.0, "xz: 1 → 2 vCPUs, run alone")
        );
        // Without a bare run, against the profiled one.
        let c = checks(&r.profiles, &HashMap::new(), None).unwrap();
        let x = c.iter().find(|c| c.what.starts_with("xz: 1 → 2")).unwrap();
        assert_eq!((x.measured, x.what.as_str()), (12_390.0, "xz: 1 → 2 vCPUs"));
    }

    fn profile(name: &str, wall_ms: u64, peak: u64) -> Profile {
        let json = format!(
            r#"{{"format":"{}","version":1,"command":["{name}"],"wall_ms":{wall_ms},"interval_ms":10,"runs":1,
            "cpu_time_source":"schedstat","working_set_source":"rss","io_source":"chars","cpus":2,
            "phases":[{{"id":1,"name":"work","source":"hint","start_ms":0,"duration_ms":{wall_ms},
            "parallelism_p50":1.0,"parallelism_p95":1.0,"max_useful":1,"working_set_bytes":{peak},
            "peak_bytes":{peak},"io_bytes_per_sec":0,"io_class":"none","samples":10,"cpu_ms":{wall_ms}}}]}}"#,
            guest_hints::profile::FORMAT
        );
        Profile::from_json(&json).expect("a test profile")
    }

    /// A run of one phase on 4 threads, `wall_ms` long, on `cpus` vCPUs.
    fn threaded(cpus: u32, wall_ms: u64, cpu_ms: u64) -> Profile {
        let json = format!(
            r#"{{"format":"{}","version":1,"command":["w"],"wall_ms":{wall_ms},"interval_ms":10,"runs":1,
            "cpu_time_source":"schedstat","working_set_source":"rss","io_source":"chars","cpus":{cpus},
            "phases":[{{"id":1,"name":"solve","source":"hint","start_ms":0,"duration_ms":{wall_ms},
            "parallelism_p50":1.0,"parallelism_p95":1.0,"max_useful":4,"working_set_bytes":1,
            "peak_bytes":1,"io_bytes_per_sec":0,"io_class":"none","samples":10,"cpu_ms":{cpu_ms}}}]}}"#,
            guest_hints::profile::FORMAT
        );
        Profile::from_json(&json).expect("a test profile")
    }

    #[test]
    fn the_machine_is_calibrated_from_the_parallel_runs_not_the_serial_tail() {
        // Two real CPUs. base: 800 ms of parallel work and a serial 100 ms
        // in the same phase; cal: the parallel work alone.
        let mut p: HashMap<String, Vec<Profile>> = HashMap::new();
        p.insert("base-1".into(), vec![threaded(1, 900, 900)]);
        p.insert("base-2".into(), vec![threaded(2, 500, 900)]);
        let (c, from) = calibration(&p).expect("calibrated from base");
        assert_eq!(from, "base-1, base-2, base-4");
        assert!((c[0].1 - 1.8).abs() < 0.01, "{c:?}");
        p.insert("cal-1".into(), vec![threaded(1, 800, 800)]);
        p.insert("cal-2".into(), vec![threaded(2, 400, 800)]);
        let (c, from) = calibration(&p).expect("calibrated from cal");
        assert_eq!(from, "cal-1, cal-2, cal-4");
        assert_eq!(c[0].0, 2);
        assert!((c[0].1 - 2.0).abs() < 0.01, "{c:?}");
    }

    fn mem(round: &str, limit: u64, peak: u64, fitted: bool) -> MemoryRun {
        MemoryRun {
            round: round.into(),
            limit: Some(limit),
            peak,
            oom_kills: u64::from(!fitted),
            ran: fitted,
        }
    }

    #[test]
    fn memory_sizes_are_predicted_through_a_host_of_that_memory_from_their_round() {
        let mib = 1 << 20;
        let mut r = Runs::default();
        for (n, peak) in [("mem-2.1", 100 * mib), ("mem-2.2", 101 * mib)] {
            r.by_run.insert(n.into(), profile("w", 4000, peak));
            r.profiles
                .entry("mem-2".into())
                .or_default()
                .push(profile("w", 4000, peak));
        }
        r.profiles
            .insert("memfit-2".into(), vec![profile("w", 5000, 100 * mib)]);
        let unlimited = |round: &str, peak| MemoryRun {
            limit: None,
            ..mem(round, 0, peak, true)
        };
        r.memory.insert(
            "mem-2".into(),
            vec![unlimited("1", 103 * mib), unlimited("2", 102 * mib)],
        );
        r.memory
            .insert("membig-2".into(), vec![unlimited("1", 99 * mib)]);
        // Round 1's need (110 MiB) is below round 2's (111.1): each run is
        // predicted from its own round's profile.
        r.memory.insert(
            "memfit-2".into(),
            vec![
                mem("1", 110 * mib + 4096, 104 * mib, true),
                mem("2", 112 * mib, 104 * mib, true),
            ],
        );
        r.memory.insert(
            "memlow-2".into(),
            vec![
                mem("1", 90 * mib, 90 * mib, false),
                mem("2", 91 * mib, 90 * mib, true),
                mem("3", 91 * mib, 90 * mib, false),
            ],
        );
        let v = validate(&r, None).expect("validates");
        let peak = v.checks.iter().find(|c| c.kind == "memory").expect("peak");
        assert_eq!(
            (peak.predicted, peak.measured),
            ((101 * mib) as f64, (103 * mib) as f64),
            "the largest of each"
        );
        assert_eq!(peak.show(peak.measured), "103 MiB");
        let size = v
            .checks
            .iter()
            .find(|c| c.kind == "memory size")
            .expect("size");
        assert_eq!(size.against, "memfit-2");
        assert!((size.predicted - 4000.0).abs() < 1.0, "{size:?}");
        assert!((size.error() - 0.2).abs() < 1e-3);
        let fit = &v.fits[0];
        assert_eq!(
            (fit.runs, fit.predicted_fits, fit.fitted, fit.right),
            (2, 2, 2, 2)
        );
        assert!(fit.right());
        let low = &v.fits[1];
        assert_eq!(
            (low.runs, low.predicted_fits, low.fitted, low.right),
            (2, 0, 1, 1),
            "round 3 has no profile to predict from; round 2 fitted against the prediction"
        );
        assert!(!low.right());
        assert!(
            !v.checks.iter().any(|c| c.against == "memlow-2"),
            "no run time where it does not fit"
        );
        let md = markdown(&v);
        assert!(
            md.contains("| its need (peak + 10 %), 111 MiB | 2 of 2 | 2 of 2 | 2 of 2 |"),
            "{md}"
        );
        assert!(
            md.contains("| 90 % of its peak, 90 MiB | 0 of 2 | 1 of 2 | 1 of 2 |"),
            "{md}"
        );
    }

    #[test]
    fn coz_predicts_base_2_scaled_by_its_experiments() {
        let checks = vec![Check {
            kind: "function",
            what: "kernel −10 %, 2 vCPUs".into(),
            held_out: false,
            from: vec!["base-2"],
            against: "kernel-2",
            unit: Unit::Ms,
            predicted: 3600.0,
            measured: 3500.0,
        }];
        let mut r = Runs::default();
        r.profiles
            .insert("base-2".into(), vec![profile("w", 4000, 1)]);
        r.coz.insert("coz0-2".into(), vec![5000.0, 5200.0, 9000.0]);
        r.coz.insert("cozk-2".into(), vec![4680.0]);
        let c = coz_checks(&r, &checks);
        assert_eq!(c.len(), 1, "no cozp-2, no parse check");
        assert!(
            (c[0].coz_ms - 3600.0).abs() < 1e-6,
            "4000 × 4680 / 5200: {c:?}"
        );
        assert!((c[0].model_error() - c[0].coz_error()).abs() < 1e-9);
    }
}
