//! Traces for `perfvmm simulate` (format: `docs/simulator.md`), assembled
//! from a nested run, and the synthetic demo trace shipped in
//! `policy/traces/demo-nested.jsonl`.
//!
//! A recorded trace needs a run of `pvrun=sampled-demo` (or any scenario
//! whose guest prints `sample t_ms=.. running=.. cpus=.. mem_total_kib=..
//! mem_used_kib=..` lines and runs its programs with `PERFHINT_TRACE=1`)
//! with perfvmm's `--hint-log` fetched:
//!
//! ```ignore
//! let out = GuestRun::demo("pvrun=sampled-demo pvscale=1", &[
//!         "--cpus", "1,max=4", "--memory", "512M,max=1G",
//!         "--hint-log", "@FILES@/hints.jsonl",
//!     ])
//!     .fetch("hints.jsonl")
//!     .run();
//! let vm = VmShape { boot_vcpus: 1, max_vcpus: 4, boot_memory: 512 << 20, max_memory: 1 << 30 };
//! let rec = trace::from_run(&out, "hints.jsonl", vm, "nested: sampled-demo, default policy")?;
//! std::fs::write("demo.jsonl", rec.jsonl)?;
//! ```
//!
//! **Clocks.** The hint log counts milliseconds from perfvmm's start; the
//! guest's samples count its uptime. Every hint the guest program sends
//! is also printed on its console as `perfhint-trace seq=N kind=K`
//! (`PERFHINT_TRACE=1`), between two `sample` lines. The hint log has the
//! same `seq` with perfvmm's time `h`; the guest sent it between the two
//! samples' times `a` and `b`, so the offset between the clocks is in
//! `[h − b, h − a]` (plus the few milliseconds the hint takes to reach
//! perfvmm). The offset is the middle of the intersection of these
//! intervals over all the hints; where they do not intersect (console
//! lines a little out of order), the median of their middles. Where a
//! `perfhint-trace` line carries the guest's own time (`uptime_ms=G`), the
//! offset is the median of `h − G` instead.

use std::fmt::Write;

use serde_json::Value;

use crate::RunOutput;

/// The VM a trace was recorded on (perfvmm's `--cpus` and `--memory`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmShape {
    pub boot_vcpus: u32,
    pub max_vcpus: u32,
    /// Bytes.
    pub boot_memory: u64,
    /// Bytes.
    pub max_memory: u64,
}

/// An assembled trace and how its clocks were aligned.
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    /// The trace, JSON lines.
    pub jsonl: String,
    /// perfvmm's time minus the guest's uptime, in ms.
    pub offset_ms: f64,
    /// `uptime` (exact guest times), `bracket` (intervals intersected) or
    /// `median` (intervals that did not intersect).
    pub method: &'static str,
    /// Hints the alignment used.
    pub anchors: usize,
    pub samples: usize,
    pub hints: usize,
}

/// One `sample` line of the guest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuestSample {
    pub t_ms: f64,
    pub running: f64,
    /// Every runnable task in the guest but the sampler (0 when the line
    /// has no `procs=`).
    pub procs: f64,
    pub cpus: u32,
    pub mem_total_kib: u64,
    pub mem_used_kib: u64,
}

/// The value of `key=` among the words of `line`.
fn word<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// A guest `sample t_ms=.. running=.. [procs=..] cpus=.. mem_total_kib=.. mem_used_kib=..` line.
pub fn parse_sample(line: &str) -> Option<GuestSample> {
    let rest = &line[line.find("sample t_ms=")?..];
    Some(GuestSample {
        t_ms: word(rest, "t_ms")?,
        running: word::<f64>(rest, "running")?.max(0.0),
        procs: word::<f64>(rest, "procs").unwrap_or(0.0).max(0.0),
        cpus: word(rest, "cpus")?,
        mem_total_kib: word(rest, "mem_total_kib")?,
        mem_used_kib: word(rest, "mem_used_kib")?,
    })
}

/// What the console says, in order.
enum Event {
    Sample(GuestSample),
    /// A hint the guest sent: its seq, and its guest time when printed.
    Sent(u32, Option<f64>),
}

fn console_events(console: &str) -> Vec<Event> {
    console
        .lines()
        .filter_map(|l| {
            if let Some(s) = parse_sample(l) {
                return Some(Event::Sample(s));
            }
            let rest = &l[l.find("perfhint-trace seq=")?..];
            Some(Event::Sent(word(rest, "seq")?, word(rest, "uptime_ms")))
        })
        .collect()
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// perfvmm's time minus the guest's, from the hints both sides saw: the
/// offset, the method and the number of hints used.
fn align(
    events: &[Event],
    hint_times: &[(u32, f64)],
) -> Result<(f64, &'static str, usize), String> {
    let host = |seq: u32| hint_times.iter().find(|(s, _)| *s == seq).map(|h| h.1);
    let mut exact = Vec::new();
    let mut intervals = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let Event::Sent(seq, uptime) = e else {
            continue;
        };
        let Some(h) = host(*seq) else {
            continue;
        };
        if let Some(g) = uptime {
            exact.push(h - g);
            continue;
        }
        let sample_t = |e: &Event| match e {
            Event::Sample(s) => Some(s.t_ms),
            Event::Sent(..) => None,
        };
        let before = events[..i].iter().rev().find_map(sample_t);
        let after = events[i + 1..].iter().find_map(sample_t);
        if let (Some(a), Some(b)) = (before, after) {
            intervals.push((h - b, h - a));
        }
    }
    if let Some(m) = median(&mut exact) {
        return Ok((m, "uptime", exact.len()));
    }
    if intervals.is_empty() {
        return Err(
            "cannot align the clocks: no `perfhint-trace seq=N` console line between two \
                    samples matches a hint in the hint log (run the guest program with \
                    PERFHINT_TRACE=1)"
                .into(),
        );
    }
    let lo = intervals.iter().map(|i| i.0).fold(f64::MIN, f64::max);
    let hi = intervals.iter().map(|i| i.1).fold(f64::MAX, f64::min);
    if lo <= hi {
        return Ok(((lo + hi) / 2.0, "bracket", intervals.len()));
    }
    let mut mids: Vec<f64> = intervals.iter().map(|i| (i.0 + i.1) / 2.0).collect();
    let m = median(&mut mids).unwrap_or(0.0);
    Ok((m, "median", intervals.len()))
}

/// Milliseconds rounded to the microsecond, as JSON.
fn ms(t: f64) -> String {
    let r = (t * 1000.0).round() / 1000.0;
    if r.fract() == 0.0 {
        format!("{}", r as i64)
    } else {
        format!("{r}")
    }
}

fn header(vm: VmShape, reserved_kib: Option<u64>, source: &str, extra: &str) -> String {
    let reserved = reserved_kib
        .map(|r| format!(",\"reserved_kib\":{r}"))
        .unwrap_or_default();
    format!(
        "{{\"format\":\"perfvmm-trace\",\"version\":1,\"vm\":{{\"boot_vcpus\":{},\"max_vcpus\":{},\"boot_memory\":{},\"max_memory\":{}{reserved}}},\"source\":{}{extra}}}\n",
        vm.boot_vcpus,
        vm.max_vcpus,
        vm.boot_memory,
        vm.max_memory,
        Value::from(source)
    )
}

/// Assembles a trace from a run's console and its hint log's text.
pub fn assemble(
    console: &str,
    hint_log: &str,
    vm: VmShape,
    source: &str,
) -> Result<Recording, String> {
    let mut hints = Vec::new();
    for (n, line) in hint_log.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("hint log line {}: not JSON: {e}", n + 1))?;
        let (Some(seq), Some(kind), Some(t)) = (
            v["seq"].as_u64().and_then(|s| u32::try_from(s).ok()),
            v["kind"].as_str(),
            v["t_ms"].as_f64(),
        ) else {
            // Dropped messages and the final counters.
            continue;
        };
        let mut hint = serde_json::json!({ "seq": seq, "kind": kind, "fields": v["fields"] });
        if let Some(o) = v["outcome"].as_str() {
            hint["outcome"] = o.into();
        }
        hints.push((seq, t, hint));
    }
    let events = console_events(console);
    let samples: Vec<GuestSample> = events
        .iter()
        .filter_map(|e| match e {
            Event::Sample(s) => Some(*s),
            Event::Sent(..) => None,
        })
        .collect();
    if samples.is_empty() {
        return Err("the console has no `sample t_ms=..` lines".into());
    }
    let times: Vec<(u32, f64)> = hints.iter().map(|h| (h.0, h.1)).collect();
    let (offset, method, anchors) = align(&events, &times)?;
    // The kernel's share of memory: boot size less MemTotal, from a sample
    // taken before the first hint (before any resize).
    let first_hint = hints.iter().map(|h| h.1).fold(f64::MAX, f64::min);
    let reserved_kib = samples
        .first()
        .filter(|s| s.t_ms + offset < first_hint)
        .and_then(|s| (vm.boot_memory / 1024).checked_sub(s.mem_total_kib));
    let mut lines: Vec<(f64, String)> = hints
        .iter()
        .map(|(_, t, h)| (*t, format!("{{\"t_ms\":{},\"hint\":{h}}}", ms(*t))))
        .collect();
    for s in &samples {
        let t = s.t_ms + offset;
        if t < 0.0 {
            continue;
        }
        lines.push((
            t,
            format!(
                "{{\"t_ms\":{},\"demand\":{{\"running\":{},\"mem_used_kib\":{}}}}}",
                ms(t),
                s.running,
                s.mem_used_kib
            ),
        ));
        lines.push((
            t,
            format!(
                "{{\"t_ms\":{},\"measured\":{{\"cpus\":{},\"mem_total_kib\":{}}}}}",
                ms(t),
                s.cpus,
                s.mem_total_kib
            ),
        ));
    }
    // Stable: at one time, hints first, then each demand and its measured.
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    let extra = format!(
        ",\"alignment\":{{\"method\":\"{method}\",\"offset_ms\":{},\"anchors\":{anchors}}}",
        ms(offset)
    );
    let mut jsonl = header(vm, reserved_kib, source, &extra);
    for (_, l) in &lines {
        jsonl.push_str(l);
        jsonl.push('\n');
    }
    Ok(Recording {
        jsonl,
        offset_ms: offset,
        method,
        anchors,
        samples: samples.len(),
        hints: hints.len(),
    })
}

/// Assembles a trace from a run that fetched its `--hint-log` as `hint_log`.
pub fn from_run(
    out: &RunOutput,
    hint_log: &str,
    vm: VmShape,
    source: &str,
) -> Result<Recording, String> {
    let log = out
        .files
        .get(hint_log)
        .ok_or_else(|| format!("{hint_log} was not fetched with the run"))?;
    assemble(&out.console, log, vm, source)
}

/// A latency file for `perfvmm simulate --latency FILE` from latencies
/// measured in the same session (ms; the shrink lists may be empty).
pub fn latency_json(
    vcpus_ms: &[f64],
    memory_ms: &[f64],
    vcpus_shrink_ms: &[f64],
    memory_shrink_ms: &[f64],
) -> String {
    let mut v = serde_json::json!({ "vcpus_ms": vcpus_ms, "memory_ms": memory_ms });
    if !vcpus_shrink_ms.is_empty() {
        v["vcpus_shrink_ms"] = vcpus_shrink_ms.into();
    }
    if !memory_shrink_ms.is_empty() {
        v["memory_shrink_ms"] = memory_shrink_ms.into();
    }
    format!("{v}\n")
}

// ---------------------------------------------------------------------------
// The synthetic demo trace.

/// The VM of `resize-bench`'s default-policy run.
pub const DEMO_VM: VmShape = VmShape {
    boot_vcpus: 1,
    max_vcpus: 4,
    boot_memory: 512 << 20,
    max_memory: 1 << 30,
};

/// Memory the guest's kernel keeps out of `MemTotal` (KiB): `resize-bench`'s
/// static 704 MiB VM shows a mean `MemTotal` of 657 MiB (docs/benchmarks.md).
pub const DEMO_RESERVED_KIB: u64 = 47 << 10;

/// The `source` of the shipped synthetic trace.
pub const DEMO_SOURCE: &str = "synthetic: demo workload phases, see docs/simulator.md";

/// A small xorshift, for the synthetic trace's helper noise.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The shipped trace (`policy/traces/demo-nested.jsonl`), synthesised from
/// what `images/demo-workload` does at `--scale 1` under `pvrun=sampled-demo`
/// in the nested harness, on perfvmm's clock:
///
/// * samples every 100 ms from 7.0 s (the guest reaches `/init` about 6.3 s
///   after perfvmm starts) until the sampler is killed at 19.8 s;
/// * the manifest at 7.15 s; phases serial 7.2–9.7 s (1 task), parallel
///   9.71–11.72 s (4 threads), memory 11.73–13.24 s (256 MiB touched over
///   the first second, peak hint 512 MiB), I/O 13.25–13.65 s (16 MiB
///   written to and read back from tmpfs), then the idle parallelism hint
///   and 6 s asleep;
/// * the guest's own memory in use is 80 MiB, and in 15 % of the samples
///   (a fixed pseudo-random choice) one helper process (the shell, the
///   50 ms CPU onliner) is runnable besides the workload.
pub fn synthetic_demo() -> String {
    const KIB_PER_MIB: u64 = 1024;
    let manifest_t = 7_150.0;
    let phases: [(u32, &str, u32, f64, f64); 4] = [
        (1, "serial", 2_500, 7_200.0, 9_700.0),
        (2, "parallel", 2_000, 9_710.0, 11_720.0),
        (3, "memory", 1_500, 11_730.0, 13_240.0),
        (4, "io", 500, 13_250.0, 13_650.0),
    ];
    let idle_t = 13_660.0;
    let (first_sample, last_sample) = (7_000u32, 19_800u32);

    // As the hint log writes a manifest: its phases and schedule list the
    // slots in use only (the demo has no schedule).
    let declared: Vec<String> = phases
        .iter()
        .map(|(id, name, ms, ..)| {
            format!(
                "{{\"id\":{id},\"expected_ms\":{ms},\"name\":\"{name}\",\"declared_only\":true}}"
            )
        })
        .collect();
    let parallelism = |n: u32, ppm: u32| {
        format!("{{\"runnable_tasks\":{n},\"max_useful\":{n},\"serial_ppm\":{ppm}}}")
    };
    let memory = |ws: u64, peak: u64| {
        format!("{{\"working_set_bytes\":{ws},\"peak_bytes\":{peak},\"growth_bytes_per_sec\":0}}")
    };
    let io = |rate: u64| format!("{{\"class\":\"sequential\",\"bytes_per_sec\":{rate}}}");
    let manifest = format!(
        "{{\"app\":\"demo-workload\",\"parallelism\":{},\"memory\":{},\"io\":{},\"placement\":{{\"relocatable\":true,\"monolithic\":false,\"locality\":\"shared_cache\"}},\"phases\":[{}],\"schedule\":[]}}",
        parallelism(4, 200_000),
        memory(64 << 20, 96 << 20),
        io(32 << 20),
        declared.join(",")
    );
    let mut hints: Vec<(f64, &str, String)> = vec![(manifest_t, "manifest", manifest)];
    for (id, name, ms, begin, end) in phases {
        hints.push((
            begin,
            "phase_begin",
            format!(
                "{{\"id\":{id},\"expected_ms\":{ms},\"name\":\"{name}\",\"declared_only\":false}}"
            ),
        ));
        match name {
            "serial" => hints.push((begin, "parallelism", parallelism(1, 0))),
            "parallel" => hints.push((begin, "parallelism", parallelism(4, 0))),
            "memory" => hints.push((begin, "memory", memory(256 << 20, 512 << 20))),
            _ => hints.push((begin, "io", io(16 << 20))),
        }
        hints.push((end, "phase_end", format!("{{\"id\":{id}}}")));
    }
    hints.push((idle_t, "parallelism", parallelism(1, 0)));

    let mut noise = Noise(0x5eed_1234_abcd_0001);
    let mut lines: Vec<(f64, String)> = hints
        .iter()
        .enumerate()
        .map(|(seq, (t, kind, fields))| {
            (
                *t,
                format!(
                    "{{\"t_ms\":{},\"hint\":{{\"seq\":{seq},\"kind\":\"{kind}\",\"fields\":{fields}}}}}",
                    ms(*t)
                ),
            )
        })
        .collect();
    for t in (first_sample..=last_sample).step_by(100) {
        let t = f64::from(t);
        let phase = phases.iter().find(|p| (p.3..p.4).contains(&t));
        let tasks = match phase {
            Some((_, "parallel", ..)) => 4,
            Some(_) => 1,
            None if (manifest_t..phases[0].3).contains(&t) => 1,
            None => 0,
        };
        let helper = u32::from(noise.next() % 100 < 15);
        let base = 80 * KIB_PER_MIB + noise.next() % 1024;
        let extra = match phase {
            Some((_, "memory", _, begin, _)) => {
                let touched = ((t - begin) / 1_000.0).clamp(0.0, 1.0);
                (256.0 * KIB_PER_MIB as f64 * touched) as u64
            }
            Some((_, "io", ..)) => 32 * KIB_PER_MIB,
            _ => 0,
        };
        lines.push((
            t,
            format!(
                "{{\"t_ms\":{},\"demand\":{{\"running\":{},\"mem_used_kib\":{}}}}}",
                ms(t),
                tasks + helper,
                base + extra
            ),
        ));
    }
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = header(DEMO_VM, Some(DEMO_RESERVED_KIB), DEMO_SOURCE, "");
    for (_, l) in lines {
        let _ = writeln!(out, "{l}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = "policy/traces/demo-nested.jsonl";

    /// The shipped trace is what [`synthetic_demo`] writes; regenerate it with
    /// `PERFVMM_WRITE_TRACE=1 cargo test -p perfvmm-tests --lib trace`.
    #[test]
    fn the_shipped_trace_is_the_synthetic_demo() {
        let path = crate::workspace().root.join(SHIPPED);
        let want = synthetic_demo();
        if std::env::var_os("PERFVMM_WRITE_TRACE").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap();
        assert!(
            have == want,
            "{SHIPPED} is stale: regenerate it (see this test's doc)"
        );
        assert!(want.len() < 200_000);
        for (i, l) in want.lines().enumerate() {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
            assert!(i == 0 || v["t_ms"].is_number(), "line {}", i + 1);
        }
        assert!(want.starts_with("{\"format\":\"perfvmm-trace\",\"version\":1,"));
    }

    #[test]
    fn the_synthetic_demo_follows_the_phases() {
        let text = synthetic_demo();
        let recs: Vec<Value> = text
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kinds: Vec<&str> = recs
            .iter()
            .filter_map(|r| r["hint"]["kind"].as_str())
            .collect();
        assert_eq!(kinds.len(), 14);
        assert_eq!(kinds[0], "manifest");
        // The hint log's shape: the slots in use, no nulls.
        let manifest = &recs.iter().find(|r| r.get("hint").is_some()).unwrap()["hint"]["fields"];
        assert_eq!(manifest["phases"].as_array().map(Vec::len), Some(4));
        assert_eq!(manifest["schedule"], serde_json::json!([]));
        let demand = |t: f64| {
            recs.iter()
                .find(|r| r["t_ms"].as_f64() == Some(t) && r.get("demand").is_some())
                .map(|r| r["demand"].clone())
                .unwrap()
        };
        // Parallel phase: 4 tasks (a helper may add one); idle: none.
        let r = demand(10_500.0)["running"].as_u64().unwrap();
        assert!((4..=5).contains(&r), "{r}");
        assert!(demand(18_000.0)["running"].as_u64().unwrap() <= 1);
        // The memory phase's working set is touched by its end.
        let used = demand(13_000.0)["mem_used_kib"].as_u64().unwrap();
        assert!(used > 330 << 10, "{used}");
        let times: Vec<f64> = recs.iter().map(|r| r["t_ms"].as_f64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "time-ordered");
    }

    fn sample(t: f64, running: u32, cpus: u32) -> String {
        format!(
            "sample t_ms={t} running={running} cpus={cpus} mem_total_kib=475000 mem_used_kib=80000"
        )
    }

    fn hint_line(t: f64, seq: u32, kind: &str) -> String {
        format!("{{\"t_ms\":{t},\"seq\":{seq},\"kind\":\"{kind}\",\"fields\":{{\"id\":1}},\"outcome\":\"accepted\"}}")
    }

    /// A console and hint log from a run whose host clock is `offset` ahead
    /// of the guest's; hints sent at the given guest times.
    fn run(offset: f64, sent: &[(u32, f64)], uptime: bool) -> (String, String) {
        let mut console = vec!["perfvmm-guest: init reached".to_string()];
        let mut log = Vec::new();
        let mut pending: Vec<(u32, f64)> = sent.to_vec();
        for i in 0..40 {
            let t = 5_000.0 + f64::from(i) * 100.0;
            while let Some(&(seq, g)) = pending.first() {
                if g >= t {
                    break;
                }
                let extra = if uptime {
                    format!(" uptime_ms={g}")
                } else {
                    String::new()
                };
                console.push(format!("perfhint-trace seq={seq} kind=phase_end{extra}"));
                log.push(hint_line(g + offset + 2.0, seq, "phase_end"));
                pending.remove(0);
            }
            console.push(sample(t, 1, 1));
        }
        log.push("{\"t_ms\":99999,\"counters\":{}}".into());
        (console.join("\n"), log.join("\n"))
    }

    #[test]
    fn clocks_are_aligned_on_the_hints_both_sides_saw() {
        let sent = [
            (0, 5_130.0),
            (1, 5_455.0),
            (2, 5_790.0),
            (3, 6_301.0),
            (4, 7_099.0),
        ];
        let (console, log) = run(2_345.0, &sent, false);
        let rec = assemble(&console, &log, DEMO_VM, "test").unwrap();
        assert_eq!(
            (rec.method, rec.anchors, rec.hints, rec.samples),
            ("bracket", 5, 5, 40)
        );
        // Each hint narrows the offset to within its samples' 100 ms.
        assert!((rec.offset_ms - 2_345.0).abs() < 50.0, "{}", rec.offset_ms);
        let (console, log) = run(2_345.0, &sent, true);
        let rec = assemble(&console, &log, DEMO_VM, "test").unwrap();
        assert_eq!(rec.method, "uptime");
        assert!((rec.offset_ms - 2_347.0).abs() < 1e-6, "{}", rec.offset_ms);
        // Records are on perfvmm's clock, in order; each demand has its measured.
        let lines: Vec<Value> = rec
            .jsonl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["vm"]["reserved_kib"], (512 << 10) - 475_000);
        assert_eq!(lines[0]["alignment"]["method"], "uptime");
        let first = lines.iter().find(|l| l.get("demand").is_some()).unwrap();
        assert_eq!(first["t_ms"].as_f64(), Some(5_000.0 + 2_347.0));
        assert_eq!(
            lines.iter().filter(|l| l.get("measured").is_some()).count(),
            40
        );
        assert_eq!(lines.iter().filter(|l| l.get("hint").is_some()).count(), 5);
        let t: Vec<f64> = lines[1..]
            .iter()
            .map(|l| l["t_ms"].as_f64().unwrap())
            .collect();
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn alignment_needs_matching_hints_and_samples() {
        let (console, _) = run(0.0, &[(0, 5_130.0)], false);
        let e = assemble(&console, "", DEMO_VM, "t").unwrap_err();
        assert!(e.contains("cannot align"), "{e}");
        let e = assemble("no samples here", &hint_line(1.0, 0, "x"), DEMO_VM, "t").unwrap_err();
        assert!(e.contains("sample"), "{e}");
        let e = assemble(&console, "{not json", DEMO_VM, "t").unwrap_err();
        assert!(e.contains("hint log line 1"), "{e}");
    }

    #[test]
    fn latency_files() {
        let f: Value =
            serde_json::from_str(&latency_json(&[310.0, 740.0], &[150.0], &[], &[2500.0])).unwrap();
        assert_eq!(f["vcpus_ms"][1], 740.0);
        assert_eq!(f["memory_shrink_ms"][0], 2500.0);
        assert!(f.get("vcpus_shrink_ms").is_none());
    }

    #[test]
    fn sample_lines_parse_with_prefixes() {
        let s = parse_sample(
            "[ 12.3] sample t_ms=9000 running=-1 cpus=2 mem_total_kib=10 mem_used_kib=5",
        )
        .unwrap();
        assert_eq!(
            (s.t_ms, s.running, s.cpus, s.mem_total_kib, s.mem_used_kib),
            (9_000.0, 0.0, 2, 10, 5)
        );
        assert!(parse_sample("sample t_ms=9000 running=1").is_none());
    }
}
