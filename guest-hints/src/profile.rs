#![forbid(unsafe_code)]
//! Profiles that `perfhint profile` writes, and the manifest derived from
//! one: what `perfhint embed` writes into a binary and what
//! [`crate::build`] writes for a `build.rs`. Feature `build`.
//!
//! A profile is JSON (see `docs/derived-hints.md`):
//!
//! ```json
//! {
//!   "format": "perfhint-profile", "version": 1,
//!   "command": ["./solver", "input.dat"], "binary": "/home/me/solver",
//!   "build_id": "8d1f0c3e…", "wall_ms": 1830, "interval_ms": 10, "runs": 1,
//!   "cpu_time_source": "schedstat", "working_set_source": "referenced",
//!   "io_source": "storage", "notes": [],
//!   "phases": [
//!     { "id": 1, "name": "load", "source": "explicit", "start_ms": 0,
//!       "duration_ms": 610, "parallelism_p50": 1.0, "parallelism_p95": 1.02,
//!       "max_useful": 1, "working_set_bytes": 52428800, "peak_bytes": 67108864,
//!       "io_bytes_per_sec": 0, "io_class": "none", "samples": 61 }
//!   ]
//! }
//! ```

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::wire::{
    Io, IoClass, Manifest, Memory, Name, Parallelism, PhaseBegin, PhaseNeeds, MAX_MANIFEST_PHASES,
    MAX_SCHEDULE_PHASES, PPM,
};

/// The `format` of every profile.
pub const FORMAT: &str = "perfhint-profile";
/// The newest profile `version` this crate reads, and the one it writes.
pub const VERSION: u32 = 1;

/// A phase whose effective parallelism (median) is at most this counts as
/// serial work when a manifest's serial fraction is derived.
const SERIAL_PARALLELISM: f64 = 1.25;

/// One profiled (or merged) run of a program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written by this crate.
    pub version: u32,
    /// The command that was run, program first.
    pub command: Vec<String>,
    /// The program's file, as resolved when it ran (null: not found).
    pub binary: Option<String>,
    /// The program's GNU build-id in lower-case hex (null: none, or not ELF).
    pub build_id: Option<String>,
    /// Wall time of the whole run, in milliseconds.
    pub wall_ms: u64,
    /// Milliseconds between samples.
    pub interval_ms: u32,
    /// Runs this profile stands for (more than 1 once merged).
    pub runs: u32,
    /// How CPU time was measured: `schedstat` (nanoseconds) or `ticks`.
    pub cpu_time_source: String,
    /// How the working set was measured: `referenced` (pages referenced
    /// in each window, through clear_refs) or `rss` (the fallback).
    pub working_set_source: String,
    /// Which I/O counters were used: `storage` (read_bytes + write_bytes)
    /// or `chars` (rchar + wchar, when the storage counters stayed 0).
    pub io_source: String,
    /// CPUs online when the run started (0: not recorded, in profiles
    /// written before this field). `perfvmm predict` scales from it.
    #[serde(default)]
    pub cpus: u32,
    /// Anything the reader should know about how figures were obtained.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The phases, in order of start, not overlapping.
    pub phases: Vec<ProfilePhase>,
}

/// One phase of a profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfilePhase {
    /// 1, 2, … in order of start.
    pub id: u32,
    /// The program's name for it, if it named it.
    pub name: Option<String>,
    /// How it was found: `explicit` (the program's phase hints), `openmp`
    /// (parallel regions), `detected` (a change in parallelism, memory or
    /// I/O), or `unmarked` (time outside all of those).
    pub source: String,
    /// Start, in milliseconds from the program's start.
    pub start_ms: u64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Median effective parallelism (CPU time / wall time per sample).
    pub parallelism_p50: f64,
    /// 95th percentile of the effective parallelism.
    pub parallelism_p95: f64,
    /// The most threads running or runnable at once that the phase
    /// sustains (seen in at least 5 % of its samples and in two).
    pub max_useful: u32,
    /// Memory touched repeatedly, in bytes.
    pub working_set_bytes: u64,
    /// The largest resident set, in bytes.
    pub peak_bytes: u64,
    /// I/O rate, bytes per second.
    pub io_bytes_per_sec: u64,
    /// `none`, `light`, `sequential` or `random`.
    pub io_class: String,
    /// Samples that fell in the phase.
    pub samples: u64,
    /// CPU time the program's threads used in the phase, milliseconds
    /// (absent in older profiles: then parallelism p50 × duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
    /// CPU time the profiler itself used in the phase, milliseconds, when
    /// it ran on the program's CPUs: time the program could not have, and
    /// work that grows with the program's (it samples what the program
    /// runs). A model counts it with `cpu_ms` as the run's demand. Absent
    /// when the profiler ran on CPUs of its own, and in older profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiler_cpu_ms: Option<f64>,
    /// Where that CPU time went, by function, most first (empty: not
    /// sampled; see `perfhint profile --functions`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionTime>,
    /// With merged profiles: the smallest and largest value of each figure
    /// over the runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
}

/// CPU time of one function in a phase, from clock sampling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionTime {
    /// The symbol (`[kernel]` for time in the kernel, `[unknown]` for an
    /// address no symbol covers), with its object file after a `@` when it
    /// is not the program's.
    pub name: String,
    /// Its share of the phase's CPU samples, 0 to 1.
    pub share: f64,
    /// Its share of the samples taken while only one of the program's
    /// threads ran: its part of the phase's serial (critical) path, 0 to 1.
    pub serial_share: f64,
}

/// The smallest and largest value a figure took over several runs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinMax {
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

/// The spread of each figure of a merged phase.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Of `start_ms`.
    pub start_ms: MinMax,
    /// Of `duration_ms`.
    pub duration_ms: MinMax,
    /// Of `parallelism_p50`.
    pub parallelism_p50: MinMax,
    /// Of `parallelism_p95`.
    pub parallelism_p95: MinMax,
    /// Of `max_useful`.
    pub max_useful: MinMax,
    /// Of `working_set_bytes`.
    pub working_set_bytes: MinMax,
    /// Of `peak_bytes`.
    pub peak_bytes: MinMax,
    /// Of `io_bytes_per_sec`.
    pub io_bytes_per_sec: MinMax,
}

/// Why a profile could not be used; its `Display` is one line.
#[derive(Debug)]
pub enum ProfileError {
    /// The file could not be read (or written).
    Io(String, std::io::Error),
    /// Not JSON, or cut short.
    Json(String),
    /// JSON, but not a perfhint profile.
    NotAProfile(String),
    /// A profile of a version this crate does not read.
    NewerVersion(u64),
    /// A field out of its range.
    Invalid(String),
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::Io(path, e) => write!(f, "{path}: {e}"),
            ProfileError::Json(e) => write!(f, "not a valid profile (truncated or not JSON: {e})"),
            ProfileError::NotAProfile(why) => write!(f, "not a perfhint profile ({why})"),
            ProfileError::NewerVersion(v) => write!(
                f,
                "profile version {v} is newer than this perfhint reads (up to {VERSION}); \
                 use a newer perfhint"
            ),
            ProfileError::Invalid(why) => write!(f, "invalid profile: {why}"),
        }
    }
}

impl std::error::Error for ProfileError {}

impl Profile {
    /// Parses and checks a profile: JSON, `format`, `version` (newer than
    /// [`VERSION`] is refused), then every field.
    pub fn from_json(text: &str) -> Result<Profile, ProfileError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ProfileError::Json(e.to_string()))?;
        match v.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(ProfileError::NotAProfile(format!(
                    "format is \"{other}\", not \"{FORMAT}\""
                )))
            }
            None => {
                return Err(ProfileError::NotAProfile(format!(
                    "no \"format\": \"{FORMAT}\""
                )))
            }
        }
        match v.get("version").and_then(|f| f.as_u64()) {
            Some(n) if n > u64::from(VERSION) => return Err(ProfileError::NewerVersion(n)),
            Some(n) if n >= 1 => {}
            _ => {
                return Err(ProfileError::NotAProfile(
                    "no valid \"version\"".to_string(),
                ))
            }
        }
        let p: Profile =
            serde_json::from_value(v).map_err(|e| ProfileError::Invalid(e.to_string()))?;
        p.check()?;
        Ok(p)
    }

    /// Reads and checks the profile at `path`.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProfileError::Io(path.display().to_string(), e))?;
        Profile::from_json(&text)
    }

    /// The profile as pretty JSON, with a final newline.
    pub fn to_json(&self) -> String {
        // Serializing plain data with finite numbers cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Checks what the types do not: order, ranges and names.
    pub fn check(&self) -> Result<(), ProfileError> {
        let bad = |why: String| Err(ProfileError::Invalid(why));
        if self.command.is_empty() {
            return bad("\"command\" is empty".into());
        }
        if self.runs == 0 {
            return bad("\"runs\" is 0".into());
        }
        if let Some(id) = &self.build_id {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!("build_id \"{id}\" is not hex"));
            }
        }
        let mut end = 0;
        for p in &self.phases {
            let at = format!("phase {}", p.id);
            if p.start_ms < end {
                return bad(format!("{at} starts before the previous one ends"));
            }
            end = p.start_ms.saturating_add(p.duration_ms);
            if !(p.parallelism_p50 >= 0.0 && p.parallelism_p50 <= p.parallelism_p95) {
                return bad(format!(
                    "{at}: parallelism p50 {} is not between 0 and p95 {}",
                    p.parallelism_p50, p.parallelism_p95
                ));
            }
            if !p.parallelism_p95.is_finite() {
                return bad(format!("{at}: parallelism p95 is not finite"));
            }
            if p.cpu_ms.is_some_and(|c| !(c.is_finite() && c >= 0.0)) {
                return bad(format!("{at}: cpu_ms is not a finite, positive number"));
            }
            if p.profiler_cpu_ms
                .is_some_and(|c| !(c.is_finite() && c >= 0.0))
            {
                return bad(format!(
                    "{at}: profiler_cpu_ms is not a finite, positive number"
                ));
            }
            let share = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
            if let Some(f) = p
                .functions
                .iter()
                .find(|f| !share(f.share) || !share(f.serial_share))
            {
                return bad(format!("{at}: function {}: a share outside 0..1", f.name));
            }
            if IoClass::parse(&p.io_class).is_none() {
                return bad(format!("{at}: unknown io_class \"{}\"", p.io_class));
            }
        }
        Ok(())
    }
}

/// `x` × 1000 as a u32, saturating (negative and NaN: 0).
fn milli(x: f64) -> u32 {
    (x * 1000.0).round() as u32
}

fn sat_u32(x: u64) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// The phase as a schedule entry with id `id`.
pub fn phase_needs(p: &ProfilePhase, id: u32) -> PhaseNeeds {
    PhaseNeeds::new(id, sat_u32(p.start_ms), sat_u32(p.duration_ms))
        .parallelism_milli(
            milli(p.parallelism_p50),
            milli(p.parallelism_p95),
            p.max_useful,
        )
        .memory(p.working_set_bytes, p.peak_bytes)
        .io(
            IoClass::parse(&p.io_class).unwrap_or(IoClass::None),
            p.io_bytes_per_sec,
        )
        .normalized()
}

/// Merges phases into at most `max` by joining, again and again, the
/// shortest phase with its shorter neighbour. A joined phase spans both;
/// its median parallelism is the duration-weighted mean, its p95, useful
/// maximum, working set and peak the larger, its I/O rate the
/// duration-weighted mean and its I/O class that of the phase that moved
/// more bytes; it keeps the name of the longer one.
pub fn merge_shortest(phases: &[ProfilePhase], max: usize) -> Vec<ProfilePhase> {
    let mut v: Vec<ProfilePhase> = phases.to_vec();
    let max = max.max(1);
    while v.len() > max {
        // The shortest phase (the first of equals).
        let mut i = 0;
        for (k, p) in v.iter().enumerate() {
            if p.duration_ms < v[i].duration_ms {
                i = k;
            }
        }
        let j = if i == 0 {
            1
        } else if i + 1 == v.len() || v[i - 1].duration_ms <= v[i + 1].duration_ms {
            i - 1
        } else {
            i + 1
        };
        let (a, b) = (i.min(j), i.max(j));
        let joined = join(&v[a], &v[b]);
        v[a] = joined;
        v.remove(b);
    }
    for (k, p) in v.iter_mut().enumerate() {
        p.id = k as u32 + 1;
    }
    v
}

/// `a` and the phase `b` that follows it, as one phase.
fn join(a: &ProfilePhase, b: &ProfilePhase) -> ProfilePhase {
    let (da, db) = (a.duration_ms as f64, b.duration_ms as f64);
    let total = da + db;
    let wmean = |x: f64, y: f64| {
        if total > 0.0 {
            (x * da + y * db) / total
        } else {
            (x + y) / 2.0
        }
    };
    let end = (b.start_ms + b.duration_ms).max(a.start_ms + a.duration_ms);
    let longer = if db > da { b } else { a };
    let more_io = if b.io_bytes_per_sec as f64 * db > a.io_bytes_per_sec as f64 * da {
        b
    } else {
        a
    };
    let p50 = wmean(a.parallelism_p50, b.parallelism_p50);
    ProfilePhase {
        id: a.id,
        name: longer.name.clone(),
        source: longer.source.clone(),
        start_ms: a.start_ms,
        duration_ms: end - a.start_ms,
        parallelism_p50: p50,
        parallelism_p95: a.parallelism_p95.max(b.parallelism_p95).max(p50),
        max_useful: a.max_useful.max(b.max_useful),
        working_set_bytes: a.working_set_bytes.max(b.working_set_bytes),
        peak_bytes: a.peak_bytes.max(b.peak_bytes),
        io_bytes_per_sec: wmean(a.io_bytes_per_sec as f64, b.io_bytes_per_sec as f64) as u64,
        io_class: more_io.io_class.clone(),
        samples: a.samples + b.samples,
        cpu_ms: match (a.cpu_ms, b.cpu_ms) {
            (Some(x), Some(y)) => Some(x + y),
            _ => None,
        },
        profiler_cpu_ms: match (a.profiler_cpu_ms, b.profiler_cpu_ms) {
            (Some(x), Some(y)) => Some(x + y),
            _ => None,
        },
        functions: join_functions(a, b),
        spread: None,
    }
}

/// The function shares of two phases joined into one, weighted by their
/// CPU time.
fn join_functions(a: &ProfilePhase, b: &ProfilePhase) -> Vec<FunctionTime> {
    let cpu = |p: &ProfilePhase| p.cpu_ms.unwrap_or(0.0);
    let total = cpu(a) + cpu(b);
    if total <= 0.0 {
        return Vec::new();
    }
    weighted_functions([a, b].map(|p| (p.functions.as_slice(), cpu(p) / total)))
}

/// Several lists of function shares as one: each function's shares
/// summed over the lists, each list's multiplied by its weight; most
/// first. (Weights summing to 1 give a weighted mean.)
pub fn weighted_functions<'a>(
    parts: impl IntoIterator<Item = (&'a [FunctionTime], f64)>,
) -> Vec<FunctionTime> {
    let mut out: Vec<FunctionTime> = Vec::new();
    for (functions, w) in parts {
        for f in functions {
            match out.iter_mut().find(|o| o.name == f.name) {
                Some(o) => {
                    o.share += f.share * w;
                    o.serial_share += f.serial_share * w;
                }
                None => out.push(FunctionTime {
                    name: f.name.clone(),
                    share: f.share * w,
                    serial_share: f.serial_share * w,
                }),
            }
        }
    }
    out.sort_by(|x, y| y.share.total_cmp(&x.share));
    out
}

/// The manifest derived from a profile for the application `app`
/// (truncated to the wire's name limit):
///
/// * parallelism: the largest p95 over the phases, rounded up (at least 1),
///   as the runnable tasks; the largest useful maximum; as the serial
///   fraction, the share of the work (duration × median parallelism) done
///   in phases whose median parallelism is at most 1.25;
/// * memory: the largest working set and the largest peak;
/// * I/O: the class and rate of the phase with the highest rate, if any
///   phase does I/O;
/// * schedule: the phases, at most [`MAX_SCHEDULE_PHASES`] (joining the
///   shortest neighbours, see [`merge_shortest`]), numbered 1, 2, …;
/// * phases: the named ones among those, declared with the same ids and
///   their durations as expected durations (at most
///   [`MAX_MANIFEST_PHASES`]).
pub fn derive_manifest(profile: &Profile, app: &str) -> Manifest {
    let mut m = Manifest::empty(Name::truncated(app));
    let phases = merge_shortest(&profile.phases, MAX_SCHEDULE_PHASES);
    if phases.is_empty() {
        return m;
    }
    let max_p95 = phases
        .iter()
        .map(|p| p.parallelism_p95)
        .fold(0.0f64, f64::max);
    let work: f64 = phases
        .iter()
        .map(|p| p.duration_ms as f64 * p.parallelism_p50)
        .sum();
    let serial: f64 = phases
        .iter()
        .filter(|p| p.parallelism_p50 <= SERIAL_PARALLELISM)
        .map(|p| p.duration_ms as f64 * p.parallelism_p50)
        .sum();
    let serial_ppm = if work > 0.0 {
        ((serial / work) * f64::from(PPM)).round() as u32
    } else {
        0
    };
    m.parallelism = Some(Parallelism {
        runnable_tasks: (max_p95.ceil() as u32).max(1),
        max_useful: phases.iter().map(|p| p.max_useful).max().unwrap_or(0),
        serial_ppm: serial_ppm.min(PPM),
    });
    let working_set = phases
        .iter()
        .map(|p| p.working_set_bytes)
        .max()
        .unwrap_or(0);
    let peak = phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0);
    m.memory = Some(Memory {
        working_set_bytes: working_set,
        peak_bytes: peak.max(working_set),
        growth_bytes_per_sec: 0,
    });
    if let Some(busiest) = phases.iter().max_by_key(|p| p.io_bytes_per_sec) {
        let class = IoClass::parse(&busiest.io_class).unwrap_or(IoClass::None);
        if class != IoClass::None {
            m.io = Some(Io {
                class,
                bytes_per_sec: busiest.io_bytes_per_sec,
            });
        }
    }
    let mut declared = 0;
    for (i, p) in phases.iter().enumerate() {
        m.schedule[i] = Some(phase_needs(p, p.id));
        if let Some(name) = &p.name {
            if declared < MAX_MANIFEST_PHASES {
                m.phases[declared] = Some(PhaseBegin {
                    id: p.id,
                    expected_ms: sat_u32(p.duration_ms),
                    name: Name::truncated(name),
                    declared_only: true,
                });
                declared += 1;
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn phase(id: u32, start: u64, dur: u64, p50: f64) -> ProfilePhase {
        ProfilePhase {
            id,
            name: Some(format!("p{id}")),
            source: "explicit".into(),
            start_ms: start,
            duration_ms: dur,
            parallelism_p50: p50,
            parallelism_p95: p50 + 0.5,
            max_useful: p50.ceil() as u32,
            working_set_bytes: 100 * u64::from(id),
            peak_bytes: 200 * u64::from(id),
            io_bytes_per_sec: 0,
            io_class: "none".into(),
            samples: dur / 10,
            cpu_ms: None,
            profiler_cpu_ms: None,
            functions: Vec::new(),
            spread: None,
        }
    }

    fn profile(phases: Vec<ProfilePhase>) -> Profile {
        Profile {
            format: FORMAT.into(),
            version: VERSION,
            command: vec!["x".into()],
            binary: None,
            build_id: Some("abcd".into()),
            wall_ms: phases
                .last()
                .map(|p| p.start_ms + p.duration_ms)
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
    fn round_trips_and_checks() {
        let p = profile(vec![phase(1, 0, 100, 1.0), phase(2, 100, 300, 3.0)]);
        assert_eq!(Profile::from_json(&p.to_json()).unwrap(), p);
        let json = p.to_json();
        let cut = &json[..json.len() / 2];
        assert!(matches!(
            Profile::from_json(cut),
            Err(ProfileError::Json(_))
        ));
        let newer = json.replace("\"version\": 1", "\"version\": 7");
        let e = Profile::from_json(&newer).unwrap_err();
        assert_eq!(
            e.to_string(),
            "profile version 7 is newer than this perfhint reads (up to 1); use a newer perfhint"
        );
        let other = json.replace("perfhint-profile", "something-else");
        assert!(matches!(
            Profile::from_json(&other),
            Err(ProfileError::NotAProfile(_))
        ));
        assert!(matches!(
            Profile::from_json("[1, 2]"),
            Err(ProfileError::NotAProfile(_))
        ));
        let mut bad = p.clone();
        bad.phases[1].start_ms = 50;
        assert!(matches!(
            Profile::from_json(&bad.to_json()),
            Err(ProfileError::Invalid(_))
        ));
        let mut bad = p.clone();
        bad.phases[0].parallelism_p95 = 0.5;
        assert!(Profile::from_json(&bad.to_json()).is_err());
        let mut bad = p;
        bad.phases[0].io_class = "loud".into();
        assert!(Profile::from_json(&bad.to_json()).is_err());
    }

    #[test]
    fn merging_joins_the_shortest_neighbours() {
        let phases: Vec<_> = (0..5)
            .map(|i| {
                phase(
                    i + 1,
                    u64::from(i) * 100,
                    [100, 10, 100, 50, 100][i as usize],
                    1.0,
                )
            })
            .collect();
        // Fix up starts so phases are contiguous.
        let mut start = 0;
        let phases: Vec<_> = phases
            .into_iter()
            .map(|mut p| {
                p.start_ms = start;
                start += p.duration_ms;
                p
            })
            .collect();
        let merged = merge_shortest(&phases, 3);
        assert_eq!(merged.len(), 3);
        // The 10 ms phase joined its shorter neighbour (of two equal ones,
        // the earlier), then the 50 ms one did.
        let spans: Vec<_> = merged.iter().map(|p| (p.start_ms, p.duration_ms)).collect();
        assert_eq!(spans, [(0, 110), (110, 150), (260, 100)]);
        assert_eq!(merged.iter().map(|p| p.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(merged[0].working_set_bytes, 200);
        assert_eq!(merge_shortest(&phases, 16), {
            let mut v = phases.clone();
            for (k, p) in v.iter_mut().enumerate() {
                p.id = k as u32 + 1;
            }
            v
        });
    }

    #[test]
    fn derived_manifest() {
        let p = profile(vec![phase(1, 0, 1000, 1.0), phase(2, 1000, 1000, 3.0)]);
        let m = derive_manifest(
            &p,
            "a-very-long-application-name-that-does-not-fit-in-48-bytes",
        );
        assert_eq!(m.app.as_str().len(), 48);
        let par = m.parallelism.unwrap();
        assert_eq!(par.runnable_tasks, 4); // ceil(3.5)
        assert_eq!(par.max_useful, 3);
        assert_eq!(par.serial_ppm, 250_000); // 1000 of 4000 thread-ms
        assert_eq!(m.memory.unwrap().working_set_bytes, 200);
        assert_eq!(m.memory.unwrap().peak_bytes, 400);
        assert_eq!(m.io, None);
        let s: Vec<_> = m.schedule.iter().flatten().copied().collect();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1],
            PhaseNeeds::new(2, 1000, 1000)
                .parallelism_milli(3000, 3500, 3)
                .memory(200, 400)
        );
        assert_eq!(m.phases[1].unwrap().name.as_str(), "p2");
        assert_eq!(m.phases[1].unwrap().id, 2);
        // 20 phases become 16.
        let many: Vec<_> = (0..20)
            .map(|i| phase(i + 1, u64::from(i) * 10, 10, 1.0))
            .collect();
        let m = derive_manifest(&profile(many), "x");
        assert_eq!(m.schedule.iter().flatten().count(), MAX_SCHEDULE_PHASES);
        assert_eq!(m.phases.iter().flatten().count(), MAX_MANIFEST_PHASES);
    }
}
