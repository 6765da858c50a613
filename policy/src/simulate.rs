//! The trace simulator: replays a recorded trace (the guest's demand
//! samples, its hints, and optionally what the VM really had) through the
//! very same [`Engine`] perfvmm runs, with resize latencies drawn from a
//! [`LatencyModel`], and measures allocation slack and shortage the way
//! `resize-bench` does. Reference: `docs/simulator.md`.
//!
//! Pure, like the rest of this crate: [`Trace::parse`] takes the trace's
//! text and [`LatencyModel::from_json`] a latency file's; the caller reads
//! the files. The crate has no JSON library, so a small reader for JSON
//! lines lives in [`json`].
//!
//! What the simulation does, step by step, as perfvmm's hint path and
//! controller do (`vmm/src/control/`):
//!
//! * each hint goes to [`Engine::on_hint`] at its time; a manifest's
//!   schedule (when the trace has one) to [`Engine::set_schedule`];
//! * every [`SimConfig::tick`] (perfvmm's 200 ms) the controller times the
//!   grows the guest has taken ([`Engine::observe_latency`]), reports the
//!   memory the guest says it uses (refreshed every
//!   [`SimConfig::stats_period`], as the balloon's statistics are) and the
//!   busy vCPUs since the previous tick ([`Engine::observe_usage`]), then
//!   calls [`Engine::tick`];
//! * every decision is applied at once, and the guest has the new size a
//!   latency later, drawn from the model with a seeded RNG ([`Rng`]); a
//!   newer decision for the same resource replaces one not yet visible;
//! * each demand sample is compared with what the guest had at that time.

use std::time::Duration;

use guest_hints::wire::{
    Hint, Io, IoClass, Locality, Manifest, Memory, Name, Parallelism, PhaseBegin, Placement,
    MAX_MANIFEST_PHASES,
};
use serde::Serialize;

use super::config::Policy;
use super::engine::{Decision, Engine, Resource, ScheduledNeeds, VmLimits};
use json::Value;

/// The `format` a trace's header names.
pub const TRACE_FORMAT: &str = "perfvmm-trace";
/// The trace version this simulator reads.
pub const TRACE_VERSION: u64 = 1;
/// A grow the guest has not taken after this long is no longer timed (as
/// perfvmm's controller gives up).
pub const LATENCY_GIVE_UP: Duration = Duration::from_secs(30);
/// The largest time a trace may name, in milliseconds (about 11.5 days).
pub const MAX_T_MS: f64 = 1e9;
/// The largest latency a model may hold, in milliseconds.
pub const MAX_LATENCY_MS: u64 = 600_000;
/// The most latencies a model may hold per list.
pub const MAX_LATENCIES: usize = 100_000;

// ---------------------------------------------------------------------------
// The trace.

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

// ---------------------------------------------------------------------------
// Latency.

/// A small deterministic RNG (xorshift64*): the same seed gives the same
/// draws on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Xorshift needs a non-zero state; mix the seed so that nearby
        // seeds start far apart.
        let s = seed
            .wrapping_add(0x9e37_79b9_7f4a_7c15)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
        Rng(if s == 0 { 0x2545_f491_4f6c_dd1d } else { s })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A whole number in `0..n` (`n` > 0), uniformly.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Resize latencies, decision → visible in the guest, per resource: an
/// empirical distribution drawn from uniformly.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyModel {
    pub name: String,
    /// vCPU hot-add: decision → the new CPU online in the guest.
    pub vcpus_ms: Vec<u64>,
    /// Memory grow: decision → the guest's `MemTotal` up by the amount.
    pub memory_ms: Vec<u64>,
    /// Shrinks, when measured separately; else the grow lists apply.
    pub vcpus_shrink_ms: Option<Vec<u64>>,
    pub memory_shrink_ms: Option<Vec<u64>>,
}

/// A latency file that cannot be used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LatencyError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
}

impl LatencyModel {
    /// The nested harness (QEMU TCG L1 with nested SVM): one entry per
    /// round of `resize-bench` runs 4 and 5 in `docs/benchmarks.md` (the
    /// runs with the guest's current 50 ms CPU onliner), each run's slowest
    /// round its published max and its other rounds its published p50.
    /// vCPUs: p50 310 ms, max 910 ms; memory: p50 270 ms, max 330 ms.
    pub fn nested() -> Self {
        LatencyModel {
            name: "nested".into(),
            // Run 4 (4 rounds): p50 260, max 910; run 5 (5 rounds): p50 310, max 740.
            vcpus_ms: vec![260, 260, 260, 910, 310, 310, 310, 310, 740],
            // Run 4: p50 270, max 320; run 5: p50 150, max 330.
            memory_ms: vec![270, 270, 270, 320, 150, 150, 150, 150, 330],
            vcpus_shrink_ms: None,
            memory_shrink_ms: None,
        }
    }

    /// Hardware KVM: no published guest-visible figure was found; an
    /// estimate from its parts (see `docs/simulator.md`). vCPUs: the
    /// guest's ACPI scan and CPU bring-up (about 10 ms) plus the wait for
    /// the guest's 50 ms onliner poll (0–50 ms); memory: virtio-mem plug
    /// requests and the kernel onlining a 128 MiB block (5–40 ms).
    pub fn hardware() -> Self {
        LatencyModel {
            name: "hardware".into(),
            vcpus_ms: vec![10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60],
            memory_ms: vec![5, 10, 10, 15, 15, 20, 20, 25, 30, 40],
            vcpus_shrink_ms: None,
            memory_shrink_ms: None,
        }
    }

    /// `nested` or `hardware`.
    pub fn builtin(name: &str) -> Option<Self> {
        match name {
            "nested" => Some(Self::nested()),
            "hardware" => Some(Self::hardware()),
            _ => None,
        }
    }

    /// A user's model: `{"vcpus_ms":[..],"memory_ms":[..]}`, optionally with
    /// `vcpus_shrink_ms` and `memory_shrink_ms`.
    pub fn from_json(name: &str, text: &str) -> Result<Self, LatencyError> {
        let v = json::parse(text.trim()).map_err(LatencyError::Json)?;
        let bad = |m: String| LatencyError::Invalid(m);
        let Value::Object(fields) = &v else {
            return Err(bad(
                "expected an object {\"vcpus_ms\":[..],\"memory_ms\":[..]}".into(),
            ));
        };
        const KEYS: [&str; 4] = [
            "vcpus_ms",
            "memory_ms",
            "vcpus_shrink_ms",
            "memory_shrink_ms",
        ];
        if let Some((k, _)) = fields.iter().find(|(k, _)| !KEYS.contains(&k.as_str())) {
            return Err(bad(format!(
                "unknown key \"{k}\": expected vcpus_ms, memory_ms, vcpus_shrink_ms, memory_shrink_ms"
            )));
        }
        let list = |key: &str| -> Result<Option<Vec<u64>>, LatencyError> {
            let Some(v) = opt(&v, key) else {
                return Ok(None);
            };
            let items = v
                .as_array()
                .ok_or_else(|| bad(format!("{key}: expected an array of milliseconds")))?;
            if items.is_empty() || items.len() > MAX_LATENCIES {
                return Err(bad(format!(
                    "{key}: expected 1 to {MAX_LATENCIES} latencies, got {}",
                    items.len()
                )));
            }
            items
                .iter()
                .map(|x| {
                    x.as_f64()
                        .filter(|ms| (0.0..=MAX_LATENCY_MS as f64).contains(ms))
                        .map(|ms| ms.round() as u64)
                        .ok_or_else(|| {
                            bad(format!(
                                "{key}: {x} is not a latency from 0 to {MAX_LATENCY_MS} ms"
                            ))
                        })
                })
                .collect::<Result<Vec<u64>, _>>()
                .map(Some)
        };
        let need = |key: &str| list(key)?.ok_or_else(|| bad(format!("{key}: missing")));
        Ok(LatencyModel {
            name: name.to_string(),
            vcpus_ms: need("vcpus_ms")?,
            memory_ms: need("memory_ms")?,
            vcpus_shrink_ms: list("vcpus_shrink_ms")?,
            memory_shrink_ms: list("memory_shrink_ms")?,
        })
    }

    fn list(&self, r: Resource, grow: bool) -> &[u64] {
        match (r, grow) {
            (Resource::Vcpus, false) => self.vcpus_shrink_ms.as_deref().unwrap_or(&self.vcpus_ms),
            (Resource::Memory, false) => {
                self.memory_shrink_ms.as_deref().unwrap_or(&self.memory_ms)
            }
            (Resource::Vcpus, true) => &self.vcpus_ms,
            (Resource::Memory, true) => &self.memory_ms,
        }
    }

    /// One latency for a resize of `r` (a grow or a shrink).
    pub fn draw(&self, r: Resource, grow: bool, rng: &mut Rng) -> Duration {
        let l = self.list(r, grow);
        let ms = if l.is_empty() {
            0
        } else {
            l[rng.below(l.len())]
        };
        Duration::from_millis(ms)
    }

    /// The median and the largest latency of `r`'s grows, in ms.
    pub fn p50_max(&self, r: Resource) -> (u64, u64) {
        let mut v = self.list(r, true).to_vec();
        v.sort_unstable();
        let p50 = v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0);
        (p50, v.last().copied().unwrap_or(0))
    }
}

// ---------------------------------------------------------------------------
// The simulation.

/// What a simulation runs with.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub policy: Policy,
    pub latency: LatencyModel,
    pub seed: u64,
    /// perfvmm's controller tick (200 ms).
    pub tick: Duration,
    /// How often the guest's memory statistics are refreshed (1 s).
    pub stats_period: Duration,
}

impl SimConfig {
    /// perfvmm's timing: a tick every 200 ms, memory statistics every second.
    pub fn new(policy: Policy, latency: LatencyModel, seed: u64) -> Self {
        SimConfig {
            policy,
            latency,
            seed,
            tick: Duration::from_millis(200),
            stats_period: Duration::from_secs(1),
        }
    }
}

/// One decision the simulated controller applied.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimDecision {
    pub t_ms: u64,
    pub resource: Resource,
    pub from: u64,
    pub to: u64,
    pub reason: String,
    pub hints: Vec<u32>,
    /// The latency drawn for it.
    pub latency_ms: u64,
    /// When the guest had it; `None` when a later decision replaced it
    /// first, or the trace ended before.
    pub visible_ms: Option<u64>,
}

/// Slack and shortage of one resource over the demand samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Fit {
    /// The unused share of what was allocated: Σ max(0, alloc − demand) / Σ alloc.
    pub slack: f64,
    /// The share of samples where demand exceeded the allocation.
    pub shortage: f64,
    /// The unmet share of demand: Σ max(0, demand − alloc) / Σ demand.
    pub deficit: f64,
    /// The mean allocation (vCPUs; memory in MiB as the guest sees it, as
    /// its `MemTotal`).
    pub mean: f64,
}

impl Fit {
    /// `samples`: (demand, allocation) pairs.
    pub fn of(samples: &[(f64, f64)]) -> Fit {
        let n = samples.len();
        if n == 0 {
            return Fit::default();
        }
        let alloc: f64 = samples.iter().map(|s| s.1).sum();
        let demand: f64 = samples.iter().map(|s| s.0).sum();
        let unused: f64 = samples.iter().map(|s| (s.1 - s.0).max(0.0)).sum();
        let unmet: f64 = samples.iter().map(|s| (s.0 - s.1).max(0.0)).sum();
        let share = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        Fit {
            slack: share(unused, alloc),
            shortage: samples.iter().filter(|s| s.0 > s.1).count() as f64 / n as f64,
            deficit: share(unmet, demand),
            mean: alloc / n as f64,
        }
    }
}

/// The figures for one allocation history (simulated or measured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    pub cpu: Fit,
    /// Memory in use against the memory the guest has (`MemTotal`); `mean` in MiB.
    pub memory: Fit,
    /// vCPUs allocated, integrated over the samples' time.
    pub vcpu_seconds: f64,
    /// Guest memory allocated (as the host grants it, `MemTotal` plus the
    /// header's `reserved_kib`), integrated over the samples' time.
    pub gib_seconds: f64,
}

/// Simulated minus measured, in percentage points.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Difference {
    pub cpu_slack: f64,
    pub cpu_shortage: f64,
    pub memory_slack: f64,
    pub memory_shortage: f64,
    /// All four within [`VALIDATION_POINTS`].
    pub within: bool,
}

/// How close simulated slack and shortage must be to the measured ones.
pub const VALIDATION_POINTS: f64 = 5.0;

impl Difference {
    pub fn between(sim: &Figures, measured: &Figures) -> Self {
        let pts = |a: f64, b: f64| (a - b) * 100.0;
        let cpu_slack = pts(sim.cpu.slack, measured.cpu.slack);
        let cpu_shortage = pts(sim.cpu.shortage, measured.cpu.shortage);
        let memory_slack = pts(sim.memory.slack, measured.memory.slack);
        let memory_shortage = pts(sim.memory.shortage, measured.memory.shortage);
        let within = [cpu_slack, cpu_shortage, memory_slack, memory_shortage]
            .iter()
            .all(|d| d.abs() <= VALIDATION_POINTS);
        Difference {
            cpu_slack,
            cpu_shortage,
            memory_slack,
            memory_shortage,
            within,
        }
    }
}

/// Hints replayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HintCounts {
    pub total: usize,
    /// Kinds this perfvmm's wire format does not have.
    pub skipped: usize,
    /// Hints whose outcome differs from the one recorded with them.
    pub outcome_mismatches: usize,
}

/// One figure per resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PerResource<T> {
    pub vcpus: T,
    pub memory: T,
}

/// What a simulation found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub source: String,
    pub mode: &'static str,
    pub latency: String,
    pub seed: u64,
    pub samples: usize,
    pub duration_ms: u64,
    pub hints: HintCounts,
    /// Decisions per resource.
    pub decision_counts: PerResource<usize>,
    pub decisions: Vec<SimDecision>,
    /// The engine's lead time per resource at the end, in ms.
    pub lead_ms: PerResource<u64>,
    pub simulated: Figures,
    /// From the trace's `measured` records, when it has them.
    pub measured: Option<Figures>,
    pub difference_points: Option<Difference>,
}

/// A decision applied and not yet visible in the guest.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    to: u64,
    at: Duration,
    index: usize,
}

/// The simulated VM and controller.
struct Sim<'a> {
    cfg: &'a SimConfig,
    engine: Engine,
    rng: Rng,
    /// What the guest has: vCPUs, memory bytes.
    guest: [u64; 2],
    inflight: [Option<InFlight>; 2],
    /// Grows being timed, as the controller does: (target, applied at).
    timing: [Option<(u64, Duration)>; 2],
    decisions: Vec<SimDecision>,
    /// The guest's memory statistics: (when refreshed, bytes in use).
    stats: Option<(Duration, u64)>,
    last_demand: Option<Demand>,
    /// Busy vCPUs seen since the previous tick: (sum, samples).
    busy: (f64, u32),
    last_tick: Option<Duration>,
}

impl Sim<'_> {
    /// The guest takes every change due by `now`.
    fn advance(&mut self, now: Duration) {
        for r in Resource::ALL {
            if let Some(f) = self.inflight[r as usize].filter(|f| f.at <= now) {
                self.guest[r as usize] = f.to;
                self.decisions[f.index].visible_ms = Some(f.at.as_millis() as u64);
                self.inflight[r as usize] = None;
            }
        }
    }

    fn apply(&mut self, now: Duration, ds: Vec<Decision>) {
        for d in ds {
            let r = d.resource;
            let grow = d.to > d.from;
            let latency = self.cfg.latency.draw(r, grow, &mut self.rng);
            self.inflight[r as usize] = Some(InFlight {
                to: d.to,
                at: now + latency,
                index: self.decisions.len(),
            });
            self.timing[r as usize] = grow.then_some((d.to, now));
            self.decisions.push(SimDecision {
                t_ms: d.t_ms,
                resource: r,
                from: d.from,
                to: d.to,
                reason: d.reason,
                hints: d.hints,
                latency_ms: latency.as_millis() as u64,
                visible_ms: None,
            });
            // A zero latency is visible at once.
            self.advance(now);
        }
    }

    /// The controller's periodic work, in its order.
    fn tick(&mut self, now: Duration) {
        self.advance(now);
        for r in Resource::ALL {
            let Some((to, at)) = self.timing[r as usize] else {
                continue;
            };
            let waited = now.saturating_sub(at);
            let taken = self.guest[r as usize] >= to;
            if taken {
                self.engine.observe_latency(r, waited);
            }
            if taken || waited > LATENCY_GIVE_UP {
                self.timing[r as usize] = None;
            }
        }
        if let Some(d) = self.last_demand {
            let due = self
                .stats
                .is_none_or(|(at, _)| now.saturating_sub(at) >= self.cfg.stats_period);
            if due {
                self.stats = Some((now, d.mem_used_kib.saturating_mul(1024)));
            }
        }
        if let Some((_, bytes)) = self.stats {
            self.engine.observe_memory_in_use(bytes);
            self.engine
                .observe_usage(now, Resource::Memory, bytes as f64);
        }
        // perfvmm needs two ticks to measure run time over wall time.
        if self.last_tick.is_some() {
            let busy = match self.busy {
                (sum, n) if n > 0 => Some(sum / f64::from(n)),
                _ => self.last_demand.map(|d| self.busy_now(d)),
            };
            if let Some(b) = busy {
                self.engine.observe_usage(now, Resource::Vcpus, b);
            }
        }
        self.last_tick = Some(now);
        self.busy = (0.0, 0);
        let ds = self.engine.tick(now);
        self.apply(now, ds);
    }

    /// vCPUs busy for a demand: its runnable tasks, as far as the guest has
    /// vCPUs to run them (the host sees vCPU threads' run time).
    fn busy_now(&self, d: Demand) -> f64 {
        d.running.min(self.guest[Resource::Vcpus as usize] as f64)
    }
}

/// One demand sample and what the guest had then.
struct Sample {
    t: Duration,
    demand: Demand,
    /// vCPUs, memory bytes.
    alloc: [u64; 2],
}

/// Replays `trace` through perfvmm's policy engine under `cfg`.
pub fn simulate(trace: &Trace, cfg: &SimConfig) -> Report {
    let vm = trace.header.vm;
    let mut sim = Sim {
        cfg,
        engine: Engine::new(cfg.policy.clone(), vm),
        rng: Rng::new(cfg.seed),
        guest: [u64::from(vm.boot_vcpus), vm.boot_memory],
        inflight: [None, None],
        timing: [None, None],
        decisions: Vec::new(),
        stats: None,
        last_demand: None,
        busy: (0.0, 0),
        last_tick: None,
    };
    let tick = cfg.tick.max(Duration::from_millis(1));
    let mut next_tick = tick;
    let mut samples = Vec::new();
    let mut measured = Vec::new();
    let mut hints = HintCounts::default();
    for rec in &trace.records {
        // Ticks due before the record; at the same time the record comes first.
        while next_tick < rec.t {
            sim.tick(next_tick);
            next_tick += tick;
        }
        sim.advance(rec.t);
        match &rec.record {
            Record::Hint(h) => {
                hints.total += 1;
                let Some(hint) = &h.hint else {
                    hints.skipped += 1;
                    continue;
                };
                let (outcome, ds) = sim.engine.on_hint(rec.t, h.seq, hint);
                if h.outcome.as_deref().is_some_and(|o| o != outcome.as_str()) {
                    hints.outcome_mismatches += 1;
                }
                sim.apply(rec.t, ds);
                if !h.schedule.is_empty() {
                    sim.engine.set_schedule(rec.t, h.seq, &h.schedule);
                    let ds = sim.engine.tick(rec.t);
                    sim.apply(rec.t, ds);
                }
            }
            Record::Demand(d) => {
                sim.last_demand = Some(*d);
                let b = sim.busy_now(*d);
                sim.busy.0 += b;
                sim.busy.1 += 1;
                samples.push(Sample {
                    t: rec.t,
                    demand: *d,
                    alloc: sim.guest,
                });
            }
            Record::Measured(m) => measured.push((rec.t, *m)),
        }
    }
    let reserved = trace.header.reserved_kib;
    let simulated = figures(&samples, reserved, |s| Some(s.alloc));
    let measured_figures = (!measured.is_empty()).then(|| {
        figures(&samples, reserved, |s| {
            let i = measured.partition_point(|(t, _)| *t < s.t);
            let (t, m) = measured.get(i)?;
            (*t == s.t).then(|| {
                [
                    u64::from(m.cpus),
                    (m.mem_total_kib.saturating_add(reserved)).saturating_mul(1024),
                ]
            })
        })
    });
    let count = |r: Resource| sim.decisions.iter().filter(|d| d.resource == r).count();
    let lead = |r: Resource| sim.engine.lead(r).as_millis() as u64;
    let duration_ms = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => b.t.saturating_sub(a.t).as_millis() as u64,
        _ => 0,
    };
    Report {
        source: trace.header.source.clone(),
        mode: cfg.policy.mode.as_str(),
        latency: cfg.latency.name.clone(),
        seed: cfg.seed,
        samples: samples.len(),
        duration_ms,
        hints,
        decision_counts: PerResource {
            vcpus: count(Resource::Vcpus),
            memory: count(Resource::Memory),
        },
        lead_ms: PerResource {
            vcpus: lead(Resource::Vcpus),
            memory: lead(Resource::Memory),
        },
        difference_points: measured_figures.map(|m| Difference::between(&simulated, &m)),
        measured: measured_figures,
        simulated,
        decisions: sim.decisions,
    }
}

/// Slack, shortage and resource-time over the samples for which `alloc`
/// gives the allocation ([vCPUs, memory bytes as granted by the host]).
fn figures(
    samples: &[Sample],
    reserved_kib: u64,
    alloc: impl Fn(&Sample) -> Option<[u64; 2]>,
) -> Figures {
    let mut cpu = Vec::new();
    let mut mem = Vec::new();
    let (mut vcpu_s, mut gib_s) = (0.0, 0.0);
    let mut last_dt = 0.0;
    for (i, s) in samples.iter().enumerate() {
        let Some([vcpus, bytes]) = alloc(s) else {
            continue;
        };
        // Each sample stands for the time until the next one.
        let dt = match samples.get(i + 1) {
            Some(n) => n.t.saturating_sub(s.t).as_secs_f64(),
            None => last_dt,
        };
        last_dt = dt;
        let visible_kib = (bytes / 1024).saturating_sub(reserved_kib) as f64;
        cpu.push((s.demand.running, vcpus as f64));
        mem.push((s.demand.mem_used_kib as f64, visible_kib));
        vcpu_s += vcpus as f64 * dt;
        gib_s += bytes as f64 / f64::from(1u32 << 30) * dt;
    }
    let mut memory = Fit::of(&mem);
    memory.mean /= 1024.0;
    Figures {
        cpu: Fit::of(&cpu),
        memory,
        vcpu_seconds: vcpu_s,
        gib_seconds: gib_s,
    }
}

impl Report {
    /// The report as a short table, for people.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        let _ =
            writeln!(
            out,
            "policy mode {}, latency model {}, seed {}: {} demand samples over {:.1} s, {} hints{}",
            self.mode,
            self.latency,
            self.seed,
            self.samples,
            self.duration_ms as f64 / 1000.0,
            self.hints.total,
            if self.hints.skipped > 0 {
                format!(" ({} of kinds this perfvmm does not know, skipped)", self.hints.skipped)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "decisions: {} vCPU, {} memory; lead time at the end: {} ms (vCPUs), {} ms (memory)",
            self.decision_counts.vcpus,
            self.decision_counts.memory,
            self.lead_ms.vcpus,
            self.lead_ms.memory
        );
        let _ = writeln!(
            out,
            "\n{:<18} {:>9} {:>9} {:>11} {:>9} {:>9} {:>10} {:>8} {:>7}",
            "",
            "CPU slack",
            "CPU short",
            "CPU deficit",
            "mem slack",
            "mem short",
            "mean mem",
            "vCPU-s",
            "GiB-s"
        );
        let mut row = |label: &str, f: &Figures| {
            let _ = writeln!(
                out,
                "{label:<18} {:>9} {:>9} {:>11} {:>9} {:>9} {:>6.0} MiB {:>8.1} {:>7.2}",
                pct(f.cpu.slack),
                pct(f.cpu.shortage),
                pct(f.cpu.deficit),
                pct(f.memory.slack),
                pct(f.memory.shortage),
                f.memory.mean,
                f.vcpu_seconds,
                f.gib_seconds
            );
        };
        row("simulated", &self.simulated);
        if let Some(m) = &self.measured {
            row("measured", m);
        }
        if let Some(d) = &self.difference_points {
            let _ = writeln!(
                out,
                "{:<18} {:>+9.1} {:>+9.1} {:>11} {:>+9.1} {:>+9.1}",
                "difference (pts)",
                d.cpu_slack,
                d.cpu_shortage,
                "",
                d.memory_slack,
                d.memory_shortage
            );
            let _ = writeln!(
                out,
                "simulated slack and shortage within {VALIDATION_POINTS} points of the measured: {}",
                if d.within { "yes" } else { "no" }
            );
        }
        out
    }
}

// ---------------------------------------------------------------------------

/// A small JSON reader for one line of a trace or a latency file: values
/// as a tree, numbers kept as written so that large integers stay exact.
/// Nesting is limited to [`json::MAX_DEPTH`] levels.
pub mod json {
    use std::fmt;

    #[derive(Clone, Debug, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        /// As written (valid JSON number syntax).
        Number(String),
        String(String),
        Array(Vec<Value>),
        /// Keys in order; a repeated key's first value wins in [`Value::get`].
        Object(Vec<(String, Value)>),
    }

    /// Deepest nesting of arrays and objects accepted.
    pub const MAX_DEPTH: usize = 64;

    impl Value {
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Object(f) => f.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        pub fn is_object(&self) -> bool {
            matches!(self, Value::Object(_))
        }

        pub fn as_str(&self) -> Option<&str> {
            match self {
                Value::String(s) => Some(s),
                _ => None,
            }
        }

        pub fn as_bool(&self) -> Option<bool> {
            match self {
                Value::Bool(b) => Some(*b),
                _ => None,
            }
        }

        pub fn as_array(&self) -> Option<&[Value]> {
            match self {
                Value::Array(a) => Some(a),
                _ => None,
            }
        }

        /// A finite number.
        pub fn as_f64(&self) -> Option<f64> {
            match self {
                Value::Number(s) => s.parse::<f64>().ok().filter(|f| f.is_finite()),
                _ => None,
            }
        }

        /// A whole number ≥ 0 that fits in a u64 (`1e3` and `1000.0` too).
        pub fn as_u64(&self) -> Option<u64> {
            let Value::Number(s) = self else {
                return None;
            };
            s.parse::<u64>().ok().or_else(|| {
                let f = s.parse::<f64>().ok()?;
                (f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f))
                    .then_some(f as u64)
            })
        }
    }

    /// Compact, for messages: strings quoted and escaped (so a message
    /// stays on one line), long ones cut.
    impl fmt::Display for Value {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Value::Null => f.write_str("null"),
                Value::Bool(b) => write!(f, "{b}"),
                Value::Number(n) => f.write_str(n),
                Value::String(s) if s.chars().count() > 40 => {
                    let cut: String = s.chars().take(40).collect();
                    write!(f, "{cut:?}...")
                }
                Value::String(s) => write!(f, "{s:?}"),
                Value::Array(a) => write!(f, "an array of {}", a.len()),
                Value::Object(_) => f.write_str("an object"),
            }
        }
    }

    /// Parses one JSON value, with nothing but white space around it.
    pub fn parse(text: &str) -> Result<Value, String> {
        let mut p = Parser {
            text,
            b: text.as_bytes(),
            i: 0,
            depth: 0,
        };
        p.ws();
        let v = p.value()?;
        p.ws();
        if p.i != p.b.len() {
            return Err(p.err("unexpected characters after the value"));
        }
        Ok(v)
    }

    struct Parser<'a> {
        text: &'a str,
        b: &'a [u8],
        i: usize,
        depth: usize,
    }

    impl Parser<'_> {
        fn err(&self, what: &str) -> String {
            let before = &self.b[..self.i.min(self.b.len())];
            match before.iter().rposition(|&c| c == b'\n') {
                None if !self.b.contains(&b'\n') => format!("{what} at column {}", self.i + 1),
                nl => {
                    let line = before.iter().filter(|&&c| c == b'\n').count() + 1;
                    let column = self.i - nl.map_or(0, |n| n + 1) + 1;
                    format!("{what} at line {line}, column {column}")
                }
            }
        }

        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn eat(&mut self, c: u8) -> bool {
            let hit = self.peek() == Some(c);
            if hit {
                self.i += 1;
            }
            hit
        }

        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.i += 1;
            }
        }

        fn value(&mut self) -> Result<Value, String> {
            match self.peek() {
                None => Err(self.err("unexpected end of the line")),
                Some(b'{') => self.object(),
                Some(b'[') => self.array(),
                Some(b'"') => Ok(Value::String(self.string()?)),
                Some(b't') => self.literal("true", Value::Bool(true)),
                Some(b'f') => self.literal("false", Value::Bool(false)),
                Some(b'n') => self.literal("null", Value::Null),
                Some(b'-' | b'0'..=b'9') => self.number(),
                Some(_) => Err(self.err("expected a JSON value")),
            }
        }

        fn literal(&mut self, word: &str, v: Value) -> Result<Value, String> {
            if self.b[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                Ok(v)
            } else {
                Err(self.err("expected a JSON value"))
            }
        }

        fn enter(&mut self) -> Result<(), String> {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.err(&format!("nested deeper than {MAX_DEPTH} levels")));
            }
            self.i += 1;
            self.ws();
            Ok(())
        }

        fn object(&mut self) -> Result<Value, String> {
            self.enter()?;
            let mut fields = Vec::new();
            if !self.eat(b'}') {
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(self.err("expected a key in double quotes"));
                    }
                    let k = self.string()?;
                    self.ws();
                    if !self.eat(b':') {
                        return Err(self.err("expected ':'"));
                    }
                    self.ws();
                    fields.push((k, self.value()?));
                    self.ws();
                    if self.eat(b'}') {
                        break;
                    }
                    if !self.eat(b',') {
                        return Err(self.err("expected ',' or '}'"));
                    }
                }
            }
            self.depth -= 1;
            Ok(Value::Object(fields))
        }

        fn array(&mut self) -> Result<Value, String> {
            self.enter()?;
            let mut items = Vec::new();
            if !self.eat(b']') {
                loop {
                    self.ws();
                    items.push(self.value()?);
                    self.ws();
                    if self.eat(b']') {
                        break;
                    }
                    if !self.eat(b',') {
                        return Err(self.err("expected ',' or ']'"));
                    }
                }
            }
            self.depth -= 1;
            Ok(Value::Array(items))
        }

        fn digits(&mut self) -> usize {
            let start = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            self.i - start
        }

        fn number(&mut self) -> Result<Value, String> {
            let start = self.i;
            self.eat(b'-');
            if !self.eat(b'0') && self.digits() == 0 {
                return Err(self.err("expected a digit"));
            }
            if self.eat(b'.') && self.digits() == 0 {
                return Err(self.err("expected a digit after '.'"));
            }
            if matches!(self.peek(), Some(b'e' | b'E')) {
                self.i += 1;
                if !self.eat(b'+') {
                    self.eat(b'-');
                }
                if self.digits() == 0 {
                    return Err(self.err("expected a digit in the exponent"));
                }
            }
            Ok(Value::Number(self.text[start..self.i].to_string()))
        }

        fn hex4(&mut self) -> Result<u32, String> {
            let h = self
                .text
                .get(self.i..self.i + 4)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .ok_or_else(|| self.err("expected four hex digits after \\u"))?;
            self.i += 4;
            u32::from_str_radix(h, 16).map_err(|_| self.err("bad \\u escape"))
        }

        fn string(&mut self) -> Result<String, String> {
            self.i += 1;
            let mut out = String::new();
            loop {
                let start = self.i;
                while matches!(self.peek(), Some(c) if c != b'"' && c != b'\\' && c >= 0x20) {
                    self.i += 1;
                }
                // Only ASCII bytes stop the run, so both ends are character boundaries.
                out.push_str(self.text.get(start..self.i).unwrap_or_default());
                match self.peek() {
                    None => return Err(self.err("unterminated string")),
                    Some(b'"') => {
                        self.i += 1;
                        return Ok(out);
                    }
                    Some(b'\\') => {
                        self.i += 1;
                        let c = self.peek().ok_or_else(|| self.err("unterminated string"))?;
                        self.i += 1;
                        match c {
                            b'"' => out.push('"'),
                            b'\\' => out.push('\\'),
                            b'/' => out.push('/'),
                            b'b' => out.push('\u{8}'),
                            b'f' => out.push('\u{c}'),
                            b'n' => out.push('\n'),
                            b'r' => out.push('\r'),
                            b't' => out.push('\t'),
                            b'u' => {
                                let mut cp = self.hex4()?;
                                if (0xd800..0xdc00).contains(&cp) {
                                    if !self.b[self.i..].starts_with(b"\\u") {
                                        return Err(self.err("lone surrogate in \\u escape"));
                                    }
                                    self.i += 2;
                                    let lo = self.hex4()?;
                                    if !(0xdc00..0xe000).contains(&lo) {
                                        return Err(self.err("bad surrogate pair in \\u escape"));
                                    }
                                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                                }
                                out.push(
                                    char::from_u32(cp)
                                        .ok_or_else(|| self.err("lone surrogate in \\u escape"))?,
                                );
                            }
                            _ => return Err(self.err("unknown escape in a string")),
                        }
                    }
                    Some(_) => return Err(self.err("control character in a string")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    /// The trace shipped with perfvmm (synthetic, see docs/simulator.md).
    const DEMO: &str = include_str!("../traces/demo-nested.jsonl");

    fn demo() -> Trace {
        Trace::parse(DEMO).unwrap()
    }

    fn config(mode: Mode, latency: LatencyModel) -> SimConfig {
        let policy = Policy {
            mode,
            ..Policy::default()
        };
        SimConfig::new(policy, latency, 1)
    }

    fn run(mode: Mode) -> Report {
        simulate(&demo(), &config(mode, LatencyModel::nested()))
    }

    /// The time of the hint with this sequence number, in ms.
    fn hint_ms(t: &Trace, seq: u32) -> u64 {
        t.records
            .iter()
            .find_map(|r| match &r.record {
                Record::Hint(h) if h.seq == seq => Some(r.t.as_millis() as u64),
                _ => None,
            })
            .unwrap()
    }

    fn decisions(r: &Report, res: Resource) -> Vec<&SimDecision> {
        r.decisions.iter().filter(|d| d.resource == res).collect()
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
    fn static_mode_decides_nothing() {
        let r = run(Mode::Static);
        assert_eq!(r.mode, "static");
        assert!(r.decisions.is_empty(), "{:?}", r.decisions);
        assert_eq!(r.hints.total, 14);
        let s = &r.simulated;
        // 1 vCPU all along: the parallel phase is short of CPUs.
        assert_eq!(s.cpu.mean, 1.0);
        assert!(s.cpu.shortage > 0.15 && s.cpu.shortage < 0.4, "{s:?}");
        assert!(s.cpu.deficit > 0.3, "{s:?}");
        // 512 MiB less the kernel's 47 MiB, never short.
        assert_eq!(s.memory.mean, 465.0);
        assert_eq!(s.memory.shortage, 0.0);
        assert!(s.memory.slack > 0.5 && s.memory.slack < 0.9, "{s:?}");
        // 12.8 s of samples, the last one standing for 100 ms: 12.9 s.
        assert!((s.vcpu_seconds - 12.9).abs() < 1e-9, "{}", s.vcpu_seconds);
        assert!(
            (s.gib_seconds - 12.9 / 2.0).abs() < 1e-9,
            "{}",
            s.gib_seconds
        );
        assert!(r.measured.is_none() && r.difference_points.is_none());
    }

    #[test]
    fn hints_mode_decides_at_the_phase_boundaries() {
        let t = demo();
        let r = run(Mode::Hints);
        let v = decisions(&r, Resource::Vcpus);
        // The manifest's 4 tasks grow the VM at once; the serial phase's
        // 1 task shrinks it after the 2 s window; the serial phase's end
        // brings the manifest's 4 back (between phases the manifest is the
        // demand), 10 ms before the parallel phase asks for them; the idle
        // hint's 1 shrinks it after the window.
        let steps: Vec<(u64, u64, u64)> = v.iter().map(|d| (d.t_ms, d.from, d.to)).collect();
        let (manifest, serial, serial_end, idle) = (
            hint_ms(&t, 0),
            hint_ms(&t, 1),
            hint_ms(&t, 3),
            hint_ms(&t, 13),
        );
        assert_eq!(steps[0], (manifest, 1, 4), "{steps:?}");
        assert_eq!((steps[1].1, steps[1].2), (4, 1), "{steps:?}");
        assert!(
            steps[1].0 >= serial + 2_000 && steps[1].0 < serial_end,
            "{steps:?}"
        );
        assert_eq!(steps[2], (serial_end, 1, 4), "{steps:?}");
        assert_eq!(hint_ms(&t, 4) - serial_end, 10);
        assert_eq!((steps[3].1, steps[3].2), (4, 1), "{steps:?}");
        assert!(steps[3].0 >= idle + 2_000, "{steps:?}");
        assert_eq!(steps.len(), 4, "{steps:?}");
        // Memory: the memory phase's peak (512 MiB + 192 MiB reserve)
        // grows it at the phase's start.
        let m = decisions(&r, Resource::Memory);
        let memory_phase = hint_ms(&t, 7);
        assert!(
            m.iter()
                .any(|d| d.t_ms == memory_phase && d.to == 704 << 20),
            "{m:?}"
        );
        // Every decision becomes visible one drawn latency later.
        for d in &r.decisions {
            if let Some(at) = d.visible_ms {
                assert_eq!(at, d.t_ms + d.latency_ms, "{d:?}");
                assert!(LatencyModel::nested()
                    .list(d.resource, true)
                    .contains(&d.latency_ms));
            }
        }
        // The parallel phase waits for its vCPUs: some shortage, less than static.
        let s = run(Mode::Static).simulated;
        assert!(
            r.simulated.cpu.deficit < s.cpu.deficit,
            "{:?} vs {:?}",
            r.simulated,
            s
        );
    }

    #[test]
    fn schedule_mode_without_a_schedule_follows_the_hints() {
        // The demo's manifest carries no per-phase schedule.
        let (h, s) = (run(Mode::Hints), run(Mode::Schedule));
        assert_eq!(s.mode, "schedule");
        assert_eq!(h.decisions, s.decisions);
        assert_eq!(h.simulated, s.simulated);
    }

    #[test]
    fn reactive_mode_grows_after_usage_rises() {
        let t = demo();
        let r = run(Mode::Reactive);
        let v = decisions(&r, Resource::Vcpus);
        let parallel = hint_ms(&t, 4);
        let first_grow_to_4 = v.iter().find(|d| d.to == 4).expect("grows to 4 in the end");
        assert!(first_grow_to_4.t_ms > parallel, "{v:?}");
        assert!(
            v.iter()
                .all(|d| d.reason.contains("usage") || d.reason.starts_with("shrink")),
            "{v:?}"
        );
        // No vCPU grows before the parallel phase but for helper noise
        // (at most 2 vCPUs); none reacts to the manifest.
        assert!(
            v.iter().filter(|d| d.t_ms < parallel).all(|d| d.to <= 2),
            "{v:?}"
        );
        // The host sees at most the vCPUs the guest has: the VM climbs step by step.
        let climb: Vec<u64> = v
            .iter()
            .filter(|d| d.t_ms >= parallel && d.to > d.from)
            .map(|d| d.to)
            .collect();
        assert!(climb.len() >= 2, "{v:?}");
        // Memory follows the guest's memory in use, never the hinted peak.
        let m = decisions(&r, Resource::Memory);
        assert!(m.iter().all(|d| d.to < 704 << 20), "{m:?}");
    }

    #[test]
    fn results_are_deterministic_for_a_seed() {
        for mode in [Mode::Static, Mode::Reactive, Mode::Hints, Mode::Schedule] {
            let a = simulate(&demo(), &config(mode, LatencyModel::nested()));
            let b = simulate(&demo(), &config(mode, LatencyModel::nested()));
            assert_eq!(a, b, "{mode:?}");
        }
        let mut c = config(Mode::Hints, LatencyModel::nested());
        let lat = |seed: u64, c: &mut SimConfig| {
            c.seed = seed;
            simulate(&demo(), c)
                .decisions
                .iter()
                .map(|d| d.latency_ms)
                .collect::<Vec<_>>()
        };
        let draws: Vec<Vec<u64>> = (0..8).map(|s| lat(s, &mut c)).collect();
        assert!(
            draws.windows(2).any(|w| w[0] != w[1]),
            "seeds change the draws"
        );
    }

    #[test]
    fn hardware_latency_shortens_the_shortage() {
        let n = run(Mode::Hints).simulated;
        let h = simulate(&demo(), &config(Mode::Hints, LatencyModel::hardware())).simulated;
        assert!(h.cpu.deficit < n.cpu.deficit, "{h:?} vs {n:?}");
    }

    #[test]
    fn rng_is_deterministic_and_uniform_enough() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::new(42);
        assert_eq!(a, (0..5).map(|_| r.next_u64()).collect::<Vec<_>>());
        assert_ne!(a[0], Rng::new(43).next_u64());
        let mut zero = Rng::new(0);
        assert_ne!(zero.next_u64(), zero.next_u64(), "seed 0 works");
        let mut counts = [0u32; 7];
        let mut r = Rng::new(7);
        for _ in 0..70_000 {
            counts[r.below(7)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn latency_models() {
        let n = LatencyModel::nested();
        // The figures docs/simulator.md states.
        assert_eq!(n.p50_max(Resource::Vcpus), (310, 910));
        assert_eq!(n.p50_max(Resource::Memory), (270, 330));
        let h = LatencyModel::hardware();
        assert_eq!(h.p50_max(Resource::Vcpus), (35, 60));
        assert_eq!(h.p50_max(Resource::Memory), (15, 40));
        assert_eq!(LatencyModel::builtin("hardware"), Some(h));
        assert_eq!(LatencyModel::builtin("fast"), None);
        let mut a = Rng::new(3);
        let mut b = Rng::new(3);
        for _ in 0..20 {
            assert_eq!(
                n.draw(Resource::Vcpus, true, &mut a),
                n.draw(Resource::Vcpus, true, &mut b)
            );
        }
        let m = LatencyModel::from_json(
            "mine",
            r#"{"vcpus_ms":[100, 200.4],"memory_ms":[50],"memory_shrink_ms":[3000]}"#,
        )
        .unwrap();
        assert_eq!(
            (m.vcpus_ms.clone(), m.memory_ms.clone()),
            (vec![100, 200], vec![50])
        );
        assert_eq!(m.list(Resource::Memory, false), &[3000]);
        assert_eq!(
            m.list(Resource::Vcpus, false),
            &[100, 200],
            "grows stand in for shrinks"
        );
        for (text, needle) in [
            ("[1]", "expected an object"),
            ("{\"vcpus_ms\":[1]}", "memory_ms: missing"),
            ("{\"vcpus_ms\":[],\"memory_ms\":[1]}", "1 to"),
            ("{\"vcpus_ms\":[-1],\"memory_ms\":[1]}", "not a latency"),
            (
                "{\"vcpus_ms\":[1],\"memory_ms\":[1],\"cpu_ms\":[1]}",
                "unknown key \"cpu_ms\"",
            ),
            ("{\"vcpus_ms\":[1],", "not JSON"),
        ] {
            let e = LatencyModel::from_json("f", text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    const HEADER: &str = r#"{"format":"perfvmm-trace","version":1,"vm":{"boot_vcpus":1,"max_vcpus":4,"boot_memory":536870912,"max_memory":1073741824}}"#;

    fn err(body: &str) -> String {
        Trace::parse(&format!("{HEADER}\n{body}"))
            .unwrap_err()
            .to_string()
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

    #[test]
    fn unknown_hint_kinds_are_skipped_and_outcomes_compared() {
        let t = Trace::parse(&format!(
            "{HEADER}\n\
             {{\"t_ms\":0,\"hint\":{{\"seq\":0,\"kind\":\"teleport\",\"fields\":{{}}}}}}\n\
             {{\"t_ms\":0,\"hint\":{{\"seq\":1,\"kind\":\"parallelism\",\"fields\":{{\"runnable_tasks\":9}},\"outcome\":\"accepted\"}}}}\n\
             {{\"t_ms\":0,\"demand\":{{\"running\":1,\"mem_used_kib\":1}}}}"
        ))
        .unwrap();
        let r = simulate(&t, &config(Mode::Hints, LatencyModel::hardware()));
        // 9 tasks on a 4-vCPU VM: perfvmm clamps it, the log said accepted.
        assert_eq!(
            r.hints,
            HintCounts {
                total: 2,
                skipped: 1,
                outcome_mismatches: 1
            }
        );
        assert_eq!(r.decisions[0].to, 4);
    }

    /// A trace of `n` samples 100 ms apart, `running` tasks each, with
    /// what the VM had recorded beside them.
    fn measured_trace(n: u32, running: u32, cpus: u32, mem_total_kib: u64) -> Trace {
        let mut text = String::from(HEADER);
        text.push('\n');
        for i in 0..n {
            let t = i * 100;
            text.push_str(&format!(
                "{{\"t_ms\":{t},\"demand\":{{\"running\":{running},\"mem_used_kib\":102400}}}}\n\
                 {{\"t_ms\":{t},\"measured\":{{\"cpus\":{cpus},\"mem_total_kib\":{mem_total_kib}}}}}\n"
            ));
        }
        Trace::parse(&text).unwrap()
    }

    #[test]
    fn measured_figures_are_compared_in_points() {
        // The VM really had what a static simulation gives: no difference.
        let t = measured_trace(50, 2, 1, 512 << 10);
        let r = simulate(&t, &config(Mode::Static, LatencyModel::nested()));
        let m = r.measured.unwrap();
        assert_eq!(m, r.simulated);
        let d = r.difference_points.unwrap();
        assert_eq!(
            (d.cpu_slack, d.cpu_shortage, d.memory_slack),
            (0.0, 0.0, 0.0)
        );
        assert!(d.within);
        assert!(
            r.table().contains("within 5 points of the measured: yes"),
            "{}",
            r.table()
        );
        // It had 2 vCPUs: the simulation's 1 is 100 points short of it.
        let t = measured_trace(50, 2, 2, 512 << 10);
        let r = simulate(&t, &config(Mode::Static, LatencyModel::nested()));
        let d = r.difference_points.unwrap();
        assert_eq!((d.cpu_shortage, d.cpu_slack), (100.0, 0.0));
        assert!(!d.within);
        assert!(r.table().contains("measured"));
    }

    #[test]
    fn a_schedule_is_provisioned_ahead_and_its_lead_adapts() {
        // A manifest whose schedule has a 4-thread phase 3 s in; hardware
        // latency. The lead starts at the policy's 1 s and becomes the
        // measured latency (rounded up to the 200 ms tick).
        let manifest = r#"{"t_ms":1000,"hint":{"seq":0,"kind":"manifest","fields":{"app":"a","schedule":[{"id":1,"start_ms":0,"duration_ms":3000,"parallelism_p50_milli":1000,"parallelism_p95_milli":1000},{"id":2,"start_ms":3000,"duration_ms":2000,"parallelism_p50_milli":3500,"parallelism_p95_milli":3800,"working_set_bytes":1048576}]}}}"#;
        let mut text = format!("{HEADER}\n");
        for i in 0..100 {
            text.push_str(&format!(
                "{{\"t_ms\":{},\"demand\":{{\"running\":1,\"mem_used_kib\":1}}}}\n",
                i * 100
            ));
            if i == 10 {
                text.push_str(manifest);
                text.push('\n');
            }
        }
        let t = Trace::parse(&text).unwrap();
        let schedule = t.records.iter().find_map(|r| match &r.record {
            Record::Hint(h) => Some(h.schedule.clone()),
            _ => None,
        });
        let Some([p1, p2]) = schedule.as_deref() else {
            panic!("two scheduled phases")
        };
        assert_eq!(
            (p1.id, p2.parallelism.map(|p| p.runnable_tasks)),
            (1, Some(4))
        );
        let r = simulate(&t, &config(Mode::Schedule, LatencyModel::hardware()));
        let v = decisions(&r, Resource::Vcpus);
        // Phase 2 is expected at 4 s: provisioned the 1 s lead before.
        assert_eq!((v[0].t_ms, v[0].to), (3_000, 4), "{v:?}");
        assert_eq!(r.lead_ms.vcpus, 200, "measured at the next tick");
        // In hints mode the schedule is not used.
        let h = simulate(&t, &config(Mode::Hints, LatencyModel::hardware()));
        assert!(decisions(&h, Resource::Vcpus).is_empty());
    }

    #[test]
    fn the_table_reports_the_benchmarks_figures() {
        let text = run(Mode::Hints).table();
        for needle in [
            "policy mode hints",
            "latency model nested",
            "CPU slack",
            "CPU short",
            "mem slack",
            "mem short",
            "mean mem",
            "vCPU-s",
            "GiB-s",
            "simulated",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        assert!(!text.contains("measured"));
    }

    #[test]
    fn json_reader() {
        use json::{parse, Value};
        let v =
            parse(r#" {"a": [1, -2.5e3, true, null, "x\"\\\/\n\u00e9\ud83d\ude00"], "b": {}} "#)
                .unwrap();
        let a = v.get("a").unwrap().as_array().unwrap();
        assert_eq!(a[0].as_u64(), Some(1));
        assert_eq!(a[1].as_f64(), Some(-2500.0));
        assert_eq!(a[1].as_u64(), None);
        assert_eq!(a[2].as_bool(), Some(true));
        assert_eq!(a[3], Value::Null);
        assert_eq!(a[4].as_str(), Some("x\"\\/\né😀"));
        assert_eq!(
            parse("18446744073709551615").unwrap().as_u64(),
            Some(u64::MAX)
        );
        assert_eq!(parse("18446744073709551616").unwrap().as_u64(), None);
        assert_eq!(parse("1e3").unwrap().as_u64(), Some(1000));
        assert_eq!(parse("\"né\"").unwrap().as_str(), Some("né"));
        // Messages stay on one line.
        assert_eq!(parse(r#""a\nb""#).unwrap().to_string(), r#""a\nb""#);
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "1.",
            "-",
            "1e",
            "tru",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"a\tb\"",
            "{} x",
            "{'a':1}",
            "\"\\u12\"",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse("{\n  \"a\": 1,\n  x\n}")
            .unwrap_err()
            .ends_with("at line 3, column 3"));
        assert!(parse("[1, x]").unwrap_err().ends_with("at column 5"));
        let deep = "[".repeat(json::MAX_DEPTH + 1) + &"]".repeat(json::MAX_DEPTH + 1);
        assert!(parse(&deep).unwrap_err().contains("nested deeper"));
        let ok = "[".repeat(json::MAX_DEPTH) + &"]".repeat(json::MAX_DEPTH);
        assert!(parse(&ok).is_ok());
    }
}
