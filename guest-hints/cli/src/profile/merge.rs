//! `perfhint profile --merge`: several runs of one binary as one profile,
//! each figure the median over the runs and its spread (smallest and
//! largest) kept, as `llvm-profdata merge` combines runs.

use std::collections::HashMap;

use guest_hints::profile::{
    weighted_functions, FunctionTime, MinMax, Profile, ProfilePhase, Spread,
};

/// The median of `v` (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// How phases of different runs are matched: by name and the how-manieth
/// phase of that name it is, else by position.
fn keys(p: &Profile) -> Vec<(String, usize)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    p.phases
        .iter()
        .enumerate()
        .map(|(i, ph)| match &ph.name {
            Some(n) => {
                let k = seen.entry(n.as_str()).or_insert(0);
                *k += 1;
                (format!("name:{n}"), *k)
            }
            None => ("position".to_string(), i),
        })
        .collect()
}

fn id_text(p: &Profile) -> String {
    match &p.build_id {
        Some(id) => format!("build-id {id}"),
        None => format!(
            "no build-id, binary {}",
            p.binary.as_deref().unwrap_or("unknown")
        ),
    }
}

/// Merges `inputs` (file name, profile); all must profile the same binary:
/// the same build-id, or, without build-ids, the same binary path.
pub fn merge(inputs: &[(String, Profile)]) -> Result<Profile, String> {
    let Some((first_name, first)) = inputs.first() else {
        return Err("nothing to merge".to_string());
    };
    for (name, p) in &inputs[1..] {
        let same = match (&first.build_id, &p.build_id) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (None, None) => first.binary == p.binary,
            _ => false,
        };
        if !same {
            return Err(format!(
                "{first_name} and {name} profile different binaries ({} vs {})",
                id_text(first),
                id_text(p)
            ));
        }
    }
    // Every key, in the order of the first run that has it.
    let mut order: Vec<(String, usize)> = Vec::new();
    let mut found: HashMap<(String, usize), Vec<(&Profile, &ProfilePhase)>> = HashMap::new();
    for (_, p) in inputs {
        for (k, ph) in keys(p).into_iter().zip(&p.phases) {
            if !found.contains_key(&k) {
                order.push(k.clone());
            }
            found.entry(k).or_default().push((p, ph));
        }
    }
    let mut phases: Vec<ProfilePhase> = Vec::new();
    for k in &order {
        let runs = &found[k];
        let fig = |f: fn(&ProfilePhase) -> f64, s: fn(&Spread) -> MinMax| {
            let vals: Vec<f64> = runs.iter().map(|(_, ph)| f(ph)).collect();
            let mut mm = MinMax {
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
            };
            for (_, ph) in runs {
                let (lo, hi) = match &ph.spread {
                    Some(sp) => (s(sp).min, s(sp).max),
                    None => (f(ph), f(ph)),
                };
                mm.min = mm.min.min(lo);
                mm.max = mm.max.max(hi);
            }
            (median(&vals), mm)
        };
        let (start, start_s) = fig(|p| p.start_ms as f64, |s| s.start_ms);
        let (dur, dur_s) = fig(|p| p.duration_ms as f64, |s| s.duration_ms);
        let (p50, p50_s) = fig(|p| p.parallelism_p50, |s| s.parallelism_p50);
        let (p95, p95_s) = fig(|p| p.parallelism_p95, |s| s.parallelism_p95);
        let (useful, useful_s) = fig(|p| f64::from(p.max_useful), |s| s.max_useful);
        let (ws, ws_s) = fig(|p| p.working_set_bytes as f64, |s| s.working_set_bytes);
        let (peak, peak_s) = fig(|p| p.peak_bytes as f64, |s| s.peak_bytes);
        let (io, io_s) = fig(|p| p.io_bytes_per_sec as f64, |s| s.io_bytes_per_sec);
        // The class most runs saw (the first run's, on a tie).
        let mut classes: Vec<(&str, usize)> = Vec::new();
        for (_, ph) in runs {
            match classes.iter_mut().find(|c| c.0 == ph.io_class) {
                Some(c) => c.1 += 1,
                None => classes.push((&ph.io_class, 1)),
            }
        }
        let class = classes
            .iter()
            .fold(("none", 0), |best, c| if c.1 > best.1 { *c } else { best })
            .0;
        let (_, head) = runs[0];
        let ws = ws.round() as u64;
        let peak = (peak.round() as u64).max(ws);
        let p50 = (p50 * 1000.0).round() / 1000.0;
        phases.push(ProfilePhase {
            id: 0,
            name: head.name.clone(),
            source: head.source.clone(),
            start_ms: start.round() as u64,
            duration_ms: dur.round() as u64,
            parallelism_p50: p50,
            parallelism_p95: ((p95 * 1000.0).round() / 1000.0).max(p50),
            max_useful: useful.round() as u32,
            working_set_bytes: ws,
            peak_bytes: peak,
            io_bytes_per_sec: io.round() as u64,
            io_class: class.to_string(),
            samples: runs.iter().map(|(_, ph)| ph.samples).sum(),
            cpu_ms: runs
                .iter()
                .map(|(_, ph)| ph.cpu_ms)
                .collect::<Option<Vec<f64>>>()
                .map(|v| median(&v)),
            profiler_cpu_ms: runs
                .iter()
                .map(|(_, ph)| ph.profiler_cpu_ms)
                .collect::<Option<Vec<f64>>>()
                .map(|v| median(&v)),
            functions: mean_functions(runs.iter().map(|(_, ph)| *ph)),
            spread: Some(Spread {
                start_ms: start_s,
                duration_ms: dur_s,
                parallelism_p50: p50_s,
                parallelism_p95: p95_s,
                max_useful: useful_s,
                working_set_bytes: ws_s,
                peak_bytes: peak_s,
                io_bytes_per_sec: io_s,
            }),
        });
    }
    phases.sort_by_key(|p| p.start_ms);
    let phases = super::phases::tidy(phases);
    let walls: Vec<f64> = inputs.iter().map(|(_, p)| p.wall_ms as f64).collect();
    let mut notes: Vec<String> = Vec::new();
    for (_, p) in inputs {
        for n in &p.notes {
            if !notes.contains(n) {
                notes.push(n.clone());
            }
        }
    }
    // Figures measured differently in different runs are said so.
    let differ = |f: fn(&Profile) -> &str, what: &str, notes: &mut Vec<String>| {
        if inputs.iter().any(|(_, p)| f(p) != f(first)) {
            notes.push(format!("{what} was measured differently in some runs"));
        }
    };
    if inputs.iter().any(|(_, p)| p.cpus != first.cpus) {
        notes.push(format!(
            "the runs had different numbers of CPUs; the profile says {}, the first run's",
            first.cpus
        ));
    }
    differ(|p| &p.cpu_time_source, "CPU time", &mut notes);
    differ(|p| &p.working_set_source, "the working set", &mut notes);
    differ(|p| &p.io_source, "I/O", &mut notes);
    Ok(Profile {
        format: first.format.clone(),
        version: guest_hints::profile::VERSION,
        command: first.command.clone(),
        binary: first.binary.clone(),
        build_id: first.build_id.clone(),
        wall_ms: median(&walls).round() as u64,
        interval_ms: first.interval_ms,
        runs: inputs.iter().map(|(_, p)| p.runs).sum(),
        cpu_time_source: first.cpu_time_source.clone(),
        working_set_source: first.working_set_source.clone(),
        io_source: first.io_source.clone(),
        cpus: first.cpus,
        notes,
        phases,
    })
}

/// Each function's mean share over the runs (0 in a run that did not
/// sample it), most first.
fn mean_functions<'a>(runs: impl ExactSizeIterator<Item = &'a ProfilePhase>) -> Vec<FunctionTime> {
    let w = 1.0 / runs.len().max(1) as f64;
    weighted_functions(runs.map(|ph| (ph.functions.as_slice(), w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: Option<&str>, start: u64, dur: u64, p50: f64) -> ProfilePhase {
        ProfilePhase {
            id: 0,
            name: name.map(str::to_string),
            source: "explicit".into(),
            start_ms: start,
            duration_ms: dur,
            parallelism_p50: p50,
            parallelism_p95: p50 + 0.1,
            max_useful: p50.ceil() as u32,
            working_set_bytes: 1000,
            peak_bytes: 2000,
            io_bytes_per_sec: 0,
            io_class: "none".into(),
            samples: dur / 10,
            cpu_ms: None,
            profiler_cpu_ms: None,
            functions: Vec::new(),
            spread: None,
        }
    }

    fn profile(build_id: Option<&str>, phases: Vec<ProfilePhase>) -> Profile {
        Profile {
            format: guest_hints::profile::FORMAT.into(),
            version: 1,
            command: vec!["app".into()],
            binary: Some("/bin/app".into()),
            build_id: build_id.map(str::to_string),
            wall_ms: phases
                .iter()
                .map(|p| p.start_ms + p.duration_ms)
                .max()
                .unwrap_or(0),
            interval_ms: 10,
            runs: 1,
            cpu_time_source: "schedstat".into(),
            working_set_source: "referenced".into(),
            io_source: "storage".into(),
            cpus: 1,
            notes: vec![],
            phases,
        }
    }

    #[test]
    fn medians_and_spreads() {
        let runs: Vec<(String, Profile)> = [(2.0, 600), (2.4, 640), (1.8, 700)]
            .iter()
            .enumerate()
            .map(|(i, &(p, d))| {
                (
                    format!("run{i}"),
                    profile(
                        Some("ab12"),
                        vec![phase(Some("two"), 0, d, p), phase(Some("one"), d, 500, 1.0)],
                    ),
                )
            })
            .collect();
        let m = merge(&runs).unwrap();
        assert_eq!(m.runs, 3);
        assert_eq!(m.phases.len(), 2);
        let two = &m.phases[0];
        assert_eq!(two.name.as_deref(), Some("two"));
        assert_eq!(two.parallelism_p50, 2.0);
        assert_eq!(two.duration_ms, 640);
        let sp = two.spread.unwrap();
        assert_eq!((sp.parallelism_p50.min, sp.parallelism_p50.max), (1.8, 2.4));
        assert_eq!((sp.duration_ms.min, sp.duration_ms.max), (600.0, 700.0));
        assert_eq!(m.phases[1].start_ms, 640);
        assert_eq!(m.phases[1].id, 2);
        // A merged profile merges again, keeping the spread.
        let again = merge(&[("m".into(), m.clone()), ("r".into(), runs[0].1.clone())]).unwrap();
        assert_eq!(again.runs, 4);
        let sp = again.phases[0].spread.unwrap();
        assert_eq!((sp.parallelism_p50.min, sp.parallelism_p50.max), (1.8, 2.4));
        assert!(Profile::from_json(&again.to_json()).is_ok());
    }

    #[test]
    fn unnamed_phases_match_by_position_and_binaries_must_match() {
        let a = profile(
            Some("ab"),
            vec![phase(None, 0, 100, 1.0), phase(None, 100, 100, 3.0)],
        );
        let b = profile(
            Some("AB"),
            vec![phase(None, 0, 120, 1.0), phase(None, 120, 80, 5.0)],
        );
        let m = merge(&[("a".into(), a.clone()), ("b".into(), b)]).unwrap();
        assert_eq!(m.phases[1].parallelism_p50, 4.0);
        let c = profile(Some("cd"), vec![]);
        let e = merge(&[("a.json".into(), a.clone()), ("c.json".into(), c)]).unwrap_err();
        assert_eq!(
            e,
            "a.json and c.json profile different binaries (build-id ab vs build-id cd)"
        );
        let d = profile(None, vec![]);
        assert!(merge(&[("a".into(), a), ("d".into(), d)]).is_err());
    }
}
