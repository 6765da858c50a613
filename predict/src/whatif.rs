//! What-if changes: a function or a phase made faster or slower, a faster
//! CPU, faster I/O — applied to a model before predicting.

use serde::Serialize;

use crate::model::ProgramModel;
use crate::PredictError;

/// One change, as given on the command line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Change {
    /// `function=NAME:-10%`: the function's own time changes by the
    /// fraction (−0.1: 10 % faster).
    Function { name: String, by: f64 },
    /// `phase=NAME:-10%`: the phase's time changes by the fraction.
    Phase { name: String, by: f64 },
    /// `cpu-speed:+20%`: every CPU runs faster by the fraction.
    CpuSpeed(f64),
    /// `io:+50%`: storage is faster by the fraction (waits in phases that
    /// do I/O shrink).
    Io(f64),
}

impl Change {
    /// Parses one `--what-if` argument.
    pub fn parse(s: &str) -> Result<Change, PredictError> {
        let bad = |why: &str| PredictError::WhatIf(s.to_string(), why.to_string());
        let (what, pct) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("no ':' before the change"))?;
        let by =
            percent(pct).ok_or_else(|| bad("the change is not a percentage like -10% or +20%"))?;
        let named = |prefix: &str| what.strip_prefix(prefix).map(str::to_string);
        let change = if let Some(name) = named("function=") {
            Change::Function { name, by }
        } else if let Some(name) = named("phase=") {
            Change::Phase { name, by }
        } else if what == "cpu-speed" {
            Change::CpuSpeed(by)
        } else if what == "io" {
            Change::Io(by)
        } else {
            return Err(bad("expected function=NAME, phase=NAME, cpu-speed or io"));
        };
        match &change {
            Change::Function { name, .. } | Change::Phase { name, .. } if name.is_empty() => {
                Err(bad("the name is empty"))
            }
            Change::Function { by, .. } | Change::Phase { by, .. } if *by <= -1.0 => {
                Err(bad("a time cannot shrink by 100 % or more"))
            }
            Change::CpuSpeed(by) | Change::Io(by) if *by <= -1.0 => {
                Err(bad("a speed cannot fall by 100 % or more"))
            }
            _ => Ok(change),
        }
    }
}

/// `-10%`, `+20 %`, `15` → −0.10, 0.20, 0.15; within ±1000 %.
fn percent(s: &str) -> Option<f64> {
    let t = s.trim().trim_end_matches('%').trim();
    let v: f64 = t.parse().ok()?;
    (v.is_finite() && v.abs() <= 1000.0).then_some(v / 100.0)
}

/// `model` with `changes` applied, and the CPU speed they give (1.0: as
/// profiled).
pub fn apply(
    model: &ProgramModel,
    changes: &[Change],
) -> Result<(ProgramModel, f64), PredictError> {
    let mut m = model.clone();
    let mut speed = 1.0;
    for c in changes {
        match c {
            Change::CpuSpeed(by) => speed *= 1.0 + by,
            Change::Io(by) => {
                for p in m.phases.iter_mut().filter(|p| p.does_io()) {
                    p.wait_ms /= 1.0 + by;
                }
            }
            Change::Phase { name, by } => {
                let Some(p) = m.phases.iter_mut().find(|p| &p.name == name) else {
                    let names = model.phases.iter().map(|p| p.name.as_str());
                    return Err(PredictError::NoSuchPhase(
                        name.clone(),
                        nearest(name, names),
                    ));
                };
                let f = 1.0 + by;
                p.wait_ms *= f;
                p.serial_ms *= f;
                p.parallel_ms *= f;
                p.contention_ms *= f;
            }
            Change::Function { name, by } => function_change(&mut m, model, name, *by)?,
        }
    }
    Ok((m, speed))
}

/// Changes the time of function `name` by `by` in every phase it ran in:
/// its share of the serial path scales the serial part, its share of the
/// rest scales the parallel part (the critical path of a parallel phase
/// shortens only by what the function does on every thread).
fn function_change(
    m: &mut ProgramModel,
    orig: &ProgramModel,
    name: &str,
    by: f64,
) -> Result<(), PredictError> {
    let known = |f: &str| f == name || f.split('@').next() == Some(name);
    let mut found = false;
    for p in &mut m.phases {
        let Some(f) = p.functions.iter().find(|f| known(&f.name)) else {
            continue;
        };
        found = true;
        let cpu = p.serial_ms + p.parallel_ms;
        let serial_frac = if cpu > 0.0 { p.serial_ms / cpu } else { 0.0 };
        let par_share = if serial_frac < 1.0 {
            ((f.share - f.serial_share * serial_frac) / (1.0 - serial_frac)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        p.serial_ms *= 1.0 + by * f.serial_share;
        p.parallel_ms *= 1.0 + by * par_share;
    }
    if found {
        return Ok(());
    }
    let mut names: Vec<&str> = orig
        .phases
        .iter()
        .flat_map(|p| p.functions.iter().map(|f| f.name.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return Err(PredictError::NoFunctions(name.to_string()));
    }
    Err(PredictError::NoSuchFunction(
        name.to_string(),
        nearest(name, names.into_iter()),
    ))
}

/// The three names closest to `want` (edit distance), for error messages.
pub fn nearest<'a>(want: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = names.map(|n| (distance(want, n), n)).collect();
    scored.sort();
    scored.dedup();
    scored
        .into_iter()
        .take(3)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(cur)
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PhaseModel;
    use guest_hints::profile::FunctionTime;

    fn model() -> ProgramModel {
        let phase = |name: &str, serial: f64, parallel: f64, funcs: Vec<FunctionTime>| PhaseModel {
            name: name.into(),
            wait_ms: 100.0,
            serial_ms: serial,
            parallel_ms: parallel,
            contention_ms: 0.0,
            threads: 4,
            io_class: if name == "load" { "sequential" } else { "none" }.into(),
            io_bytes_per_sec: 0,
            working_set_bytes: 0,
            peak_bytes: 0,
            functions: funcs,
            fitted_from: vec![1],
            observed_ms: vec![0.0],
        };
        let f = |name: &str, share: f64, serial_share: f64| FunctionTime {
            name: name.into(),
            share,
            serial_share,
        };
        ProgramModel {
            program: "x".into(),
            phases: vec![
                phase("load", 1000.0, 0.0, vec![f("parse", 1.0, 1.0)]),
                // Half the CPU serial (all in setup), half parallel (all in kernel).
                phase(
                    "solve",
                    1000.0,
                    1000.0,
                    vec![f("kernel", 0.5, 0.0), f("setup", 0.5, 1.0)],
                ),
            ],
            notes: Vec::new(),
        }
    }

    #[test]
    fn parses_every_kind_and_refuses_nonsense() {
        assert_eq!(
            Change::parse("function=sweep:-10%").unwrap(),
            Change::Function {
                name: "sweep".into(),
                by: -0.1
            }
        );
        assert_eq!(
            Change::parse("cpu-speed:+20%").unwrap(),
            Change::CpuSpeed(0.2)
        );
        assert_eq!(Change::parse("io:50").unwrap(), Change::Io(0.5));
        assert_eq!(
            Change::parse("phase=a:b:-5%").unwrap(),
            Change::Phase {
                name: "a:b".into(),
                by: -0.05
            }
        );
        for bad in [
            "sweep",
            "function=:-10%",
            "gpu:+5%",
            "cpu-speed:fast",
            "phase=x:-100%",
            "io:+1e9%",
        ] {
            assert!(Change::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_function_on_the_serial_path_shortens_it_one_in_parallel_work_less() {
        let m = model();
        let (after, _) = apply(&m, &[Change::parse("function=setup:-10%").unwrap()]).unwrap();
        assert_eq!(after.phases[1].serial_ms, 900.0);
        assert_eq!(after.phases[1].parallel_ms, 1000.0);
        let (after, _) = apply(&m, &[Change::parse("function=kernel:-10%").unwrap()]).unwrap();
        assert_eq!(after.phases[1].serial_ms, 1000.0);
        assert!((after.phases[1].parallel_ms - 900.0).abs() < 1e-9);
        // On 4 CPUs the kernel's 10 % is 25 ms of the phase's 1350.
        let saved = m.time_ms(4, 1.0) - after.time_ms(4, 1.0);
        assert!((saved - 25.0).abs() < 1e-9, "{saved}");
    }

    #[test]
    fn phases_cpu_speed_and_io_change_what_they_should() {
        let m = model();
        let changes =
            ["phase=load:-50%", "cpu-speed:+100%", "io:+100%"].map(|c| Change::parse(c).unwrap());
        let (after, speed) = apply(&m, &changes).unwrap();
        assert_eq!(speed, 2.0);
        assert_eq!(after.phases[0].serial_ms, 500.0);
        assert_eq!(
            after.phases[0].wait_ms, 25.0,
            "halved by the phase, then by faster I/O"
        );
        assert_eq!(after.phases[1].wait_ms, 100.0, "no I/O in solve");
    }

    #[test]
    fn unknown_names_list_the_nearest() {
        let m = model();
        match apply(&m, &[Change::parse("function=kernl:-10%").unwrap()]) {
            Err(PredictError::NoSuchFunction(n, near)) => {
                assert_eq!(n, "kernl");
                assert_eq!(near[0], "kernel");
            }
            other => panic!("{other:?}"),
        }
        match apply(&m, &[Change::parse("phase=slove:-10%").unwrap()]) {
            Err(PredictError::NoSuchPhase(_, near)) => assert_eq!(near[0], "solve"),
            other => panic!("{other:?}"),
        }
    }
}
