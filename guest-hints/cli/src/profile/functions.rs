//! Where a program's CPU time goes, by function: each thread of the tree
//! gets a software CPU-clock sampling event (`perf_event_open` through the
//! `perf-event2` crate; no hardware counters needed), the samples' addresses
//! are mapped through the processes' `/proc/PID/maps` (as they were when
//! each sample was taken: a process that `exec`s changes them) to ELF
//! symbols after the run, and each phase gets the share of its samples per
//! function — overall, and while only one thread ran (its serial path).

use std::collections::HashMap;
use std::path::Path;

use guest_hints::profile::FunctionTime;
use guest_hints::trace::monotonic_ns;
use perf_event::events::Software;
use perf_event::{Builder, Clock, SampleFlag, Sampler};

/// Nanoseconds of a thread's CPU time between two samples: 100 a second
/// (each sample is a timer interrupt, costly in a nested guest).
const PERIOD_NS: u64 = 10_000_000;
/// Ring buffer per thread; drained every profiling tick (10 ms: 1 sample).
const RING_BYTES: usize = 16 * 1024;
/// Threads sampled at once; more are counted, not sampled.
const MAX_THREADS: usize = 512;
/// Readings of one process's mappings kept; past this the newest replaces
/// the last (a program that keeps mapping files in and out).
const MAP_VERSIONS: usize = 32;
/// Functions kept per phase, most first; the rest are summed as `[other]`.
pub const MAX_FUNCTIONS: usize = 16;
/// `PERF_RECORD_SAMPLE`, and the header `misc` bit of a kernel-mode sample.
const RECORD_SAMPLE: u32 = 9;
const MISC_KERNEL: u16 = 1;

/// One sample: when, where, and in which process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IpSample {
    /// Milliseconds from the program's start.
    pub t: f64,
    pub pid: u32,
    pub ip: u64,
    pub kernel: bool,
}

/// A mapping of a file, from `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
}

/// Parses `/proc/PID/maps` text: the file-backed mappings.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, _perms, offset) = (f.next()?, f.next()?, f.next()?);
            let (_dev, _inode) = (f.next()?, f.next()?);
            let path = f.collect::<Vec<_>>().join(" ");
            if !path.starts_with('/') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path,
            })
        })
        .collect()
}

/// Each process's file mappings over the run: every reading that differs
/// from the one before, with the time it was taken.
#[derive(Debug, Default)]
pub struct MapHistory {
    readings: HashMap<u32, Vec<(f64, Vec<Mapping>)>>,
}

impl MapHistory {
    /// Keeps `pid`'s mappings as read at `t` (milliseconds from the start).
    pub fn record(&mut self, pid: u32, t: f64, maps: Vec<Mapping>) {
        let v = self.readings.entry(pid).or_default();
        if v.last().is_some_and(|(_, m)| *m == maps) {
            return;
        }
        if v.len() >= MAP_VERSIONS {
            v.pop();
        }
        v.push((t, maps));
    }

    /// The mapping of `pid` that held `ip` at `t`: looked up in the reading
    /// in force then (the last taken at or before `t`), else in the later
    /// ones (a library loaded since), else in the earlier ones.
    pub fn find(&self, pid: u32, t: f64, ip: u64) -> Option<&Mapping> {
        let v = self.readings.get(&pid)?;
        let after = v.partition_point(|(at, _)| *at <= t);
        let in_force = after.checked_sub(1);
        let earlier = (0..in_force.unwrap_or(0)).rev();
        in_force
            .into_iter()
            .chain(after..v.len())
            .chain(earlier)
            .find_map(|i| v[i].1.iter().find(|m| m.start <= ip && ip < m.end))
    }
}

/// Samples the threads of a process tree while it runs.
pub struct ThreadSampler {
    t0_ns: u64,
    samplers: HashMap<u32, Sampler>,
    /// Each process's file mappings, as they changed.
    maps: MapHistory,
    samples: Vec<IpSample>,
    /// Why sampling stopped, if it did (the profile says so).
    pub unavailable: Option<String>,
    /// Threads not sampled because of [`MAX_THREADS`].
    pub unsampled_threads: u32,
}

impl ThreadSampler {
    /// Times count from `t0_ns` (CLOCK_MONOTONIC).
    pub fn new(t0_ns: u64) -> Self {
        ThreadSampler {
            t0_ns,
            samplers: HashMap::new(),
            maps: MapHistory::default(),
            samples: Vec::new(),
            unavailable: None,
            unsampled_threads: 0,
        }
    }

    /// Starts sampling threads not seen before; forgets (after draining)
    /// those that are gone. The first failure to open an event stops
    /// sampling for the rest of the run.
    pub fn watch(&mut self, tids: &[u32]) {
        self.drain();
        self.samplers.retain(|tid, _| tids.contains(tid));
        if self.unavailable.is_some() {
            return;
        }
        for &tid in tids {
            if self.samplers.contains_key(&tid) {
                continue;
            }
            if self.samplers.len() >= MAX_THREADS {
                self.unsampled_threads += 1;
                continue;
            }
            match open(tid) {
                Ok(s) => {
                    self.samplers.insert(tid, s);
                }
                // The thread ended between the listing and now.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) => {}
                Err(e) => {
                    self.unavailable = Some(format!("perf_event_open: {e}"));
                    self.samplers.clear();
                    return;
                }
            }
        }
    }

    /// Reads `/proc/PID/maps` of `pids` (kept after the processes end).
    pub fn read_maps(&mut self, proc_root: &Path, pids: &[u32]) {
        for &pid in pids {
            if let Ok(text) = std::fs::read_to_string(proc_root.join(format!("{pid}/maps"))) {
                let t = monotonic_ns().saturating_sub(self.t0_ns) as f64 / 1e6;
                self.maps.record(pid, t, parse_maps(&text));
            }
        }
    }

    /// Moves the samples waiting in the ring buffers into `self.samples`.
    pub fn drain(&mut self) {
        for s in self.samplers.values_mut() {
            while let Some(r) = s.next_record() {
                if r.ty() != RECORD_SAMPLE {
                    continue;
                }
                let kernel = r.misc() & MISC_KERNEL != 0;
                let bytes = r.to_contiguous();
                if let Some((ip, pid, time)) = parse_sample(&bytes) {
                    self.samples.push(IpSample {
                        t: time.saturating_sub(self.t0_ns) as f64 / 1e6,
                        pid,
                        ip,
                        kernel,
                    });
                }
            }
        }
    }

    /// Stops sampling; the samples and the mappings seen.
    pub fn finish(mut self) -> (Vec<IpSample>, MapHistory) {
        self.drain();
        (self.samples, self.maps)
    }
}

/// Readies the kernel for per-thread sampling before the program starts.
/// The first per-thread perf event in a while switches the scheduler's perf
/// hooks on (code patching that waits for every CPU, then an RCU grace
/// period); opened on the program, that happens while the kernel holds the
/// program's exec lock. So opened, in the nested harness, a run would begin
/// with up to 1.1 s in which neither the program nor the profiler ran, and
/// the profiler's system time grew by as much: in 10 of 12 rounds of
/// validation run S. With this event on the profiler itself, opened before
/// the clock starts and held until the run ends, none of 6 rounds of run T
/// had it (docs/predict.md). `None` if it cannot be opened: the sampler says
/// why when it opens its own events.
pub fn ready_the_kernel() -> Option<perf_event::Counter> {
    Builder::new(Software::DUMMY)
        .observe_self()
        .any_cpu()
        .enabled(false)
        .build()
        .ok()
}

fn open(tid: u32) -> std::io::Result<Sampler> {
    let pid = i32::try_from(tid).map_err(|_| std::io::Error::other("thread id too large"))?;
    Builder::new(Software::CPU_CLOCK)
        .observe_pid(pid)
        .any_cpu()
        .sample_period(PERIOD_NS)
        .sample(SampleFlag::IP | SampleFlag::TID | SampleFlag::TIME)
        .clockid(Clock::MONOTONIC)
        .include_kernel()
        .enabled(true)
        .build()?
        .sampled(RING_BYTES)
}

/// `(ip, pid, time)` of a sample record's body (IP, TID and TIME asked for).
pub fn parse_sample(b: &[u8]) -> Option<(u64, u32, u64)> {
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let pid = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?);
    Some((u64_at(0)?, pid, u64_at(16)?))
}

/// Symbols of one ELF file: where its loaded segments sit in the file, and
/// its function symbols by address.
struct Symbols {
    /// (file offset, file size, virtual address) of each loaded segment.
    segments: Vec<(u64, u64, u64)>,
    /// (address, name), sorted by address.
    symbols: Vec<(u64, String)>,
}

impl Symbols {
    fn load(path: &str) -> Option<Symbols> {
        use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let segments = file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (off, size, s.address())
            })
            .collect();
        let table: Vec<_> = if file.symbols().next().is_some() {
            file.symbols().collect()
        } else {
            file.dynamic_symbols().collect()
        };
        let mut symbols: Vec<(u64, String)> = table
            .iter()
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.name().ok()?.to_string())))
            .collect();
        symbols.sort();
        Some(Symbols { segments, symbols })
    }

    /// The function at file offset `off`.
    fn name_at(&self, off: u64) -> Option<&str> {
        let &(seg_off, _, vaddr) = self
            .segments
            .iter()
            .find(|&&(o, size, _)| o <= off && off < o + size)?;
        let addr = off - seg_off + vaddr;
        let i = self.symbols.partition_point(|(a, _)| *a <= addr);
        self.symbols.get(i.checked_sub(1)?).map(|(_, n)| n.as_str())
    }
}

/// Names each sample's function: `name` in the program's own file,
/// `name@file` in another (a library), `[kernel]` or `[unknown]`.
pub fn symbolize(samples: &[IpSample], maps: &MapHistory, program: Option<&str>) -> Vec<String> {
    let mut files: HashMap<String, Option<Symbols>> = HashMap::new();
    samples
        .iter()
        .map(|s| {
            if s.kernel {
                return "[kernel]".to_string();
            }
            let Some(m) = maps.find(s.pid, s.t, s.ip) else {
                return "[unknown]".to_string();
            };
            let syms = files
                .entry(m.path.clone())
                .or_insert_with(|| Symbols::load(&m.path));
            let off = s.ip - m.start + m.offset;
            match syms.as_ref().and_then(|y| y.name_at(off)) {
                Some(name) if Some(m.path.as_str()) == program => name.to_string(),
                Some(name) => format!("{name}@{}", file_name(&m.path)),
                None => format!("[unknown]@{}", file_name(&m.path)),
            }
        })
        .collect()
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The phase `[start, end)`'s function shares: of all its samples, and of
/// those taken while `serial(t)` says one thread ran.
pub fn shares(
    samples: &[IpSample],
    names: &[String],
    start: f64,
    end: f64,
    serial: impl Fn(f64) -> bool,
) -> Vec<FunctionTime> {
    let mut counts: Vec<(&str, f64, f64)> = Vec::new();
    let (mut total, mut total_serial) = (0.0, 0.0);
    for (s, name) in samples.iter().zip(names) {
        if !(start <= s.t && s.t < end) {
            continue;
        }
        let ser = serial(s.t);
        total += 1.0;
        if ser {
            total_serial += 1.0;
        }
        let i = match counts.iter().position(|c| c.0 == name) {
            Some(i) => i,
            None => {
                counts.push((name, 0.0, 0.0));
                counts.len() - 1
            }
        };
        counts[i].1 += 1.0;
        if ser {
            counts[i].2 += 1.0;
        }
    }
    if total == 0.0 {
        return Vec::new();
    }
    counts.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    let share = |n: f64, of: f64| if of > 0.0 { round4(n / of) } else { 0.0 };
    let mut out: Vec<FunctionTime> = counts
        .iter()
        .take(MAX_FUNCTIONS)
        .map(|&(name, n, ns)| FunctionTime {
            name: name.to_string(),
            share: share(n, total),
            serial_share: share(ns, total_serial),
        })
        .collect();
    if counts.len() > MAX_FUNCTIONS {
        let rest = &counts[MAX_FUNCTIONS..];
        out.push(FunctionTime {
            name: "[other]".to_string(),
            share: share(rest.iter().map(|c| c.1).sum(), total),
            serial_share: share(rest.iter().map(|c| c.2).sum(), total_serial),
        });
    }
    out
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keep_file_mappings_only() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 123 /usr/bin/prog
55d0c0a01000-55d0c0a05000 r-xp 00001000 fe:01 123 /usr/bin/prog
7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]
7f00-7f10 r-xp 0000a000 fe:01 9 /lib/with space.so
garbage line
";
        let m = parse_maps(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].start, 0x55d0c0a01000);
        assert_eq!(m[1].offset, 0x1000);
        assert_eq!(m[2].path, "/lib/with space.so");
    }

    /// `sh -c '... && exec prog'`: the shell's mappings, then the
    /// program's at the same addresses (both static, not PIE).
    #[test]
    fn a_sample_is_named_by_the_mappings_of_its_time() {
        let map = |path: &str, start: u64, end: u64| Mapping {
            start,
            end,
            offset: 0,
            path: path.to_string(),
        };
        let mut h = MapHistory::default();
        h.record(7, 0.0, vec![map("/bin/busybox", 0x40_0000, 0x50_0000)]);
        h.record(7, 5.0, vec![map("/bin/busybox", 0x40_0000, 0x50_0000)]);
        h.record(7, 20.0, vec![map("/prog", 0x40_0000, 0x48_0000)]);
        h.record(
            7,
            90.0,
            vec![
                map("/prog", 0x40_0000, 0x48_0000),
                map("/lib.so", 0x7f00, 0x8f00),
            ],
        );
        let at = |t: f64, ip: u64| h.find(7, t, ip).map(|m| m.path.as_str());
        assert_eq!(at(3.0, 0x40_1000), Some("/bin/busybox"));
        assert_eq!(at(30.0, 0x40_1000), Some("/prog"), "after the exec");
        assert_eq!(
            at(30.0, 0x7f10),
            Some("/lib.so"),
            "loaded before the next reading"
        );
        assert_eq!(
            at(30.0, 0x49_0000),
            Some("/bin/busybox"),
            "only an older reading has it"
        );
        assert_eq!(
            at(-1.0, 0x40_1000),
            Some("/bin/busybox"),
            "before the first reading"
        );
        assert_eq!(at(30.0, 0x10), None);
        assert_eq!(h.find(8, 30.0, 0x40_1000), None, "another process");
        assert_eq!(
            h.readings[&7].len(),
            3,
            "an unchanged reading is not kept twice"
        );
        for i in 0..100u32 {
            h.record(9, f64::from(i), vec![map("/x", u64::from(i), 100)]);
        }
        assert_eq!(h.readings[&9].len(), MAP_VERSIONS, "bounded");
        assert_eq!(
            h.find(9, 1000.0, 99).map(|m| m.start),
            Some(99),
            "the newest kept"
        );
    }

    #[test]
    fn a_sample_body_reads_ip_pid_and_time() {
        let mut b = Vec::new();
        b.extend_from_slice(&0x4010u64.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&123u64.to_le_bytes());
        assert_eq!(parse_sample(&b), Some((0x4010, 7, 123)));
        assert_eq!(parse_sample(&b[..20]), None, "a short record is skipped");
    }

    #[test]
    fn shares_count_the_phase_and_its_serial_part() {
        let s = |t: f64| IpSample {
            t,
            pid: 1,
            ip: 0,
            kernel: false,
        };
        let samples = [s(1.0), s(2.0), s(3.0), s(4.0), s(50.0)];
        let names: Vec<String> = ["f", "f", "g", "f", "h"].map(String::from).to_vec();
        // Serial before t = 2.5.
        let out = shares(&samples, &names, 0.0, 10.0, |t| t < 2.5);
        assert_eq!(out[0].name, "f");
        assert_eq!(out[0].share, 0.75);
        assert_eq!(out[0].serial_share, 1.0);
        assert_eq!(out[1].name, "g");
        assert_eq!(out[1].serial_share, 0.0);
        assert!(out.iter().all(|f| f.name != "h"), "outside the phase");
        assert!(shares(&samples, &names, 20.0, 30.0, |_| true).is_empty());
    }

    /// The sampler on this very process: a busy loop in a named function
    /// is found by name.
    #[test]
    fn a_busy_function_of_this_process_is_found() {
        #[inline(never)]
        fn busy_function_for_the_sampler(rounds: u64) -> u64 {
            // Operators only: no call to another function, even unoptimised.
            let (mut x, mut i) = (rounds | 1, 0u64);
            while i < rounds {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                i += 1;
            }
            x
        }
        // As `perfhint profile` samples: with the readying event held.
        let ready = ready_the_kernel();
        assert!(
            ready.is_some(),
            "the readying event opens where sampling does"
        );
        let t0 = guest_hints::trace::monotonic_ns();
        let mut s = ThreadSampler::new(t0);
        let me = std::fs::read_link("/proc/thread-self").unwrap();
        let tid: u32 = me.file_name().unwrap().to_str().unwrap().parse().unwrap();
        s.watch(&[tid]);
        assert_eq!(
            s.unavailable, None,
            "CPU-clock sampling (as root, or perf_event_paranoid <= 1)"
        );
        s.read_maps(Path::new("/proc"), &[std::process::id()]);
        std::hint::black_box(busy_function_for_the_sampler(300_000_000));
        let (samples, maps) = s.finish();
        assert!(samples.len() >= 20, "{} samples", samples.len());
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let names = symbolize(&samples, &maps, exe.to_str());
        let hits = names
            .iter()
            .filter(|n| n.contains("busy_function_for_the_sampler"))
            .count();
        assert!(
            hits * 2 > names.len(),
            "{hits} of {} samples in the busy function: {names:?}",
            names.len()
        );
    }
}
