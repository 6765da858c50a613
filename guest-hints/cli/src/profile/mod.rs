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
    let interval_ms = opts.interval_ms;
    let (program, args) = command
        .split_first()
        .ok_or_else(|| "no command given".to_string())?;
    let mut notes: Vec<String> = Vec::new();
    let binary = resolve_program(program);
    let build_id = match &binary {
        Some(b) => match std::fs::read(b) {
            Ok(data) => match crate::elf::build_id(&data) {
                Ok(id) => {
                    if id.is_none() {
                        notes.push(format!("{} has no GNU build-id", b.display()));
                    }
                    id
                }
                Err(e) => {
                    notes.push(format!("{}: {e}: no build-id", b.display()));
                    None
                }
            },
            Err(e) => {
                notes.push(format!("cannot read {}: {e}: no build-id", b.display()));
                None
            }
        },
        None => None,
    };

    let online = std::thread::available_parallelism().map_or(0, |n| n.get() as u32);
    let trace = trace_path();
    std::fs::File::create(&trace)
        .map_err(|e| format!("cannot create the trace file {}: {e}", trace.display()))?;
    let procfs = Procfs::new();
    let interval = Duration::from_millis(u64::from(interval_ms));

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
    let pid = child.id();
    let ms_since = |t: u64| t.saturating_sub(t0) as f64 / 1e6;

    let mut sampler = functions::ThreadSampler::new(t0);
    if !opts.functions {
        sampler.unavailable = Some("--no-functions".into());
    }
    let mut cpus_seen: Vec<u32> = Vec::new();
    let mut program_cpu_list: Option<String> = None;
    let mut mapped: HashMap<u32, Comm> = HashMap::new();
    let mut samples: Vec<RawSample> = Vec::new();
    let mut windows: Vec<WsWindow> = Vec::new();
    let (mut cpu, mut storage, mut chars, mut calls) = (
        Counter::default(),
        Counter::default(),
        Counter::default(),
        Counter::default(),
    );
    let mut referenced = opts.working_set;
    if !referenced {
        notes.push("--no-working-set: the working set is the resident set (RSS)".into());
    }
    let mut last_clear: Option<f64> = None;
    let progress = std::io::stderr().is_terminal();
    let mut shown_at: Option<f64> = None;
    let mut tick: u64 = 0;
    let mut next_ws: f64 = 0.0;
    let status = loop {
        let snap = procfs.snapshot(pid);
        let now = ms_since(monotonic_ns());
        let s = RawSample {
            t: now,
            running: snap.running,
            cpu_ns: cpu.update(snap.thread_cpu_ns.iter().copied()),
            rss: snap.rss_bytes,
            io_storage: storage.update(snap.io.iter().map(|(p, c)| (*p, c.storage))),
            io_chars: chars.update(snap.io.iter().map(|(p, c)| (*p, c.chars))),
            io_calls: calls.update(snap.io.iter().map(|(p, c)| (*p, c.calls))),
            profiler_cpu_ns: own_cpu_ns(),
        };
        samples.push(s);
        let tids: Vec<u32> = snap.thread_cpu_ns.iter().map(|&(tid, _)| tid).collect();
        sampler.watch(&tids);
        // Each process's mappings when first seen, again when it has
        // exec'd (its command name changed: `sh -c '... && exec prog'`),
        // and every 100 ticks (libraries loaded later).
        let fresh: Vec<u32> = snap
            .pids
            .iter()
            .zip(&snap.comms)
            .filter(|&(p, c)| tick.is_multiple_of(100) || mapped.get(p) != Some(c))
            .map(|(&p, _)| p)
            .collect();
        // The CPUs the program may use (taskset may narrow them after
        // exec): on a change in the tree and every 10 ticks.
        if !fresh.is_empty() || tick.is_multiple_of(10) {
            if let Some(list) = procfs.cpus_allowed_list(&pid.to_string()) {
                cpus_seen.extend(procfs::count_cpu_list(&list));
                program_cpu_list = Some(list);
            }
        }
        sampler.read_maps(procfs.root(), &fresh);
        mapped.extend(snap.pids.iter().copied().zip(snap.comms.iter().copied()));
        if referenced && now >= next_ws && !snap.pids.is_empty() {
            next_ws = now + f64::from(WS_PERIOD_MS.max(interval_ms));
            match measure_referenced(&procfs, &snap.pids, last_clear.is_some()) {
                Ok(bytes) => {
                    let end = ms_since(monotonic_ns());
                    if let (Some(start), Some(bytes)) = (last_clear, bytes) {
                        windows.push(WsWindow { start, end, bytes });
                    }
                    last_clear = Some(end);
                }
                Err(e) => {
                    referenced = false;
                    notes.push(format!(
                        "the referenced working set could not be measured ({e}): \
                         the working set is the resident set (RSS)"
                    ));
                }
            }
        }
        if progress
            && now >= PROGRESS_AFTER.as_millis() as f64
            && shown_at.is_none_or(|t| now - t >= 1000.0)
        {
            eprint!(
                "\rperfhint profile: {:.0} s, {} threads running, {} MiB resident   ",
                now / 1000.0,
                s.running,
                s.rss >> 20
            );
            shown_at = Some(now);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = std::fs::remove_file(&trace);
                return Err(format!("cannot wait for {program}: {e}"));
            }
        }
        // The next tick on the grid; when late, the first one still ahead.
        let elapsed = monotonic_ns().saturating_sub(t0);
        let step = interval.as_nanos() as u64;
        tick = (elapsed / step + 1).max(tick + 1);
        let next = tick * step;
        std::thread::sleep(Duration::from_nanos(next.saturating_sub(elapsed)));
    };
    let wall = ms_since(monotonic_ns());
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
    let samples: Vec<Sample> = samples
        .iter()
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
        .collect();
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
    let interval_f = f64::from(interval_ms);
    let segs = phases::cut(&trace.events, &samples, wall, interval_f);
    let phases = segs
        .iter()
        .enumerate()
        .map(|(i, seg)| {
            let mut p = phases::phase_stats(
                seg,
                i as u32 + 1,
                &samples,
                &windows,
                !referenced,
                interval_f,
            );
            if shared {
                p.profiler_cpu_ms = Some(phases::profiler_cpu_ms(seg, &samples));
            }
            p
        })
        .collect();
    let mut phases = phases::tidy(phases);
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
        interval_ms,
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
