//! `perfhint profile`: run a command, sample its process tree, cut the run
//! into phases, and write a profile (see `docs/derived-hints.md`).

pub mod events;
pub mod functions;
pub mod merge;
pub mod phases;
pub mod procfs;

use std::collections::HashMap;
use std::io::{ErrorKind, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use guest_hints::profile::{Profile, FORMAT, VERSION};
use guest_hints::trace::{monotonic_ns, TRACE_ENV};

use phases::{Sample, WsWindow};
use procfs::{Comm, Counter, Procfs};

/// How often the referenced working set is measured.
const WS_PERIOD_MS: u32 = 200;
/// Runs longer than this show progress (on a terminal).
const PROGRESS_AFTER: Duration = Duration::from_secs(3);
/// Readying the kernel for sampling (`functions::ready_the_kernel`) takes
/// this long or more: the profile's notes say so.
const READY_NOTE_MS: u64 = 50;

/// One sample with both kinds of I/O counters; which one the profile uses
/// is chosen after the run.
#[derive(Clone, Copy, Debug)]
struct RawSample {
    t: f64,
    running: u32,
    cpu_ns: u64,
    rss: u64,
    io_storage: u64,
    io_chars: u64,
    io_calls: u64,
    profiler_cpu_ns: u64,
}

/// The profiler's own CPU time so far (all its threads), nanoseconds.
fn own_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// Where a program named on the command line is: as given when it has a
/// slash, else the first executable file of that name in `PATH`.
pub fn resolve_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let found = if program.contains('/') {
        Some(PathBuf::from(program)).filter(|p| exec(p))
    } else {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| exec(p))
    };
    found.map(|p| std::fs::canonicalize(&p).unwrap_or(p))
}

/// The exit code a shell would report for `status`.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    code.clamp(0, 255) as u8
}

/// A trace file name of our own in the temporary directory.
fn trace_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "perfhint-trace-{}-{}.jsonl",
        std::process::id(),
        monotonic_ns()
    ))
}

/// How `perfhint profile` samples.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Milliseconds between samples of `/proc`.
    pub interval_ms: u32,
    /// Whether to sample where CPU time goes, by function.
    pub functions: bool,
    /// Whether to measure the referenced working set.
    pub working_set: bool,
}

/// Runs `command`, sampling as `opts` says; returns its profile and its
/// exit status.
pub fn profile(command: &[String], opts: &Options) -> Result<(Profile, ExitStatus), String> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| "no command given".to_string())?;
    let mut notes: Vec<String> = Vec::new();
    let binary = resolve_program(program);
    let build_id = binary.as_deref().and_then(|b| build_id_of(b, &mut notes));
    let online = std::thread::available_parallelism().map_or(0, |n| n.get() as u32);
    let trace = trace_path();
    std::fs::File::create(&trace)
        .map_err(|e| format!("cannot create the trace file {}: {e}", trace.display()))?;
    let procfs = Procfs::new();
    let readying = monotonic_ns();
    let _sampling_ready = opts.functions.then(functions::ready_the_kernel);
    let ready_ms = monotonic_ns().saturating_sub(readying) / 1_000_000;
    if ready_ms >= READY_NOTE_MS {
        notes.push(format!(
            "readying the kernel for sampling took {ready_ms} ms, before the program started"
        ));
    }

    let t0 = monotonic_ns();
    let mut child = match Command::new(program)
        .args(args)
        .env(TRACE_ENV, &trace)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&trace);
            return Err(format!("cannot run {program}: {e}"));
        }
    };
    let mut watch = Watch::new(&procfs, child.id(), t0, opts, &mut notes);
    let status = loop {
        watch.sample();
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => watch.sleep_to_next_tick(),
            Err(e) => {
                let _ = std::fs::remove_file(&trace);
                return Err(format!("cannot wait for {program}: {e}"));
            }
        }
    };
    let wall = watch.ms_now();
    let Watch {
        sampler,
        cpus_seen,
        program_cpu_list,
        samples,
        windows,
        referenced,
        shown_at,
        ..
    } = watch;
    let cpus = program_cpus(&cpus_seen, online, &mut notes);
    if shown_at.is_some() {
        eprint!("\r\x1b[K");
    }

    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let _ = std::fs::remove_file(&trace);
    let trace = events::parse(&text, t0);
    if trace.bad_lines > 0 {
        notes.push(format!(
            "{} lines of the trace file were not events and were skipped",
            trace.bad_lines
        ));
    }
    if !procfs.schedstat {
        notes.push(
            "no per-thread schedstat: CPU time is in clock ticks, so short-term parallelism is coarse"
                .to_string(),
        );
    }
    let use_storage = samples.last().is_some_and(|s| s.io_storage > 0);
    let samples = with_io(&samples, use_storage);
    // Where the profiler ran on the program's CPUs, its own CPU time went
    // with the program's (see ProfilePhase::profiler_cpu_ms).
    let shared = match (&program_cpu_list, procfs.cpus_allowed_list("self")) {
        (Some(program), Some(own)) => procfs::cpu_lists_meet(program, &own),
        _ => false,
    };
    if shared {
        notes.push(
            "the profiler ran on the program's CPUs: its own CPU time is in each phase's profiler_cpu_ms"
                .into(),
        );
    }
    let run = Run {
        samples: &samples,
        windows: &windows,
        rss_only: !referenced,
        wall,
        interval_ms: f64::from(opts.interval_ms),
        shared,
    };
    let mut phases = run.phases(&trace.events);
    attribute_functions(
        sampler,
        &mut phases,
        &samples,
        binary.as_deref(),
        &mut notes,
    );
    let profile = Profile {
        format: FORMAT.to_string(),
        version: VERSION,
        command: command.to_vec(),
        binary: binary.map(|b| b.display().to_string()),
        build_id,
        wall_ms: wall.round() as u64,
        interval_ms: opts.interval_ms,
        runs: 1,
        cpu_time_source: if procfs.schedstat {
            "schedstat"
        } else {
            "ticks"
        }
        .to_string(),
        working_set_source: if referenced { "referenced" } else { "rss" }.to_string(),
        io_source: if use_storage { "storage" } else { "chars" }.to_string(),
        cpus,
        notes,
        phases,
    };
    Ok((profile, status))
}

/// A finished run, as its phases are measured from it.
struct Run<'a> {
    samples: &'a [Sample],
    windows: &'a [WsWindow],
    /// The working set is the resident set (it could not be measured).
    rss_only: bool,
    wall: f64,
    interval_ms: f64,
    /// The profiler shared the program's CPUs.
    shared: bool,
}

impl Run<'_> {
    /// The run cut into phases at `events`, each with its measures (and
    /// the profiler's own CPU time where it shared the program's CPUs).
    fn phases(&self, events: &[events::Event]) -> Vec<guest_hints::profile::ProfilePhase> {
        let segs = phases::cut(events, self.samples, self.wall, self.interval_ms);
        let measured = segs
            .iter()
            .enumerate()
            .map(|(i, seg)| {
                let mut p = phases::phase_stats(
                    seg,
                    i as u32 + 1,
                    self.samples,
                    self.windows,
                    self.rss_only,
                    self.interval_ms,
                );
                if self.shared {
                    p.profiler_cpu_ms = Some(phases::profiler_cpu_ms(seg, self.samples));
                }
                p
            })
            .collect();
        phases::tidy(measured)
    }
}

/// The GNU build-id of the program's file, noting why there is none.
fn build_id_of(binary: &Path, notes: &mut Vec<String>) -> Option<String> {
    let data = match std::fs::read(binary) {
        Ok(data) => data,
        Err(e) => {
            notes.push(format!(
                "cannot read {}: {e}: no build-id",
                binary.display()
            ));
            return None;
        }
    };
    match crate::elf::build_id(&data) {
        Ok(None) => {
            notes.push(format!("{} has no GNU build-id", binary.display()));
            None
        }
        Ok(id) => id,
        Err(e) => {
            notes.push(format!("{}: {e}: no build-id", binary.display()));
            None
        }
    }
}

/// The samples as the phases read them, with the storage I/O counters
/// where the kernel kept them, else the character counters.
fn with_io(raw: &[RawSample], use_storage: bool) -> Vec<Sample> {
    raw.iter()
        .map(|r| Sample {
            t: r.t,
            running: r.running,
            cpu_ns: r.cpu_ns,
            rss: r.rss,
            io_bytes: if use_storage {
                r.io_storage
            } else {
                r.io_chars
            },
            io_calls: r.io_calls,
            profiler_cpu_ns: r.profiler_cpu_ns,
        })
        .collect()
}

/// What the profiler gathers while the program runs, a tick at a time.
struct Watch<'a> {
    procfs: &'a Procfs,
    notes: &'a mut Vec<String>,
    pid: u32,
    t0: u64,
    interval_ms: u32,
    sampler: functions::ThreadSampler,
    /// The CPU counts the program's affinity allowed, as sampled.
    cpus_seen: Vec<u32>,
    /// Its affinity as last read.
    program_cpu_list: Option<String>,
    /// Each process's command name when its mappings were last read.
    mapped: HashMap<u32, Comm>,
    samples: Vec<RawSample>,
    windows: Vec<WsWindow>,
    cpu: Counter,
    storage: Counter,
    chars: Counter,
    calls: Counter,
    /// Whether the referenced working set is (still) measured.
    referenced: bool,
    last_clear: Option<f64>,
    next_ws: f64,
    /// Whether progress is shown (on a terminal), and when it last was.
    progress: bool,
    shown_at: Option<f64>,
    tick: u64,
}

impl<'a> Watch<'a> {
    fn new(
        procfs: &'a Procfs,
        pid: u32,
        t0: u64,
        opts: &Options,
        notes: &'a mut Vec<String>,
    ) -> Self {
        let mut sampler = functions::ThreadSampler::new(t0);
        if !opts.functions {
            sampler.unavailable = Some("--no-functions".into());
        }
        if !opts.working_set {
            notes.push("--no-working-set: the working set is the resident set (RSS)".into());
        }
        Watch {
            procfs,
            notes,
            pid,
            t0,
            interval_ms: opts.interval_ms,
            sampler,
            cpus_seen: Vec::new(),
            program_cpu_list: None,
            mapped: HashMap::new(),
            samples: Vec::new(),
            windows: Vec::new(),
            cpu: Counter::default(),
            storage: Counter::default(),
            chars: Counter::default(),
            calls: Counter::default(),
            referenced: opts.working_set,
            last_clear: None,
            next_ws: 0.0,
            progress: std::io::stderr().is_terminal(),
            shown_at: None,
            tick: 0,
        }
    }

    /// Milliseconds since the program was started.
    fn ms_now(&self) -> f64 {
        monotonic_ns().saturating_sub(self.t0) as f64 / 1e6
    }

    /// One tick: the tree's counters, the threads to sample by function,
    /// mappings and affinity where they may have changed, the working set
    /// when it is due, and progress.
    fn sample(&mut self) {
        let snap = self.procfs.snapshot(self.pid);
        let now = self.ms_now();
        let s = RawSample {
            t: now,
            running: snap.running,
            cpu_ns: self.cpu.update(snap.thread_cpu_ns.iter().copied()),
            rss: snap.rss_bytes,
            io_storage: self
                .storage
                .update(snap.io.iter().map(|(p, c)| (*p, c.storage))),
            io_chars: self
                .chars
                .update(snap.io.iter().map(|(p, c)| (*p, c.chars))),
            io_calls: self
                .calls
                .update(snap.io.iter().map(|(p, c)| (*p, c.calls))),
            profiler_cpu_ns: own_cpu_ns(),
        };
        self.samples.push(s);
        let tids: Vec<u32> = snap.thread_cpu_ns.iter().map(|&(tid, _)| tid).collect();
        self.sampler.watch(&tids);
        self.maps_and_affinity(&snap);
        if self.referenced && now >= self.next_ws && !snap.pids.is_empty() {
            self.next_ws = now + f64::from(WS_PERIOD_MS.max(self.interval_ms));
            self.working_set(&snap.pids);
        }
        self.show_progress(now, &s);
    }

    /// Reads each process's mappings when first seen, again when it has
    /// exec'd (its command name changed: `sh -c '... && exec prog'`), and
    /// every 100 ticks (libraries loaded later); and the CPUs the program
    /// may use (taskset may narrow them after exec), on a change in the
    /// tree and every 10 ticks.
    fn maps_and_affinity(&mut self, snap: &procfs::Snapshot) {
        let fresh: Vec<u32> = snap
            .pids
            .iter()
            .zip(&snap.comms)
            .filter(|&(p, c)| self.tick.is_multiple_of(100) || self.mapped.get(p) != Some(c))
            .map(|(&p, _)| p)
            .collect();
        if !fresh.is_empty() || self.tick.is_multiple_of(10) {
            if let Some(list) = self.procfs.cpus_allowed_list(&self.pid.to_string()) {
                self.cpus_seen.extend(procfs::count_cpu_list(&list));
                self.program_cpu_list = Some(list);
            }
        }
        self.sampler.read_maps(self.procfs.root(), &fresh);
        self.mapped
            .extend(snap.pids.iter().copied().zip(snap.comms.iter().copied()));
    }

    /// Closes a working-set window (the bytes referenced since the last
    /// one) and opens the next; on a refusal, falls back to the RSS.
    fn working_set(&mut self, pids: &[u32]) {
        match measure_referenced(self.procfs, pids, self.last_clear.is_some()) {
            Ok(bytes) => {
                let end = self.ms_now();
                if let (Some(start), Some(bytes)) = (self.last_clear, bytes) {
                    self.windows.push(WsWindow { start, end, bytes });
                }
                self.last_clear = Some(end);
            }
            Err(e) => {
                self.referenced = false;
                self.notes.push(format!(
                    "the referenced working set could not be measured ({e}): \
                     the working set is the resident set (RSS)"
                ));
            }
        }
    }

    /// A line of progress on a terminal, once a second past the first few.
    fn show_progress(&mut self, now: f64, s: &RawSample) {
        if self.progress
            && now >= PROGRESS_AFTER.as_millis() as f64
            && self.shown_at.is_none_or(|t| now - t >= 1000.0)
        {
            eprint!(
                "\rperfhint profile: {:.0} s, {} threads running, {} MiB resident   ",
                now / 1000.0,
                s.running,
                s.rss >> 20
            );
            self.shown_at = Some(now);
        }
    }

    /// Sleeps until the next tick on the grid; when late, the first one
    /// still ahead.
    fn sleep_to_next_tick(&mut self) {
        let elapsed = monotonic_ns().saturating_sub(self.t0);
        let step = u64::from(self.interval_ms.max(1)) * 1_000_000;
        self.tick = (elapsed / step + 1).max(self.tick + 1);
        let next = self.tick * step;
        std::thread::sleep(Duration::from_nanos(next.saturating_sub(elapsed)));
    }
}

/// The CPUs the program could use: the most its affinity allowed while
/// it ran (as sampled), else what perfhint itself may use.
fn program_cpus(seen: &[u32], online: u32, notes: &mut Vec<String>) -> u32 {
    let (Some(&lo), Some(&hi)) = (seen.iter().min(), seen.iter().max()) else {
        return online;
    };
    if lo != hi {
        notes.push(format!(
            "the CPUs the program could use changed during the run (from {lo} to {hi}); the profile says {hi}"
        ));
    }
    hi
}

/// Gives each phase its function shares from the CPU-clock samples; a
/// sample counts as serial when the interval it fell in ran at most 1.25
/// threads' worth of CPU.
fn attribute_functions(
    sampler: functions::ThreadSampler,
    phases: &mut [guest_hints::profile::ProfilePhase],
    samples: &[Sample],
    program: Option<&Path>,
    notes: &mut Vec<String>,
) {
    if let Some(why) = &sampler.unavailable {
        notes.push(format!("no per-function attribution: {why}"));
    }
    if sampler.unsampled_threads > 0 {
        notes.push(format!(
            "{} threads were not sampled by function (too many at once)",
            sampler.unsampled_threads
        ));
    }
    let (ips, maps) = sampler.finish();
    let program = program.and_then(|p| p.to_str());
    let names = functions::symbolize(&ips, &maps, program);
    // (end of interval, parallelism in it), in time order.
    let pars: Vec<(f64, f64)> = samples
        .windows(2)
        .map(|w| {
            let dt = (w[1].t - w[0].t).max(1e-9);
            (
                w[1].t,
                w[1].cpu_ns.saturating_sub(w[0].cpu_ns) as f64 / 1e6 / dt,
            )
        })
        .collect();
    let serial = |t: f64| {
        let i = pars.partition_point(|&(end, _)| end < t);
        pars.get(i).is_some_and(|&(_, p)| p <= 1.25)
    };
    for ph in phases {
        let (start, end) = (ph.start_ms as f64, (ph.start_ms + ph.duration_ms) as f64);
        ph.functions = functions::shares(&ips, &names, start, end, serial);
    }
}

/// Bytes referenced by the tree since the last clear (`None` on the first
/// call, when nothing was cleared yet), then clears them. An error when the
/// kernel does not let us (permission); a process that cannot be measured
/// for any other reason — it ended meanwhile, or is a zombie with no
/// memory left — is skipped.
fn measure_referenced(
    procfs: &Procfs,
    pids: &[u32],
    cleared_before: bool,
) -> Result<Option<u64>, String> {
    let mut total: u64 = 0;
    // Only a refusal means the kernel does not let us; anything else
    // (ESRCH, ENOENT, an empty or unreadable file of an exiting process)
    // concerns that one process.
    let gone = |_pid: u32, e: &std::io::Error| e.kind() != ErrorKind::PermissionDenied;
    for &pid in pids {
        if cleared_before {
            match procfs.referenced(pid) {
                Ok(b) => total = total.saturating_add(b),
                Err(e) if gone(pid, &e) => continue,
                Err(e) => return Err(format!("/proc/{pid}/smaps_rollup: {e}")),
            }
        }
        match procfs.clear_refs(pid) {
            Ok(()) => {}
            Err(e) if gone(pid, &e) => {}
            Err(e) => return Err(format!("/proc/{pid}/clear_refs: {e}")),
        }
    }
    Ok(cleared_before.then_some(total))
}
