//! Hosts and instance types a program could run on, from TOML:
//!
//! ```toml
//! source = "where the figures come from"   # optional
//! date = "2026-06"                          # optional
//! currency = "USD"                          # optional
//!
//! [[host]]
//! name = "big"
//! cores = 16
//! memory = "64G"
//! cpu_speed = 1.2          # relative to the profiled machine; default 1.0
//! io_bandwidth = "500M"    # bytes a second; optional (no limit)
//! price_per_hour = 0.80    # optional
//! ```

use guest_hints::size::parse_size;
use serde::{Deserialize, Serialize};

use crate::model::ProgramModel;
use crate::PredictError;

/// The table shipped with perfvmm (`--prices builtin`).
pub const BUILTIN_PRICES: &str = include_str!("../data/prices.toml");

/// A parsed hosts or prices file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostTable {
    pub source: Option<String>,
    pub date: Option<String>,
    pub currency: String,
    pub hosts: Vec<Host>,
}

/// One host or instance type.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Host {
    pub name: String,
    pub cores: u32,
    pub memory_bytes: u64,
    pub cpu_speed: f64,
    pub io_bytes_per_sec: Option<u64>,
    pub price_per_hour: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    source: Option<String>,
    date: Option<String>,
    currency: Option<String>,
    #[serde(default)]
    host: Vec<RawHost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    cores: u32,
    memory: String,
    cpu_speed: Option<f64>,
    io_bandwidth: Option<String>,
    price_per_hour: Option<f64>,
}

impl HostTable {
    /// Parses a table; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<HostTable, PredictError> {
        let bad = |why: String| PredictError::Hosts(what.to_string(), why);
        let raw: RawTable = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text.get(..s.start).unwrap_or(text).lines().count().max(1));
            let msg = e.message().lines().collect::<Vec<_>>().join("; ");
            bad(match line {
                Some(l) => format!("line {l}: {msg}"),
                None => msg,
            })
        })?;
        if raw.host.is_empty() {
            return Err(bad("no [[host]] in it".into()));
        }
        let hosts = raw
            .host
            .into_iter()
            .map(|h| {
                let at = |why: String| bad(format!("host \"{}\": {why}", h.name));
                if h.cores == 0 {
                    return Err(at("cores is 0".into()));
                }
                let memory_bytes = parse_size(&h.memory).map_err(|e| at(format!("memory: {e}")))?;
                let io_bytes_per_sec = match &h.io_bandwidth {
                    Some(s) => Some(parse_size(s).map_err(|e| at(format!("io_bandwidth: {e}")))?),
                    None => None,
                };
                let cpu_speed = h.cpu_speed.unwrap_or(1.0);
                if !(cpu_speed.is_finite() && cpu_speed > 0.0) {
                    return Err(at("cpu_speed must be a positive number".into()));
                }
                if h.price_per_hour
                    .is_some_and(|p| !(p.is_finite() && p >= 0.0))
                {
                    return Err(at("price_per_hour must be 0 or more".into()));
                }
                Ok(Host {
                    name: h.name.clone(),
                    cores: h.cores,
                    memory_bytes,
                    cpu_speed,
                    io_bytes_per_sec,
                    price_per_hour: h.price_per_hour,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostTable {
            source: raw.source,
            date: raw.date,
            currency: raw.currency.unwrap_or_else(|| "USD".into()),
            hosts,
        })
    }
}

/// What a host would do for the program.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostFit {
    pub name: String,
    pub cores: u32,
    pub memory_bytes: u64,
    /// Why it does not fit (`None`: it fits).
    pub unfit: Option<String>,
    /// Predicted run time, ms.
    pub time_ms: f64,
    pub cost_per_run: Option<f64>,
    pub cost_per_month: Option<f64>,
    /// Whether it fits and meets the deadline (if one was given).
    pub meets_deadline: bool,
}

/// Each host's predicted run time and cost for `model` at CPU `speed`,
/// needing `memory` bytes, run `runs_per_day` times a day.
pub fn evaluate(
    model: &ProgramModel,
    speed: f64,
    table: &HostTable,
    memory: u64,
    deadline_ms: Option<f64>,
    runs_per_day: f64,
) -> Vec<HostFit> {
    table
        .hosts
        .iter()
        .map(|h| {
            let time_ms = host_time_ms(model, h, speed);
            let unfit = (h.memory_bytes < memory).then(|| {
                format!(
                    "{} MiB of memory, the program needs {} MiB",
                    h.memory_bytes >> 20,
                    memory.div_ceil(1 << 20)
                )
            });
            let cost_per_run = h.price_per_hour.map(|p| p * time_ms / 3.6e6);
            HostFit {
                name: h.name.clone(),
                cores: h.cores,
                memory_bytes: h.memory_bytes,
                meets_deadline: unfit.is_none() && deadline_ms.is_none_or(|d| time_ms <= d),
                unfit,
                time_ms,
                cost_per_run,
                cost_per_month: cost_per_run.map(|c| c * runs_per_day * 30.0),
            }
        })
        .collect()
}

/// Run time on `h`: the model on its cores and speed; a phase that moves
/// more bytes than the host's I/O bandwidth allows takes as long as the
/// bytes need.
fn host_time_ms(model: &ProgramModel, h: &Host, speed: f64) -> f64 {
    model
        .phases
        .iter()
        .map(|p| {
            let t = p.time_ms(h.cores, speed * h.cpu_speed);
            match h.io_bytes_per_sec {
                Some(bw) if bw > 0 && p.does_io() => {
                    let observed = p.observed_ms.first().copied().unwrap_or(0.0);
                    let bytes = p.io_bytes_per_sec as f64 * observed / 1000.0;
                    t.max(bytes / bw as f64 * 1000.0)
                }
                _ => t,
            }
        })
        .sum()
}

/// The fastest and the cheapest host that fit and meet the deadline.
pub fn best(fits: &[HostFit]) -> (Option<&HostFit>, Option<&HostFit>) {
    let ok = || fits.iter().filter(|f| f.meets_deadline);
    let fastest = ok().min_by(|a, b| a.time_ms.total_cmp(&b.time_ms));
    let cheapest = ok().filter(|f| f.cost_per_run.is_some()).min_by(|a, b| {
        a.cost_per_run
            .unwrap_or(0.0)
            .total_cmp(&b.cost_per_run.unwrap_or(0.0))
    });
    (fastest, cheapest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PhaseModel;

    fn model() -> ProgramModel {
        ProgramModel {
            program: "x".into(),
            phases: vec![PhaseModel {
                name: "all".into(),
                wait_ms: 0.0,
                serial_ms: 1000.0,
                parallel_ms: 8000.0,
                contention_ms: 0.0,
                threads: 8,
                io_class: "sequential".into(),
                io_bytes_per_sec: 100 << 20,
                working_set_bytes: 1 << 30,
                peak_bytes: 3 << 30,
                functions: Vec::new(),
                fitted_from: vec![1],
                observed_ms: vec![9000.0],
            }],
            notes: Vec::new(),
        }
    }

    #[test]
    fn the_builtin_table_parses() {
        let t = HostTable::parse(BUILTIN_PRICES, "builtin").unwrap();
        assert!(t.hosts.len() >= 8);
        assert!(t.hosts.iter().all(|h| h.price_per_hour.is_some()));
        assert!(t.source.is_some() && t.date.is_some());
    }

    #[test]
    fn small_hosts_do_not_fit_and_the_best_meet_the_deadline() {
        let t = HostTable::parse(
            r#"
[[host]]
name = "small"
cores = 2
memory = "2G"
price_per_hour = 0.01
[[host]]
name = "big"
cores = 8
memory = "32G"
price_per_hour = 1.0
[[host]]
name = "mid"
cores = 4
memory = "8G"
price_per_hour = 0.2
io_bandwidth = "50M"
"#,
            "test",
        )
        .unwrap();
        let m = model();
        let need = m.memory_bytes(0.1);
        let fits = evaluate(&m, 1.0, &t, need, Some(4000.0), 1.0);
        assert!(fits[0].unfit.as_deref().unwrap().contains("needs 3380 MiB"));
        assert_eq!(fits[1].time_ms, 2000.0);
        // mid: 3000 ms of CPU, but 900 MiB at 50 MiB/s take 18 s.
        assert_eq!(fits[2].time_ms, 18000.0);
        let (fastest, cheapest) = best(&fits);
        assert_eq!(fastest.unwrap().name, "big");
        assert_eq!(cheapest.unwrap().name, "big", "mid misses the deadline");
    }

    #[test]
    fn bad_tables_say_what_is_wrong() {
        let err = |text: &str| HostTable::parse(text, "h.toml").unwrap_err().to_string();
        assert!(err("[[host]\n").contains("h.toml"));
        assert!(err("").contains("no [[host]]"));
        assert!(err("[[host]]\nname='a'\ncores=0\nmemory='1G'\n").contains("cores is 0"));
        assert!(err("[[host]]\nname='a'\ncores=1\nmemory='lots'\n").contains("memory"));
        assert!(err("[[host]]\nname='a'\ncores=1\nmemory='1G'\ngpu=1\n").contains("gpu"));
    }
}
