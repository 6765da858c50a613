//! `perfvmm predict`: reads the profiles and tables named on the command
//! line (each checked: a regular file of bounded size) and hands them to
//! the pure `perfvmm-predict` crate.

use std::io::Read;
use std::path::Path;

use guest_hints::profile::Profile;
use perfvmm_predict::{hosts, parse_vcpus, report, Change, HostTable, Request};

/// Profiles and host tables larger than this are refused.
const MAX_INPUT_BYTES: u64 = 16 << 20;

/// The command line of `perfvmm predict`.
pub use crate::cli::PredictArgs as Args;

/// Runs the command; the text to print, or what went wrong.
pub fn run(a: &Args) -> Result<String, String> {
    let profiles = a
        .profiles
        .iter()
        .map(|p| {
            let text = read_text("profile", p, MAX_INPUT_BYTES)?;
            Profile::from_json(&text).map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let changes = a
        .what_if
        .iter()
        .map(|w| Change::parse(w))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if a.calibrate {
        let pts = perfvmm_predict::calibrate(&profiles).map_err(|e| e.to_string())?;
        let text: Vec<String> = pts.iter().map(|(n, e)| format!("{n}={e:.2}")).collect();
        return Ok(format!("{}\n", text.join(",")));
    }
    if a.host_cores == Some(0) {
        return Err("--host-cores must be 1 or more".into());
    }
    if !(a.runs_per_day.is_finite() && a.runs_per_day >= 0.0) {
        return Err("--runs-per-day must be 0 or more".into());
    }
    if !(a.memory_margin.is_finite() && (0.0..=1000.0).contains(&a.memory_margin)) {
        return Err("--memory-margin must be from 0 to 1000 (percent)".into());
    }
    let req = Request {
        vcpus: parse_vcpus(&a.vcpus).map_err(|e| e.to_string())?,
        changes,
        hosts: host_table(a.hosts.as_deref(), a.prices.as_deref())?,
        deadline_ms: a.deadline.as_deref().map(parse_duration_ms).transpose()?,
        runs_per_day: a.runs_per_day,
        memory_margin: a.memory_margin / 100.0,
        host_cores: a.host_cores,
        host_scaling: a
            .host_scaling
            .as_deref()
            .map(parse_host_scaling)
            .transpose()?
            .unwrap_or_default(),
    };
    let rep = perfvmm_predict::predict(&profiles, &req).map_err(|e| e.to_string())?;
    if let Some(path) = &a.svg {
        let svg = report::svg(&rep).map_err(|e| format!("drawing the SVG: {e}"))?;
        std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if a.json {
        let mut s = serde_json::to_string_pretty(&rep).map_err(|e| e.to_string())?;
        s.push('\n');
        Ok(s)
    } else {
        Ok(report::text(&rep))
    }
}

/// `2=1.6,4=1.9`: effective CPUs (from 1 to the vCPUs) per vCPU count
/// (2 to 1024).
fn parse_host_scaling(s: &str) -> Result<Vec<(u32, f64)>, String> {
    let bad = |t: &str| {
        format!("--host-scaling: \"{t}\" is not VCPUS=CPUS, with VCPUS from 2 to 1024 and CPUS from 1 to VCPUS")
    };
    s.split(',')
        .map(|t| {
            let (n, e) = t.trim().split_once('=').ok_or_else(|| bad(t))?;
            let n: u32 = n.trim().parse().map_err(|_| bad(t))?;
            let e: f64 = e.trim().parse().map_err(|_| bad(t))?;
            if !((2..=1024).contains(&n) && e.is_finite() && (1.0..=f64::from(n)).contains(&e)) {
                return Err(bad(t));
            }
            Ok((n, e))
        })
        .collect()
}

/// The hosts of `--hosts` and `--prices`, in one table.
fn host_table(hosts: Option<&Path>, prices: Option<&str>) -> Result<Option<HostTable>, String> {
    let mut tables = Vec::new();
    if let Some(p) = hosts {
        let text = read_text("hosts file", p, MAX_INPUT_BYTES)?;
        tables.push(HostTable::parse(&text, &p.display().to_string()).map_err(|e| e.to_string())?);
    }
    match prices {
        Some("builtin") => tables.push(
            HostTable::parse(hosts::BUILTIN_PRICES, "the builtin prices")
                .map_err(|e| e.to_string())?,
        ),
        Some(f) => {
            let text = read_text("prices file", Path::new(f), MAX_INPUT_BYTES)?;
            tables.push(HostTable::parse(&text, f).map_err(|e| e.to_string())?);
        }
        None => {}
    }
    let mut it = tables.into_iter();
    let Some(mut first) = it.next() else {
        return Ok(None);
    };
    for t in it {
        // The prices' source and currency describe the table's priced rows.
        first.source = t.source.or(first.source);
        first.date = t.date.or(first.date);
        first.currency = t.currency;
        first.hosts.extend(t.hosts);
    }
    Ok(Some(first))
}

/// `90s`, `10m`, `2h`, `500ms`, or a bare number of seconds, in ms.
pub fn parse_duration_ms(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("--deadline {s:?}: expected a duration such as 90s, 10m or 2h"))?;
    let scale = match unit.trim() {
        "ms" => 1.0,
        "" | "s" => 1e3,
        "m" | "min" => 60e3,
        "h" => 3600e3,
        other => {
            return Err(format!(
                "--deadline {s:?}: unknown unit {other:?} (ms, s, m or h)"
            ))
        }
    };
    let ms = v * scale;
    if !(ms.is_finite() && ms > 0.0) {
        return Err(format!("--deadline {s:?}: must be more than 0"));
    }
    Ok(ms)
}

/// The text of `path`, which must be a regular file of at most `max`
/// bytes (the command-line tools' inputs: profiles, tables, traces).
pub fn read_text(what: &str, path: &Path, max: u64) -> Result<String, String> {
    let name = path.display();
    let cannot = |e: std::io::Error| format!("cannot read {what} {name}: {e}");
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() || meta.len() > max {
        return Err(format!(
            "{what} {name} is not a regular file of at most {max} bytes"
        ));
    }
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_scaling() {
        assert_eq!(
            parse_host_scaling("2=1.6, 4=1.9"),
            Ok(vec![(2, 1.6), (4, 1.9)])
        );
        for bad in [
            "", "2", "2=", "1=1", "2=0.5", "2=3", "2=NaN", "x=1", "2=1.5,,",
        ] {
            assert!(parse_host_scaling(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("90s"), Ok(90_000.0));
        assert_eq!(parse_duration_ms("1.5h"), Ok(5_400_000.0));
        assert_eq!(parse_duration_ms("250ms"), Ok(250.0));
        assert_eq!(parse_duration_ms("10"), Ok(10_000.0));
        for bad in ["", "soon", "10 days", "0s", "-5s"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
