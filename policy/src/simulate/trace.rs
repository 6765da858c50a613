//! The trace format (`docs/simulator.md`, "Trace format") and its parser.

use std::time::Duration;

use guest_hints::wire::Hint;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::engine::VmLimits;

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
    /// The guest driver's stream (open file) it came through; 0 when the
    /// log does not say.
    pub stream: u16,
    pub seq: u32,
    pub kind: String,
    /// The hint, or `None` for a kind this perfvmm's wire format does not
    /// have (it is counted and skipped).
    pub hint: Option<Hint>,
    /// The outcome perfvmm gave it when it was recorded, if logged.
    pub outcome: Option<String>,
}

/// What the guest demanded at one moment (its `sample` line).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(expecting = "a demand sample {\"running\":..,\"mem_used_kib\":..}")]
pub struct Demand {
    /// Runnable tasks (`procs_running`, less the sampler).
    pub running: f64,
    /// Memory in use: `MemTotal − MemAvailable`, in KiB.
    pub mem_used_kib: u64,
}

/// What the VM really had at one moment (recorded runs only).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(expecting = "a measurement {\"cpus\":..,\"mem_total_kib\":..}")]
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
            let (t_ms, record) = parse_record(line, text)?;
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

// ---------------------------------------------------------------------------
// Reading JSON lines with serde_json.

/// serde_json's message for `e` on one line: its position as the column
/// in the line, `offset` being where the text it parsed starts in it.
fn message(e: &serde_json::Error, offset: usize) -> String {
    let full = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&at) {
        Some(m) => format!("{m} at column {}", offset + e.column()),
        None => full,
    }
}

/// Line `line` as a `T`: text that is not JSON is [`TraceError::Json`],
/// JSON of the wrong shape what `data` makes of the message.
fn parse_line<'a, T: Deserialize<'a>>(
    line: usize,
    text: &'a str,
    data: impl Fn(String) -> TraceError,
) -> Result<T, TraceError> {
    if text.trim_start().starts_with('[') {
        return Err(data(ARRAY.into()));
    }
    serde_json::from_str(text).map_err(|e| {
        let message = message(&e, 0);
        if e.is_data() {
            data(message)
        } else {
            TraceError::Json { line, message }
        }
    })
}

/// serde's derived structs also read an array of their fields in order;
/// every object of a trace must be written as one.
const ARRAY: &str = "expected an object, got an array";

/// `f`, a part of the line `text` (or other text), as a `T`, with
/// serde_json's message and the column in the line.
fn read<'a, T: Deserialize<'a>>(text: &str, f: &'a str) -> Result<T, String> {
    if f.starts_with('[') {
        return Err(ARRAY.into());
    }
    serde_json::from_str(f).map_err(|e| message(&e, offset_in(text, f)))
}

/// `part` of the line `text` as a `T`; errors start with `what`.
fn decode<'a, T: Deserialize<'a>>(text: &str, part: &'a str, what: &str) -> Result<T, String> {
    read(text, part).map_err(|e| format!("{what}: {e}"))
}

/// Where `part` starts in `text`, when it is a part of it (else 0).
fn offset_in(text: &str, part: &str) -> usize {
    let (t, p) = (text.as_ptr() as usize, part.as_ptr() as usize);
    if (t..=t + text.len()).contains(&p) {
        p - t
    } else {
        0
    }
}

// ---------------------------------------------------------------------------
// The header.

/// The header line. The VM's sizes are read once the format and version
/// are known to be this simulator's.
#[derive(Deserialize)]
struct HeaderLine<'a> {
    format: Option<String>,
    version: Option<u64>,
    #[serde(borrow)]
    vm: Option<&'a RawValue>,
    source: Option<String>,
}

/// The header's `vm`.
#[derive(Deserialize)]
#[serde(expecting = "the VM's sizes {\"boot_vcpus\":..,\"boot_memory\":..}")]
struct VmLine {
    boot_vcpus: u32,
    max_vcpus: Option<u32>,
    boot_memory: u64,
    max_memory: Option<u64>,
    reserved_kib: Option<u64>,
}

fn parse_header(line: usize, text: &str) -> Result<TraceHeader, TraceError> {
    let err = |message: String| TraceError::Header { line, message };
    let h: HeaderLine = parse_line(line, text, err)?;
    if h.format.as_deref() != Some(TRACE_FORMAT) {
        return Err(err(format!(
            "the first line must be the header, {{\"format\":\"{TRACE_FORMAT}\",\"version\":{TRACE_VERSION},\"vm\":{{...}}}}"
        )));
    }
    let version = h
        .version
        .ok_or_else(|| err("version: expected a whole number".into()))?;
    if version != TRACE_VERSION {
        return Err(TraceError::Version { line, version });
    }
    let vm =
        h.vm.ok_or_else(|| err("vm: expected an object with the VM's sizes".into()))?;
    let vm: VmLine = decode(text, vm.get(), "vm").map_err(err)?;
    let (limits, reserved_kib) = vm_limits(vm).map_err(err)?;
    Ok(TraceHeader {
        vm: limits,
        reserved_kib,
        source: h.source.unwrap_or_default(),
    })
}

/// The VM's limits, with the defaults filled in and checked.
fn vm_limits(vm: VmLine) -> Result<(VmLimits, u64), String> {
    let (boot_vcpus, boot_memory) = (vm.boot_vcpus, vm.boot_memory);
    let max_vcpus = vm.max_vcpus.unwrap_or(boot_vcpus);
    let max_memory = vm.max_memory.unwrap_or(boot_memory);
    let reserved_kib = vm.reserved_kib.unwrap_or(0);
    if boot_vcpus == 0 || max_vcpus < boot_vcpus || max_vcpus > 4096 {
        return Err(format!(
            "vm: boot_vcpus ({boot_vcpus}) must be at least 1 and at most max_vcpus ({max_vcpus}), itself at most 4096"
        ));
    }
    if boot_memory < (1 << 20) || max_memory < boot_memory || max_memory > (1 << 50) {
        return Err(format!(
            "vm: boot_memory ({boot_memory}) must be at least 1 MiB and at most max_memory ({max_memory}), in bytes"
        ));
    }
    if reserved_kib.saturating_mul(1024) >= boot_memory {
        return Err(format!(
            "vm: reserved_kib ({reserved_kib}) must be below the boot memory"
        ));
    }
    let limits = VmLimits {
        boot_vcpus,
        max_vcpus,
        boot_memory,
        max_memory,
    };
    Ok((limits, reserved_kib))
}

// ---------------------------------------------------------------------------
// Records.

/// A record line: its time and one of the three records.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordLine<'a> {
    t_ms: f64,
    #[serde(borrow)]
    hint: Option<&'a RawValue>,
    #[serde(borrow)]
    demand: Option<&'a RawValue>,
    #[serde(borrow)]
    measured: Option<&'a RawValue>,
}

/// One record line: its time and what it holds.
fn parse_record(line: usize, text: &str) -> Result<(f64, Record), TraceError> {
    let err = |message: String| TraceError::Record { line, message };
    let r: RecordLine = parse_line(line, text, err)?;
    if !(0.0..=MAX_T_MS).contains(&r.t_ms) {
        return Err(err(format!(
            "t_ms: expected a number of milliseconds from 0 to {MAX_T_MS}"
        )));
    }
    let record = match (r.hint, r.demand, r.measured) {
        (Some(h), None, None) => parse_hint(text, h).map(|h| Record::Hint(Box::new(h))),
        (None, Some(d), None) => parse_demand(text, d).map(Record::Demand),
        (None, None, Some(m)) => decode(text, m.get(), "measured").map(Record::Measured),
        _ => {
            Err("a record has t_ms and exactly one of \"hint\", \"demand\" or \"measured\"".into())
        }
    };
    Ok((r.t_ms, record.map_err(err)?))
}

fn parse_demand(text: &str, d: &RawValue) -> Result<Demand, String> {
    let d: Demand = decode(text, d.get(), "demand")?;
    if !(0.0..=1e6).contains(&d.running) {
        return Err("demand.running: expected a number of tasks ≥ 0".into());
    }
    Ok(d)
}

// ---------------------------------------------------------------------------
// Hints.

/// A hint in the hint log's form. Fields it does not know are ignored.
#[derive(Deserialize)]
#[serde(expecting = "a hint {\"seq\":..,\"kind\":..,\"fields\":{..}}")]
struct HintLine<'a> {
    #[serde(default)]
    stream: u16,
    seq: u32,
    kind: String,
    #[serde(borrow)]
    fields: Option<&'a RawValue>,
    outcome: Option<String>,
}

/// A hint in the hint log's form: `{"seq", "kind", "fields"}` (and the
/// `outcome` perfvmm gave it, which is kept for comparison).
fn parse_hint(text: &str, h: &RawValue) -> Result<TraceHint, String> {
    let h: HintLine = decode(text, h.get(), "hint")?;
    let fields = h.fields.map_or("{}", RawValue::get);
    let hint = decode_fields(text, fields, &h.kind).map_err(|e| format!("{} hint: {e}", h.kind))?;
    Ok(TraceHint {
        stream: h.stream,
        seq: h.seq,
        kind: h.kind,
        hint,
        outcome: h.outcome,
    })
}

/// A hint's `fields` as the wire hint of its `kind`, checked as perfvmm's
/// decoder checks the hint's bytes; `None` for a kind the wire format does
/// not have.
fn decode_fields(text: &str, f: &str, kind: &str) -> Result<Option<Hint>, String> {
    let hint = match kind {
        "parallelism" => Hint::Parallelism(read::<logged::Parallelism>(text, f)?.try_into()?),
        "memory" => Hint::Memory(read::<logged::Memory>(text, f)?.into()),
        "io" => Hint::Io(read::<logged::Io>(text, f)?.into()),
        "phase_begin" => Hint::PhaseBegin(read::<logged::PhaseBegin>(text, f)?.wire(false)),
        "phase_end" => Hint::PhaseEnd {
            id: read::<logged::PhaseEnd>(text, f)?.id,
        },
        "placement" => Hint::Placement(read::<logged::Placement>(text, f)?.into()),
        "manifest" => Hint::Manifest(read::<logged::Manifest>(text, f)?.try_into()?),
        "phase_needs" => Hint::PhaseNeeds(read::<logged::PhaseNeeds>(text, f)?.try_into()?),
        "data_set" => {
            let name = read::<logged::DataSet>(text, f)?.name;
            guest_hints::client::hint::data_set(&name).ok_or_else(|| {
                format!(
                    "data set {name:?}: a name of 1 to {} bytes",
                    guest_hints::wire::MAX_NAME_LEN
                )
            })?
        }
        _ => return Ok(None),
    };
    Ok(Some(hint))
}

/// The hint log's form of the wire types (their serde serialisation, which
/// `guest_hints` only writes), read back into them. Fields it leaves out
/// and `null`s take the wire format's zero, except a memory hint's
/// `peak_bytes` (its working set); fields this perfvmm does not know are
/// ignored. What perfvmm's decoder refuses (a serial fraction above 100 %,
/// phase needs that are not valid) is refused.
mod logged {
    use guest_hints::wire::{
        self, IoClass, Locality, Name, MAX_MANIFEST_PHASES, MAX_SCHEDULE_PHASES, PPM,
    };
    use serde::{de::Error, Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(expecting = "parallelism {\"runnable_tasks\":..}")]
    pub struct Parallelism {
        runnable_tasks: u32,
        max_useful: Option<u32>,
        serial_ppm: Option<u32>,
    }

    impl TryFrom<Parallelism> for wire::Parallelism {
        type Error = String;

        fn try_from(p: Parallelism) -> Result<Self, String> {
            let serial_ppm = p.serial_ppm.unwrap_or(0);
            if serial_ppm > PPM {
                return Err(format!("serial_ppm {serial_ppm} is above {PPM}"));
            }
            Ok(wire::Parallelism {
                runnable_tasks: p.runnable_tasks,
                max_useful: p.max_useful.unwrap_or(0),
                serial_ppm,
            })
        }
    }

    #[derive(Deserialize)]
    #[serde(expecting = "memory {\"working_set_bytes\":..}")]
    pub struct Memory {
        working_set_bytes: u64,
        peak_bytes: Option<u64>,
        growth_bytes_per_sec: Option<u64>,
    }

    impl From<Memory> for wire::Memory {
        fn from(m: Memory) -> Self {
            wire::Memory {
                working_set_bytes: m.working_set_bytes,
                peak_bytes: m.peak_bytes.unwrap_or(m.working_set_bytes),
                growth_bytes_per_sec: m.growth_bytes_per_sec.unwrap_or(0),
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(expecting = "I/O {\"class\":..,\"bytes_per_sec\":..}")]
    pub struct Io {
        #[serde(default, deserialize_with = "io_class")]
        class: Option<IoClass>,
        bytes_per_sec: Option<u64>,
    }

    impl From<Io> for wire::Io {
        fn from(io: Io) -> Self {
            wire::Io {
                class: io.class.unwrap_or(IoClass::None),
                bytes_per_sec: io.bytes_per_sec.unwrap_or(0),
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(expecting = "placement {\"relocatable\":..,\"locality\":..}")]
    pub struct Placement {
        relocatable: Option<bool>,
        monolithic: Option<bool>,
        #[serde(default, deserialize_with = "locality")]
        locality: Option<Locality>,
    }

    impl From<Placement> for wire::Placement {
        fn from(p: Placement) -> Self {
            wire::Placement {
                relocatable: p.relocatable.unwrap_or(false),
                monolithic: p.monolithic.unwrap_or(false),
                locality: p.locality.unwrap_or(Locality::Any),
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(expecting = "a phase {\"id\":..,\"name\":..}")]
    pub struct PhaseBegin {
        id: u32,
        expected_ms: Option<u32>,
        name: Option<String>,
        declared_only: Option<bool>,
    }

    impl PhaseBegin {
        /// `in_manifest`: a manifest's phases are declarations.
        pub fn wire(self, in_manifest: bool) -> wire::PhaseBegin {
            wire::PhaseBegin {
                id: self.id,
                expected_ms: self.expected_ms.unwrap_or(0),
                name: Name::truncated(self.name.as_deref().unwrap_or("")),
                declared_only: in_manifest || self.declared_only.unwrap_or(false),
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(expecting = "a phase end {\"id\":..}")]
    pub struct PhaseEnd {
        pub id: u32,
    }

    #[derive(Deserialize)]
    #[serde(expecting = "a data set {\"name\":..}")]
    pub struct DataSet {
        pub name: String,
    }

    #[derive(Deserialize)]
    #[serde(expecting = "phase needs {\"id\":..,\"start_ms\":..,\"duration_ms\":..}")]
    pub struct PhaseNeeds {
        id: u32,
        start_ms: u32,
        duration_ms: u32,
        parallelism_p50_milli: Option<u32>,
        parallelism_p95_milli: Option<u32>,
        max_useful: Option<u32>,
        working_set_bytes: Option<u64>,
        peak_bytes: Option<u64>,
        #[serde(default, deserialize_with = "io_class")]
        io_class: Option<IoClass>,
        io_bytes_per_sec: Option<u64>,
    }

    impl TryFrom<PhaseNeeds> for wire::PhaseNeeds {
        type Error = String;

        fn try_from(n: PhaseNeeds) -> Result<Self, String> {
            let p = wire::PhaseNeeds::new(n.id, n.start_ms, n.duration_ms)
                .parallelism_milli(
                    n.parallelism_p50_milli.unwrap_or(0),
                    n.parallelism_p95_milli.unwrap_or(0),
                    n.max_useful.unwrap_or(0),
                )
                .memory(n.working_set_bytes.unwrap_or(0), n.peak_bytes.unwrap_or(0))
                .io(
                    n.io_class.unwrap_or(IoClass::None),
                    n.io_bytes_per_sec.unwrap_or(0),
                );
            if !p.is_valid() {
                return Err(format!(
                    "phase {}: the wire format refuses a p50 above the p95, a working set above a known peak, or an end past {} ms",
                    n.id,
                    u32::MAX
                ));
            }
            Ok(p)
        }
    }

    #[derive(Deserialize)]
    #[serde(expecting = "manifest fields {\"app\":..}")]
    pub struct Manifest {
        app: Option<String>,
        parallelism: Option<Parallelism>,
        memory: Option<Memory>,
        io: Option<Io>,
        placement: Option<Placement>,
        /// The declared phases; `null`s (unused slots) are skipped.
        phases: Option<Vec<Option<PhaseBegin>>>,
        /// Per-phase needs; `null`s are skipped.
        schedule: Option<Vec<Option<PhaseNeeds>>>,
    }

    /// As perfvmm's decoder reads a manifest: its phases are declarations
    /// whatever their flag says, and phases and schedule entries beyond the
    /// wire format's slots are skipped.
    impl TryFrom<Manifest> for wire::Manifest {
        type Error = String;

        fn try_from(f: Manifest) -> Result<Self, String> {
            let mut m = wire::Manifest::empty(Name::truncated(f.app.as_deref().unwrap_or("")));
            m.parallelism = f.parallelism.map(TryInto::try_into).transpose()?;
            m.memory = f.memory.map(Into::into);
            m.io = f.io.map(Into::into);
            m.placement = f.placement.map(Into::into);
            let declared = f.phases.unwrap_or_default().into_iter().flatten();
            for (slot, p) in m.phases.iter_mut().zip(declared.take(MAX_MANIFEST_PHASES)) {
                *slot = Some(p.wire(true));
            }
            let schedule = f.schedule.unwrap_or_default().into_iter().flatten();
            for (slot, n) in m
                .schedule
                .iter_mut()
                .zip(schedule.take(MAX_SCHEDULE_PHASES))
            {
                *slot = Some(n.try_into()?);
            }
            Ok(m)
        }
    }

    /// A wire enum by the name the hint log writes (any ASCII case).
    fn named<'de, D: Deserializer<'de>, T>(
        d: D,
        parse: fn(&str) -> Option<T>,
        what: &str,
    ) -> Result<Option<T>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => parse(&s)
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("unknown {what} {s:?}"))),
        }
    }

    fn io_class<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IoClass>, D::Error> {
        named(d, IoClass::parse, "I/O class")
    }

    fn locality<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Locality>, D::Error> {
        named(d, Locality::parse, "locality")
    }
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
    fn json_lines_are_read_with_serde_json() {
        // Escapes, the largest whole numbers, nulls for optional fields,
        // missing fields and keys this perfvmm does not know.
        let t = Trace::parse(&format!(
            "{}\n\
             {{\"t_ms\":0.5,\"demand\":{{\"running\":2.5,\"mem_used_kib\":18446744073709551615}}}}\n\
             \t {{\"t_ms\":1,\"hint\":{{\"seq\":4294967295,\"kind\":\"phase_begin\",\"fields\":{{\"id\":1,\"name\":\"caf\\u00e9 \\ud83d\\ude00\",\"expected_ms\":null,\"new\":[1]}}}}}}\n\
             {{\"t_ms\":2,\"hint\":{{\"seq\":5,\"kind\":\"placement\"}}}}",
            HEADER.replace("}}", "},\"source\":\"a\\nb\\\"\"}")
        ))
        .unwrap();
        assert_eq!(t.header.source, "a\nb\"");
        assert_eq!(
            t.records[0].record,
            Record::Demand(Demand {
                running: 2.5,
                mem_used_kib: u64::MAX
            })
        );
        assert_eq!(t.records[0].t, Duration::from_micros(500));
        let hint = |i: usize| match &t.records[i].record {
            Record::Hint(h) => (h.seq, h.hint),
            r => panic!("{r:?}"),
        };
        let (seq, Some(Hint::PhaseBegin(p))) = hint(1) else {
            panic!("{:?}", t.records[1])
        };
        assert_eq!((seq, p.id, p.expected_ms), (u32::MAX, 1, 0));
        assert_eq!(p.name.as_str(), "café 😀");
        assert!(!p.declared_only);
        // No fields: the wire format's zeros.
        let (_, Some(Hint::Placement(p))) = hint(2) else {
            panic!("{:?}", t.records[2])
        };
        assert!(!p.relocatable && p.locality == guest_hints::wire::Locality::Any);
        // A data set, as perfvmm's hint log writes it; an empty name is refused.
        let ds = |name: &str| {
            Trace::parse(&format!(
                "{HEADER}\n{{\"t_ms\":0,\"demand\":{{\"running\":1,\"mem_used_kib\":1}}}}\n{{\"t_ms\":0,\"hint\":{{\"seq\":1,\"kind\":\"data_set\",\"fields\":{{\"name\":\"{name}\"}}}}}}"
            ))
        };
        let t2 = ds("genome").unwrap();
        let Record::Hint(h) = &t2.records[1].record else {
            panic!("{:?}", t2.records[1])
        };
        assert_eq!(h.hint.map(|h| h.kind_name()), Some("data_set"));
        assert!(ds("").unwrap_err().to_string().contains("1 to 48 bytes"));
        // Objects written as arrays, and a column counted from the line's start.
        for (body, needle) in [
            ("[0, {}]", "line 2: expected an object, got an array"),
            ("{\"t_ms\":0,\"demand\":[1,1]}", "line 2: demand: expected an object, got an array"),
            (
                "{\"t_ms\":0,\"hint\":{\"seq\":1,\"kind\":\"memory\",\"fields\":{\"peak_bytes\":-1}}}",
                "line 2: memory hint: invalid value: integer `-1`, expected u64 at column 67",
            ),
            ("{\"t_ms\":1e999}", "line 2: not JSON: number out of range at column 13"),
        ] {
            let e = Trace::parse(&format!("{HEADER}\n{body}")).unwrap_err().to_string();
            assert!(e.contains(needle), "{body}\n=> {e}");
        }
    }

    #[test]
    fn bad_traces_name_the_line() {
        let demand = r#"{"t_ms":0,"demand":{"running":1,"mem_used_kib":1}}"#;
        for (body, needle) in [
            (format!("{demand}\n{{\"t_ms\":1,\"demand\":"), "line 3: not JSON: EOF while parsing a value at column 19"),
            (format!("{demand}\n\n{{\"t_ms\":5}}"), "line 4: a record has t_ms and exactly one"),
            (format!("{demand}\n{{\"t_ms\":-1,\"demand\":{{}}}}"), "line 3: t_ms"),
            (format!("{demand}\n{{\"t_ms\":1,\"sample\":{{}}}}"), "line 3: unknown field `sample`, expected one of `t_ms`, `hint`, `demand`, `measured` at column 18"),
            (format!("{{\"t_ms\":9,\"demand\":{{\"running\":1,\"mem_used_kib\":1}}}}\n{demand}"), "line 3: t_ms 0 is before the previous record's 9"),
            (format!("{demand}\n{{\"t_ms\":1,\"demand\":{{\"running\":\"x\",\"mem_used_kib\":1}}}}"), "line 3: demand: invalid type: string \"x\", expected f64 at column 33"),
            (format!("{demand}\n{{\"t_ms\":1,\"measured\":{{\"cpus\":1.5,\"mem_total_kib\":1}}}}"), "line 3: measured: invalid type: floating point `1.5`, expected u32 at column 32"),
            (format!("{demand}\n{{\"t_ms\":1,\"hint\":{{\"seq\":1,\"kind\":\"parallelism\",\"fields\":{{}}}}}}"), "line 3: parallelism hint: missing field `runnable_tasks` at column 58"),
            (format!("{demand}\n{{\"t_ms\":1,\"hint\":{{\"seq\":1,\"kind\":\"io\",\"fields\":{{\"class\":\"tape\"}}}}}}"), "line 3: io hint: unknown I/O class \"tape\" at column 63"),
            (format!("{demand}\n{{\"t_ms\":1,\"hint\":{{\"seq\":5000000000,\"kind\":\"io\"}}}}"), "line 3: hint: invalid value: integer `5000000000`, expected u32 at column 34"),
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
            ("not json", "line 1: not JSON: expected ident at column 2"),
        ] {
            let e = Trace::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}\n=> {e}");
        }
    }
}
