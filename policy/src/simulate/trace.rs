//! The trace format (`docs/simulator.md`, "Trace format") and its parser.

use std::time::Duration;

use guest_hints::wire::{
    Hint, Io, IoClass, Locality, Manifest, Memory, Name, Parallelism, PhaseBegin, Placement,
    MAX_MANIFEST_PHASES,
};

use super::json::{self, Value};
use crate::engine::{ScheduledNeeds, VmLimits};

/// The `format` a trace's header names.
pub const TRACE_FORMAT: &str = "perfvmm-trace";
/// The trace version this simulator reads.
pub const TRACE_VERSION: u64 = 1;
/// The largest time a trace may name, in milliseconds (about 11.5 days).
pub const MAX_T_MS: f64 = 1e9;

/// A trace: the VM's shape, then time-ordered records.
#[derive(Clone, Debug)]
pub struct Trace {
    pub header: TraceHeader,
    pub records: Vec<TimedRecord>,
}

/// The trace's first line.
#[derive(Clone, Debug)]
pub struct TraceHeader {
    /// The VM's boot and maximum sizes (perfvmm's `--cpus` and `--memory`).
    pub vm: VmLimits,
    /// Memory the guest's kernel keeps out of `MemTotal`, in KiB: subtracted
    /// from the simulated allocation before it is compared with the
    /// guest's memory in use (`vm.reserved_kib`, 0 when absent).
    pub reserved_kib: u64,
    /// Where the trace comes from, for people.
    pub source: String,
}

/// One record and when it happened (perfvmm's clock: since its start).
#[derive(Clone, Debug, PartialEq)]
pub struct TimedRecord {
    pub t: Duration,
    /// Its line in the trace, for messages.
    pub line: usize,
    pub record: Record,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// Boxed: a manifest is large, and traces hold many more samples than hints.
    Hint(Box<TraceHint>),
    Demand(Demand),
    Measured(Measured),
}

/// A hint as the hint log writes it.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceHint {
    pub seq: u32,
    pub kind: String,
    /// The hint, or `None` for a kind this perfvmm's wire format does not
    /// have (it is counted and skipped).
    pub hint: Option<Hint>,
    /// A manifest's per-phase schedule, when it has one.
    pub schedule: Vec<ScheduledNeeds>,
    /// The outcome perfvmm gave it when it was recorded, if logged.
    pub outcome: Option<String>,
}

/// What the guest demanded at one moment (its `sample` line).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Demand {
    /// Runnable tasks (`procs_running`, less the sampler).
    pub running: f64,
    /// Memory in use: `MemTotal − MemAvailable`, in KiB.
    pub mem_used_kib: u64,
}

/// What the VM really had at one moment (recorded runs only).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// CPUs online in the guest.
    pub cpus: u32,
    /// The guest's `MemTotal`, in KiB.
    pub mem_total_kib: u64,
}

/// A trace that cannot be used; each names the line at fault.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TraceError {
    #[error("the trace is empty: its first line must be the {TRACE_FORMAT} header")]
    Empty,
    #[error("line {line}: not JSON: {message}")]
    Json { line: usize, message: String },
    #[error("line {line}: bad header: {message}")]
    Header { line: usize, message: String },
    #[error("line {line}: trace version {version} is not supported (this perfvmm reads version {TRACE_VERSION})")]
    Version { line: usize, version: u64 },
    #[error("line {line}: {message}")]
    Record { line: usize, message: String },
    #[error("line {line}: t_ms {t_ms} is before the previous record's {previous}")]
    OutOfOrder {
        line: usize,
        t_ms: f64,
        previous: f64,
    },
    #[error(
        "the trace has no demand records: there is nothing to measure slack and shortage against"
    )]
    NoDemand,
}

impl Trace {
    /// Parses a trace (JSON lines; blank lines are skipped).
    pub fn parse(text: &str) -> Result<Trace, TraceError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .filter(|(_, l)| !l.trim().is_empty());
        let (hline, htext) = lines.next().ok_or(TraceError::Empty)?;
        let header = parse_header(hline, htext)?;
        let mut records = Vec::new();
        let mut previous = 0.0f64;
        for (line, text) in lines {
            let v = json::parse(text).map_err(|message| TraceError::Json { line, message })?;
            let rec = |message: String| TraceError::Record { line, message };
            let (t_ms, record) = parse_record(&v).map_err(rec)?;
            if t_ms < previous {
                return Err(TraceError::OutOfOrder {
                    line,
                    t_ms,
                    previous,
                });
            }
            previous = t_ms;
            records.push(TimedRecord {
                t: ms_to_duration(t_ms),
                line,
                record,
            });
        }
        if !records
            .iter()
            .any(|r| matches!(r.record, Record::Demand(_)))
        {
            return Err(TraceError::NoDemand);
        }
        Ok(Trace { header, records })
    }

    /// How many records of each kind: (hints, demand samples, measured).
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for r in &self.records {
            match r.record {
                Record::Hint(_) => c.0 += 1,
                Record::Demand(_) => c.1 += 1,
                Record::Measured(_) => c.2 += 1,
            }
        }
        c
    }
}

fn ms_to_duration(t_ms: f64) -> Duration {
    // Checked finite and within [0, MAX_T_MS] by the parser.
    Duration::from_micros((t_ms * 1000.0).round() as u64)
}

fn parse_header(line: usize, text: &str) -> Result<TraceHeader, TraceError> {
    let v = json::parse(text).map_err(|message| TraceError::Json { line, message })?;
    let err = |message: String| TraceError::Header { line, message };
    if v.get("format").and_then(Value::as_str) != Some(TRACE_FORMAT) {
        return Err(err(format!(
            "the first line must be the header, {{\"format\":\"{TRACE_FORMAT}\",\"version\":{TRACE_VERSION},\"vm\":{{...}}}}"
        )));
    }
    let version = v
        .get("version")
        .and_then(Value::as_u64)
        .ok_or_else(|| err("version: expected a whole number".into()))?;
    if version != TRACE_VERSION {
        return Err(TraceError::Version { line, version });
    }
    let vm = v
        .get("vm")
        .filter(|vm| vm.is_object())
        .ok_or_else(|| err("vm: expected an object with the VM's sizes".into()))?;
    let boot_vcpus = u32_field(vm, "boot_vcpus", "vm").map_err(err)?;
    let max_vcpus = opt(vm, "max_vcpus")
        .map(|_| u32_field(vm, "max_vcpus", "vm"))
        .transpose()
        .map_err(err)?
        .unwrap_or(boot_vcpus);
    let boot_memory = u64_field(vm, "boot_memory", "vm").map_err(err)?;
    let max_memory = opt(vm, "max_memory")
        .map(|_| u64_field(vm, "max_memory", "vm"))
        .transpose()
        .map_err(err)?
        .unwrap_or(boot_memory);
    let reserved_kib = opt(vm, "reserved_kib")
        .map(|_| u64_field(vm, "reserved_kib", "vm"))
        .transpose()
        .map_err(err)?
        .unwrap_or(0);
    if boot_vcpus == 0 || max_vcpus < boot_vcpus || max_vcpus > 4096 {
        return Err(err(format!(
            "vm: boot_vcpus ({boot_vcpus}) must be at least 1 and at most max_vcpus ({max_vcpus}), itself at most 4096"
        )));
    }
    if boot_memory < (1 << 20) || max_memory < boot_memory || max_memory > (1 << 50) {
        return Err(err(format!(
            "vm: boot_memory ({boot_memory}) must be at least 1 MiB and at most max_memory ({max_memory}), in bytes"
        )));
    }
    if reserved_kib.saturating_mul(1024) >= boot_memory {
        return Err(err(format!(
            "vm: reserved_kib ({reserved_kib}) must be below the boot memory"
        )));
    }
    let source = match v.get("source") {
        None | Some(Value::Null) => String::new(),
        Some(s) => s
            .as_str()
            .ok_or_else(|| err("source: expected a string".into()))?
            .to_string(),
    };
    Ok(TraceHeader {
        vm: VmLimits {
            boot_vcpus,
            max_vcpus,
            boot_memory,
            max_memory,
        },
        reserved_kib,
        source,
    })
}

/// A present, non-null field.
fn opt<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !matches!(v, Value::Null))
}

fn u64_field(obj: &Value, key: &str, path: &str) -> Result<u64, String> {
    match obj.get(key) {
        None => Err(format!("{path}.{key}: missing")),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("{path}.{key}: expected a whole number ≥ 0, got {v}")),
    }
}

fn u64_or(obj: &Value, key: &str, path: &str, default: u64) -> Result<u64, String> {
    match opt(obj, key) {
        None => Ok(default),
        Some(_) => u64_field(obj, key, path),
    }
}

fn u32_field(obj: &Value, key: &str, path: &str) -> Result<u32, String> {
    let n = u64_field(obj, key, path)?;
    u32::try_from(n).map_err(|_| format!("{path}.{key}: {n} is above {}", u32::MAX))
}

fn u32_or(obj: &Value, key: &str, path: &str, default: u32) -> Result<u32, String> {
    match opt(obj, key) {
        None => Ok(default),
        Some(_) => u32_field(obj, key, path),
    }
}

fn bool_or(obj: &Value, key: &str, path: &str, default: bool) -> Result<bool, String> {
    match opt(obj, key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("{path}.{key}: expected true or false, got {v}")),
    }
}

fn str_or<'a>(obj: &'a Value, key: &str, path: &str, default: &'a str) -> Result<&'a str, String> {
    match opt(obj, key) {
        None => Ok(default),
        Some(v) => v
            .as_str()
            .ok_or_else(|| format!("{path}.{key}: expected a string, got {v}")),
    }
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Value, String> {
    if v.is_object() {
        Ok(v)
    } else {
        Err(format!("{path}: expected an object, got {v}"))
    }
}

/// One record line: its time and what it holds.
fn parse_record(v: &Value) -> Result<(f64, Record), String> {
    let Value::Object(fields) = v else {
        return Err(format!("expected an object, got {v}"));
    };
    let t_ms = v
        .get("t_ms")
        .ok_or("t_ms: missing")?
        .as_f64()
        .filter(|t| (0.0..=MAX_T_MS).contains(t))
        .ok_or_else(|| format!("t_ms: expected a number of milliseconds from 0 to {MAX_T_MS}"))?;
    let mut body = fields.iter().filter(|(k, _)| k != "t_ms");
    let (Some((key, value)), None) = (body.next(), body.next()) else {
        return Err(
            "a record has t_ms and exactly one of \"hint\", \"demand\" or \"measured\"".into(),
        );
    };
    let record = match key.as_str() {
        "hint" => Record::Hint(Box::new(parse_hint(object(value, "hint")?)?)),
        "demand" => {
            let d = object(value, "demand")?;
            let running = d
                .get("running")
                .ok_or("demand.running: missing")?
                .as_f64()
                .filter(|r| (0.0..=1e6).contains(r))
                .ok_or("demand.running: expected a number of tasks ≥ 0")?;
            Record::Demand(Demand {
                running,
                mem_used_kib: u64_field(d, "mem_used_kib", "demand")?,
            })
        }
        "measured" => {
            let m = object(value, "measured")?;
            Record::Measured(Measured {
                cpus: u32_field(m, "cpus", "measured")?,
                mem_total_kib: u64_field(m, "mem_total_kib", "measured")?,
            })
        }
        other => {
            return Err(format!(
                "unknown record \"{other}\": expected \"hint\", \"demand\" or \"measured\""
            ))
        }
    };
    Ok((t_ms, record))
}

fn parse_parallelism(v: &Value, path: &str) -> Result<Parallelism, String> {
    let v = object(v, path)?;
    Ok(Parallelism {
        runnable_tasks: u32_field(v, "runnable_tasks", path)?,
        max_useful: u32_or(v, "max_useful", path, 0)?,
        serial_ppm: u32_or(v, "serial_ppm", path, 0)?,
    })
}

fn parse_memory(v: &Value, path: &str) -> Result<Memory, String> {
    let v = object(v, path)?;
    let working_set_bytes = u64_field(v, "working_set_bytes", path)?;
    Ok(Memory {
        working_set_bytes,
        peak_bytes: u64_or(v, "peak_bytes", path, working_set_bytes)?,
        growth_bytes_per_sec: u64_or(v, "growth_bytes_per_sec", path, 0)?,
    })
}

fn parse_io(v: &Value, path: &str) -> Result<Io, String> {
    let v = object(v, path)?;
    let class = str_or(v, "class", path, "none")?;
    Ok(Io {
        class: IoClass::parse(class)
            .ok_or_else(|| format!("{path}.class: unknown I/O class \"{class}\""))?,
        bytes_per_sec: u64_or(v, "bytes_per_sec", path, 0)?,
    })
}

fn parse_placement(v: &Value, path: &str) -> Result<Placement, String> {
    let v = object(v, path)?;
    let locality = str_or(v, "locality", path, "any")?;
    Ok(Placement {
        relocatable: bool_or(v, "relocatable", path, false)?,
        monolithic: bool_or(v, "monolithic", path, false)?,
        locality: Locality::parse(locality)
            .ok_or_else(|| format!("{path}.locality: unknown locality \"{locality}\""))?,
    })
}

fn parse_phase_begin(v: &Value, path: &str, declared: bool) -> Result<PhaseBegin, String> {
    let v = object(v, path)?;
    Ok(PhaseBegin {
        id: u32_field(v, "id", path)?,
        expected_ms: u32_or(v, "expected_ms", path, 0)?,
        name: Name::truncated(str_or(v, "name", path, "")?),
        declared_only: bool_or(v, "declared_only", path, declared)?,
    })
}

/// One entry of a manifest's schedule, in the form the hint log writes a
/// `phase_needs` record: vCPUs from the 95th percentile of the phase's
/// parallelism (rounded up), memory from its working set and peak.
fn parse_needs(v: &Value, path: &str) -> Result<ScheduledNeeds, String> {
    let v = object(v, path)?;
    let p95 = u32_or(v, "parallelism_p95_milli", path, 0)?;
    let max_useful = u32_or(v, "max_useful", path, 0)?;
    let working_set_bytes = u64_or(v, "working_set_bytes", path, 0)?;
    let peak_bytes = u64_or(v, "peak_bytes", path, 0)?;
    Ok(ScheduledNeeds {
        id: u32_field(v, "id", path)?,
        start_ms: u32_field(v, "start_ms", path)?,
        duration_ms: u32_field(v, "duration_ms", path)?,
        parallelism: (p95 > 0).then(|| Parallelism {
            runnable_tasks: p95.div_ceil(1000),
            max_useful,
            serial_ppm: 0,
        }),
        memory: (working_set_bytes > 0 || peak_bytes > 0).then_some(Memory {
            working_set_bytes,
            peak_bytes,
            growth_bytes_per_sec: 0,
        }),
    })
}

fn parse_manifest(f: &Value) -> Result<(Manifest, Vec<ScheduledNeeds>), String> {
    let path = "hint.fields";
    let mut m = Manifest::empty(Name::truncated(str_or(f, "app", path, "")?));
    m.parallelism = opt(f, "parallelism")
        .map(|p| parse_parallelism(p, "hint.fields.parallelism"))
        .transpose()?;
    m.memory = opt(f, "memory")
        .map(|p| parse_memory(p, "hint.fields.memory"))
        .transpose()?;
    m.io = opt(f, "io")
        .map(|p| parse_io(p, "hint.fields.io"))
        .transpose()?;
    m.placement = opt(f, "placement")
        .map(|p| parse_placement(p, "hint.fields.placement"))
        .transpose()?;
    if let Some(phases) = opt(f, "phases") {
        let phases = phases
            .as_array()
            .ok_or("hint.fields.phases: expected an array")?;
        let declared = phases.iter().filter(|p| !matches!(p, Value::Null));
        for (slot, p) in m.phases.iter_mut().zip(declared.take(MAX_MANIFEST_PHASES)) {
            *slot = Some(parse_phase_begin(p, "hint.fields.phases[]", true)?);
        }
    }
    let mut schedule = Vec::new();
    if let Some(s) = opt(f, "schedule") {
        let s = s
            .as_array()
            .ok_or("hint.fields.schedule: expected an array")?;
        for n in s.iter().filter(|n| !matches!(n, Value::Null)) {
            schedule.push(parse_needs(n, "hint.fields.schedule[]")?);
        }
    }
    Ok((m, schedule))
}

/// A hint in the hint log's form: `{"seq", "kind", "fields"}` (and the
/// `outcome` perfvmm gave it, which is kept for comparison).
fn parse_hint(v: &Value) -> Result<TraceHint, String> {
    let seq = u32_field(v, "seq", "hint")?;
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("hint.kind: expected a string such as \"parallelism\"")?
        .to_string();
    let outcome = match opt(v, "outcome") {
        None => None,
        Some(o) => Some(
            o.as_str()
                .ok_or_else(|| format!("hint.outcome: expected a string, got {o}"))?
                .to_string(),
        ),
    };
    let empty = Value::Object(Vec::new());
    let f = match v.get("fields") {
        Some(f) => object(f, "hint.fields")?,
        None => &empty,
    };
    let path = "hint.fields";
    let mut schedule = Vec::new();
    let hint = match kind.as_str() {
        "parallelism" => Some(Hint::Parallelism(parse_parallelism(f, path)?)),
        "memory" => Some(Hint::Memory(parse_memory(f, path)?)),
        "io" => Some(Hint::Io(parse_io(f, path)?)),
        "phase_begin" => Some(Hint::PhaseBegin(parse_phase_begin(f, path, false)?)),
        "phase_end" => Some(Hint::PhaseEnd {
            id: u32_field(f, "id", path)?,
        }),
        "placement" => Some(Hint::Placement(parse_placement(f, path)?)),
        "manifest" => {
            let (m, s) = parse_manifest(f)?;
            schedule = s;
            Some(Hint::Manifest(m))
        }
        _ => None,
    };
    Ok(TraceHint {
        seq,
        kind,
        hint,
        schedule,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{demo, HEADER};
    use super::*;

    fn err(body: &str) -> String {
        Trace::parse(&format!("{HEADER}\n{body}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_shipped_trace_parses() {
        let t = demo();
        assert_eq!(t.header.vm.boot_vcpus, 1);
        assert_eq!(t.header.vm.max_vcpus, 4);
        assert_eq!(t.header.vm.max_memory, 1 << 30);
        assert_eq!(t.header.reserved_kib, 47 << 10);
        assert!(t.header.source.starts_with("synthetic"));
        let (hints, demand, measured) = t.counts();
        assert_eq!((hints, demand, measured), (14, 129, 0));
        let Record::Hint(m) = &t
            .records
            .iter()
            .find(|r| matches!(r.record, Record::Hint(_)))
            .unwrap()
            .record
        else {
            unreachable!()
        };
        let Some(Hint::Manifest(m)) = m.hint else {
            panic!("the first hint is the manifest")
        };
        assert_eq!(m.app.as_str(), "demo-workload");
        assert_eq!(m.parallelism.map(|p| p.runnable_tasks), Some(4));
        assert_eq!(m.phases.iter().flatten().count(), 4);
        assert!(m.phases.iter().flatten().all(|p| p.declared_only));
    }

    #[test]
    fn bad_traces_name_the_line() {
        let demand = r#"{"t_ms":0,"demand":{"running":1,"mem_used_kib":1}}"#;
        for (body, needle) in [
            (format!("{demand}\n{{\"t_ms\":1,\"demand\":"), "line 3: not JSON"),
            (format!("{demand}\n\n{{\"t_ms\":5}}"), "line 4: a record has t_ms and exactly one"),
            (format!("{demand}\n{{\"t_ms\":-1,\"demand\":{{}}}}"), "line 3: t_ms"),
            (format!("{demand}\n{{\"t_ms\":1,\"sample\":{{}}}}"), "line 3: unknown record \"sample\""),
            (format!("{{\"t_ms\":9,\"demand\":{{\"running\":1,\"mem_used_kib\":1}}}}\n{demand}"), "line 3: t_ms 0 is before the previous record's 9"),
            (format!("{demand}\n{{\"t_ms\":1,\"demand\":{{\"running\":\"x\",\"mem_used_kib\":1}}}}"), "line 3: demand.running"),
            (format!("{demand}\n{{\"t_ms\":1,\"measured\":{{\"cpus\":1.5,\"mem_total_kib\":1}}}}"), "line 3: measured.cpus"),
            (format!("{demand}\n{{\"t_ms\":1,\"hint\":{{\"seq\":1,\"kind\":\"parallelism\",\"fields\":{{}}}}}}"), "line 3: hint.fields.runnable_tasks: missing"),
            (format!("{demand}\n{{\"t_ms\":1,\"hint\":{{\"seq\":1,\"kind\":\"io\",\"fields\":{{\"class\":\"tape\"}}}}}}"), "unknown I/O class"),
            (format!("{demand}\n{{\"t_ms\":1,\"hint\":{{\"seq\":5000000000,\"kind\":\"io\"}}}}"), "hint.seq: 5000000000 is above"),
            ("{\"t_ms\":1,\"hint\":{\"seq\":1,\"kind\":\"phase_end\",\"fields\":{\"id\":1}}}".to_string(), "no demand records"),
        ] {
            let e = err(&body);
            assert!(e.contains(needle), "{body}\n=> {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        for (text, needle) in [
            ("", "empty"),
            ("\n\n", "empty"),
            ("{\"t_ms\":0}", "line 1: bad header"),
            (
                r#"{"format":"perfvmm-trace","version":2,"vm":{}}"#,
                "line 1: trace version 2",
            ),
            (
                r#"{"format":"perfvmm-trace","version":1}"#,
                "vm: expected an object",
            ),
            (
                r#"{"format":"perfvmm-trace","version":1,"vm":{"boot_vcpus":0,"boot_memory":536870912}}"#,
                "boot_vcpus (0)",
            ),
            (
                r#"{"format":"perfvmm-trace","version":1,"vm":{"boot_vcpus":1,"boot_memory":1024}}"#,
                "boot_memory (1024)",
            ),
            ("not json", "line 1: not JSON"),
        ] {
            let e = Trace::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}\n=> {e}");
        }
    }
}
