//! Validation of `perfvmm predict` against real runs (issue 13): the guest
//! scenario `predict` profiles the validation workload and held-out
//! programs on 1, 2 and 4 CPUs and with changes made for real; each check
//! predicts a run from profiles taken without its change and compares the
//! prediction with the run.

use std::collections::HashMap;
use std::time::Duration;

use guest_hints::profile::Profile;
use perfvmm_predict::{median, predict, Change, Request};

use crate::{GuestRun, RunOutput};

/// The runs the scenario makes by default, in order.
pub const RUNS: &[&str] = &[
    "base-1", "base-2", "base-4", "kernel-2", "parse-2", "solve-2", "slow-1", "xz-1", "xz-2",
    "xz-4", "make-1", "make-2", "make-4",
];

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
    pub predicted_ms: f64,
    pub measured_ms: f64,
}

impl Check {
    /// |predicted − measured| / measured.
    pub fn error(&self) -> f64 {
        (self.predicted_ms - self.measured_ms).abs() / self.measured_ms.max(1.0)
    }
}

/// `runs` repeated `rounds` times, round after round (`base-1.1`,
/// `base-2.1`, ..., `base-1.2`, ...), so that a drift in the machine's
/// speed touches every run alike.
pub fn in_rounds(runs: &[&str], rounds: u32) -> Vec<String> {
    (1..=rounds)
        .flat_map(|r| runs.iter().map(move |n| format!("{n}.{r}")))
        .collect()
}

/// Boots a 4-vCPU guest and makes the `runs` (see [`RUNS`]; `NAME.N` is
/// the Nth repetition of NAME); `units` sizes the validation workload
/// (millions of steps per unit of work).
pub fn run_guest(runs: &[String], units: u32) -> RunOutput {
    let cmdline = format!("pvrun=predict pvunits={units} pvpredict={}", runs.join(","));
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
    .timeout(Duration::from_secs(3000))
    .l1_cpus(4)
    .run()
}

/// The profiles the scenario printed, by run name without its repetition
/// number (`base-1.2` is one of `base-1`'s).
pub fn profiles(console: &str) -> Result<HashMap<String, Vec<Profile>>, String> {
    match readable_profiles(console) {
        (p, bad) if bad.is_empty() => Ok(p),
        (_, bad) => Err(bad.join("; ")),
    }
}

/// As [`profiles`], leaving out the runs whose profile does not parse
/// (the console can interleave a kernel message with a profile's lines):
/// the profiles, and what was wrong with each left out.
pub fn readable_profiles(console: &str) -> (HashMap<String, Vec<Profile>>, Vec<String>) {
    let (by_run, bad) = profiles_by_run(console);
    let mut out: HashMap<String, Vec<Profile>> = HashMap::new();
    let mut runs: Vec<(String, Profile)> = by_run.into_iter().collect();
    runs.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, p) in runs {
        let base = name.split('.').next().unwrap_or(&name).to_string();
        out.entry(base).or_default().push(p);
    }
    (out, bad)
}

/// The profiles the scenario printed, by run name, and what was wrong with
/// those that do not parse.
pub fn profiles_by_run(console: &str) -> (HashMap<String, Profile>, Vec<String>) {
    let mut texts: HashMap<String, String> = HashMap::new();
    for line in console.lines() {
        let Some(rest) = line.split_once("pvprofile ").map(|(_, r)| r) else {
            continue;
        };
        let Some((name, json)) = rest.split_once(": ") else {
            continue;
        };
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

/// What vCPUs are worth on the machine, measured by the validation
/// workload's runs on 1, 2 and 4 vCPUs (`perfvmm predict --calibrate`);
/// `None` without them.
pub fn calibration(p: &HashMap<String, Vec<Profile>>) -> Option<Vec<(u32, f64)>> {
    let runs: Vec<Profile> = ["base-1", "base-2", "base-4"]
        .iter()
        .filter_map(|n| p.get(*n))
        .flatten()
        .cloned()
        .collect();
    perfvmm_predict::calibrate(&runs).ok()
}

/// Every check the profiles allow (a check whose runs are missing is left
/// out).
/// Checks with the VMs on a machine of `host_cores` physical cores (the
/// nested harness's host: its 4-vCPU L1 runs on them). The held-out
/// programs are predicted with the machine's [`calibration`] as well (the
/// validation workload's own checks are not: it measured it).
pub fn checks(
    p: &HashMap<String, Vec<Profile>>,
    host_cores: Option<u32>,
) -> Result<Vec<Check>, String> {
    let scaling = calibration(p).unwrap_or_default();
    let mut out = Vec::new();
    let mut add = |kind: &'static str,
                   what: &str,
                   held_out: bool,
                   from: &[&'static str],
                   against: &'static str,
                   cpus: u32,
                   changes: &[&str]|
     -> Result<(), String> {
        let (Some(target), true) = (p.get(against), from.iter().all(|f| p.contains_key(*f))) else {
            return Ok(());
        };
        let profiles: Vec<Profile> = from.iter().flat_map(|f| p[*f].iter().cloned()).collect();
        let req = Request {
            vcpus: vec![cpus],
            changes: changes
                .iter()
                .map(|c| Change::parse(c))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
            hosts: None,
            deadline_ms: None,
            runs_per_day: 1.0,
            memory_margin: 0.1,
            host_cores,
            host_scaling: if held_out {
                scaling.clone()
            } else {
                Vec::new()
            },
        };
        let r = predict(&profiles, &req).map_err(|e| format!("{what}: {e}"))?;
        let s = &r.scaling[0];
        out.push(Check {
            kind,
            what: what.to_string(),
            held_out,
            from: from.to_vec(),
            against,
            predicted_ms: s.time_after_ms.unwrap_or(s.time_ms),
            measured_ms: median(target.iter().map(|t| t.wall_ms as f64).collect()),
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

/// The median of the checks' errors.
pub fn median_error(checks: &[&Check]) -> f64 {
    median(checks.iter().map(|c| c.error()).collect())
}

/// The checks as a Markdown table, tuned and held-out apart, with their
/// median and largest errors.
pub fn markdown(checks: &[Check]) -> String {
    let mut o = String::new();
    for (title, held) in [
        ("Validation workload (predict-work)", false),
        ("Held out (not used to tune the models)", true),
    ] {
        let rows: Vec<&Check> = checks.iter().filter(|c| c.held_out == held).collect();
        if rows.is_empty() {
            continue;
        }
        o.push_str(&format!("\n{title}:\n\n| prediction | kind | from | predicted | measured | error |\n| --- | --- | --- | --- | --- | --- |\n"));
        for c in &rows {
            o.push_str(&format!(
                "| {} | {} | {} | {:.1} s | {:.1} s | {:.1} % |\n",
                c.what,
                c.kind,
                c.from.join(", "),
                c.predicted_ms / 1000.0,
                c.measured_ms / 1000.0,
                c.error() * 100.0
            ));
        }
        let max = rows.iter().map(|c| c.error()).fold(0.0, f64::max);
        o.push_str(&format!(
            "\nmedian error {:.1} %, largest {:.1} % ({} predictions)\n",
            median_error(&rows) * 100.0,
            max * 100.0,
            rows.len()
        ));
    }
    o
}
