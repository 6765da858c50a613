#![forbid(unsafe_code)]
//! `perfhint`: send hints from the shell, wrap a command in a phase, show
//! the manifest a binary embeds, profile a program and embed what it needs.

mod elf;
mod files;
mod profile;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{Parser, Subcommand};
use guest_hints::client::{hint, SendError};
use guest_hints::wire::{Hint, IoClass, Locality};

/// Declares a program's needs to a perf-hint aware hypervisor.
///
/// With no perf-hint device (/dev/perfhint), `send` and `phase` say so on
/// standard error and do nothing else; `phase` still runs its command.
#[derive(Parser)]
#[command(name = "perfhint", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Default)]
struct HintArgs {
    /// Independent tasks ready to run now.
    #[arg(long, value_name = "N")]
    parallelism: Option<u32>,
    /// The most threads that still help (default: --parallelism).
    #[arg(long, value_name = "N", requires = "parallelism")]
    max_useful: Option<u32>,
    /// Serial fraction of the work, 0.0 to 1.0.
    #[arg(long, value_name = "F", requires = "parallelism", value_parser = fraction)]
    serial_fraction: Option<f64>,
    /// Memory the work touches repeatedly (SIZE: 512M, 2G; a bare number is MiB).
    #[arg(long, value_name = "SIZE", value_parser = size)]
    working_set: Option<u64>,
    /// Peak memory (default: --working-set).
    #[arg(long, value_name = "SIZE", value_parser = size, requires = "working_set")]
    peak: Option<u64>,
    /// I/O class: none, light, sequential, random, network.
    #[arg(long, value_name = "CLASS", value_parser = io_class)]
    io: Option<IoClass>,
    /// I/O rate per second (SIZE).
    #[arg(long, value_name = "SIZE", value_parser = size, requires = "io")]
    io_rate: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send hints now (all given hints go in one message).
    Send {
        #[command(flatten)]
        hints: HintArgs,
        /// The work may move between hosts or NUMA nodes.
        #[arg(long)]
        relocatable: bool,
        /// The work cannot be split across machines.
        #[arg(long)]
        monolithic: bool,
        /// Data locality: any, shared_cache, same_node.
        #[arg(long, value_name = "L", value_parser = locality)]
        locality: Option<Locality>,
        /// The data set the work reads most, by a name the operator also
        /// uses (1 to 48 bytes): the hypervisor may run the work where that
        /// data is.
        #[arg(long, value_name = "NAME", value_parser = data_set)]
        data_set: Option<String>,
    },
    /// Run CMD inside a named phase: begin, run, end; exit with CMD's status.
    Phase {
        name: String,
        /// Expected duration in milliseconds.
        #[arg(long, value_name = "MS")]
        expected_ms: Option<u32>,
        /// After beginning, wait up to MS milliseconds until the phase's
        /// --parallelism CPUs are online and its --working-set is available
        /// in this guest, then run CMD either way. CMD finds the outcome in
        /// PERFHINT_WAIT (met or timed_out); a timeout is also said on stderr.
        #[arg(long, value_name = "MS")]
        wait: Option<u64>,
        #[command(flatten)]
        hints: HintArgs,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print the manifest a binary embeds (ELF note .note.perfhint) as JSON,
    /// its schedule included.
    Inspect { binary: PathBuf },
    /// Run CMD, sampling its process tree, and write its profile (phases
    /// and what each needs) to FILE; exit with CMD's status. Or, with
    /// --merge, combine profiles of several runs of one binary.
    Profile {
        /// The profile to write.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Milliseconds between samples (at least 1).
        #[arg(long, value_name = "MS", default_value_t = 10)]
        interval_ms: u32,
        /// Do not sample where CPU time goes by function (no perf events on
        /// the program's threads): the profile has no `functions`.
        #[arg(long, conflicts_with = "merge")]
        no_functions: bool,
        /// Do not measure the referenced working set (no clearing of the
        /// program's referenced bits): the working set is the resident set.
        #[arg(long, conflicts_with = "merge")]
        no_working_set: bool,
        /// Profiles of runs of one binary to combine (medians, with their
        /// spread) instead of running a command.
        #[arg(long, value_name = "PROFILE", num_args = 1.., conflicts_with = "command")]
        merge: Vec<PathBuf>,
        /// The command and its arguments.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Write the manifest derived from PROFILE (a profile of BINARY) into
    /// BINARY's .note.perfhint section, in place or as OUT.
    Embed {
        /// An ELF executable or library.
        binary: PathBuf,
        /// Its profile (perfhint profile).
        profile: PathBuf,
        /// Write the result here instead of replacing BINARY.
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: Option<PathBuf>,
        /// Embed even when neither BINARY nor PROFILE has a build-id to compare.
        #[arg(long)]
        no_build_id_check: bool,
    },
    /// Say whether a perf-hint device is present.
    Status,
    /// Send COUNT hints as fast as possible without blocking, then report
    /// how many were sent and how many the full queue turned away.
    #[command(hide = true)]
    Flood {
        #[arg(long, default_value_t = 100_000)]
        count: u32,
        /// Hints per message (per write).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        batch: u32,
    },
}

fn size(s: &str) -> Result<u64, String> {
    guest_hints::size::parse_size(s).map_err(|e| e.to_string())
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("'{s}' is not a fraction between 0.0 and 1.0")),
    }
}

fn io_class(s: &str) -> Result<IoClass, String> {
    IoClass::parse(s).ok_or_else(|| {
        format!("'{s}' is not an I/O class (none, light, sequential, random, network)")
    })
}

fn locality(s: &str) -> Result<Locality, String> {
    Locality::parse(s)
        .ok_or_else(|| format!("'{s}' is not a locality (any, shared_cache, same_node)"))
}

fn data_set(s: &str) -> Result<String, String> {
    hint::data_set(s).map(|_| s.to_string()).ok_or_else(|| {
        format!(
            "'{s}' cannot name a data set: give 1 to {} bytes",
            guest_hints::wire::MAX_NAME_LEN
        )
    })
}

impl HintArgs {
    fn hints(&self) -> Vec<Hint> {
        let mut v = Vec::new();
        if let Some(n) = self.parallelism {
            v.push(hint::parallelism(
                n,
                self.max_useful.unwrap_or(n),
                self.serial_fraction.unwrap_or(0.0),
            ));
        }
        if let Some(ws) = self.working_set {
            v.push(hint::memory(ws, self.peak.unwrap_or(ws), 0));
        }
        if let Some(c) = self.io {
            v.push(hint::io(c, self.io_rate.unwrap_or(0)));
        }
        v
    }
}

/// Sends; returns false on a failure worth a non-zero exit.
fn send(hints: &[Hint]) -> bool {
    match guest_hints::try_send(hints) {
        Ok(_) => true,
        Err(SendError::NoDevice) => {
            eprintln!(
                "perfhint: no perf-hint device ({}); nothing sent",
                guest_hints::linux::DEVICE_PATH
            );
            true
        }
        Err(e) => {
            eprintln!("perfhint: hint not sent: {e:?}");
            false
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Send {
            hints,
            relocatable,
            monolithic,
            locality,
            data_set,
        } => cmd_send(&hints, relocatable, monolithic, locality, data_set),
        Cmd::Phase {
            name,
            expected_ms,
            wait,
            hints,
            command,
        } => cmd_phase(&name, expected_ms, wait, &hints, &command),
        Cmd::Inspect { binary } => cmd_inspect(&binary),
        Cmd::Profile {
            output,
            interval_ms,
            no_functions,
            no_working_set,
            merge,
            command,
        } => {
            let opts = profile::Options {
                interval_ms,
                functions: !no_functions,
                working_set: !no_working_set,
            };
            cmd_profile(&output, &opts, &merge, &command)
        }
        Cmd::Embed {
            binary,
            profile,
            output,
            no_build_id_check,
        } => cmd_embed(&binary, &profile, output.as_deref(), no_build_id_check),
        Cmd::Flood { count, batch } => cmd_flood(count, batch),
        Cmd::Status => cmd_status(),
    }
}

fn cmd_send(
    hints: &HintArgs,
    relocatable: bool,
    monolithic: bool,
    locality: Option<Locality>,
    data_set: Option<String>,
) -> ExitCode {
    let mut v = hints.hints();
    v.extend(data_set.as_deref().and_then(hint::data_set));
    if relocatable || monolithic || locality.is_some() {
        v.push(hint::placement(
            relocatable,
            monolithic,
            locality.unwrap_or(Locality::Any),
        ));
    }
    if v.is_empty() {
        eprintln!("perfhint send: give at least one hint (see perfhint send --help)");
        return ExitCode::from(2);
    }
    if send(&v) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn cmd_phase(
    name: &str,
    expected_ms: Option<u32>,
    wait: Option<u64>,
    hints: &HintArgs,
    command: &[String],
) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        eprintln!("perfhint phase: no command given");
        return ExitCode::from(2);
    };
    let phase = guest_hints::Phase::new(name)
        .expected(Duration::from_millis(u64::from(expected_ms.unwrap_or(0))));
    let phase = hints.hints().into_iter().fold(phase, |p, h| match h {
        Hint::Parallelism(x) => p.parallelism(x.runnable_tasks),
        Hint::Memory(m) => p.working_set(m.working_set_bytes),
        Hint::Io(io) => p.io(io.class, io.bytes_per_sec),
        _ => p,
    });
    let mut cmd = Command::new(program);
    cmd.args(args);
    let guard = match wait {
        None => phase.begin(),
        Some(ms) => {
            let need = phase.need();
            let (guard, waited) = phase.begin_and_wait(Duration::from_millis(ms));
            match waited {
                guest_hints::WaitOutcome::Met => {
                    cmd.env("PERFHINT_WAIT", "met");
                }
                guest_hints::WaitOutcome::TimedOut => {
                    eprintln!(
                        "perfhint phase: {name}: {} not online within {ms} ms; running {program} anyway",
                        describe_need(&need)
                    );
                    cmd.env("PERFHINT_WAIT", "timed_out");
                }
            }
            guard
        }
    };
    let status = cmd.status();
    drop(guard);
    match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            let code = s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0));
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("perfhint phase: cannot run {program}: {e}");
            ExitCode::from(127)
        }
    }
}

/// "4 CPUs and 1.0 GiB of available memory", for messages.
fn describe_need(need: &guest_hints::resources::Need) -> String {
    let cpus = format!("{} CPUs", need.cpus);
    let mem = format!(
        "{:.1} MiB of available memory",
        need.working_set_bytes as f64 / (1u64 << 20) as f64
    );
    match (need.cpus > 0, need.working_set_bytes > 0) {
        (true, true) => format!("{cpus} and {mem}"),
        (true, false) => cpus,
        (false, true) => mem,
        (false, false) => "nothing".to_string(),
    }
}

fn cmd_inspect(binary: &Path) -> ExitCode {
    let bytes = match std::fs::read(binary) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("perfhint inspect: cannot read {}: {e}", binary.display());
            return ExitCode::from(1);
        }
    };
    let manifest = match guest_hints::note::find_in_elf(&bytes) {
        Ok(Some(m)) => m,
        Ok(None) => {
            eprintln!(
                "perfhint inspect: {} embeds no perf-hint manifest",
                binary.display()
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("perfhint inspect: {}: {e}", binary.display());
            return ExitCode::from(1);
        }
    };
    match serde_json::to_string_pretty(&manifest) {
        Ok(j) => {
            println!("{j}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("perfhint inspect: {e}");
            ExitCode::from(1)
        }
    }
}

/// perfhint's own failure: one line on stderr, exit status 1.
fn fail(cmd: &str, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("perfhint {cmd}: {msg}");
    ExitCode::from(1)
}

fn cmd_profile(
    output: &Path,
    opts: &profile::Options,
    merge: &[PathBuf],
    command: &[String],
) -> ExitCode {
    if !merge.is_empty() {
        let mut inputs = Vec::new();
        for path in merge {
            match guest_hints::profile::Profile::load(path) {
                Ok(p) => inputs.push((path.display().to_string(), p)),
                Err(e) => return fail("profile", format_args!("{}: {e}", path.display())),
            }
        }
        let merged = match profile::merge::merge(&inputs) {
            Ok(m) => m,
            Err(e) => return fail("profile", e),
        };
        return match files::write_atomic(output, merged.to_json().as_bytes(), 0o644) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("profile", e),
        };
    }
    if command.is_empty() {
        return fail(
            "profile",
            "give a command after -- (perfhint profile -o FILE -- CMD ARGS...) or --merge PROFILES",
        );
    }
    if opts.interval_ms == 0 {
        return fail("profile", "--interval-ms must be at least 1");
    }
    // Refuse an output that cannot be written before running anything.
    if let Err(e) = files::check_writable(output) {
        return fail("profile", e);
    }
    let (p, status) = match profile::profile(command, opts) {
        Ok(r) => r,
        Err(e) => return fail("profile", e),
    };
    if let Err(e) = files::write_atomic(output, p.to_json().as_bytes(), 0o644) {
        return fail("profile", e);
    }
    ExitCode::from(profile::exit_code(status))
}

fn cmd_embed(binary: &Path, profile: &Path, output: Option<&Path>, no_id_check: bool) -> ExitCode {
    use std::os::unix::fs::PermissionsExt;
    let data = match std::fs::read(binary) {
        Ok(d) => d,
        Err(e) => {
            return fail(
                "embed",
                format_args!("cannot read {}: {e}", binary.display()),
            )
        }
    };
    let binary_id = match elf::build_id(&data) {
        Ok(id) => id,
        Err(e) => return fail("embed", format_args!("{}: {e}", binary.display())),
    };
    let p = match guest_hints::profile::Profile::load(profile) {
        Ok(p) => p,
        Err(e) => return fail("embed", format_args!("{}: {e}", profile.display())),
    };
    let show = |id: &Option<String>| id.clone().unwrap_or_else(|| "none".to_string());
    match (&p.build_id, &binary_id) {
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => {}
        (None, None) if no_id_check => {}
        (None, None) => {
            return fail(
                "embed",
                format_args!(
                    "neither {} nor {} has a GNU build-id to show they belong together                      (--no-build-id-check to embed anyway)",
                    binary.display(),
                    profile.display()
                ),
            )
        }
        _ => {
            return fail(
                "embed",
                format_args!(
                    "{} profiles build-id {}, but {} has build-id {}",
                    profile.display(),
                    show(&p.build_id),
                    binary.display(),
                    show(&binary_id)
                ),
            )
        }
    }
    let target = output.unwrap_or(binary);
    if files::is_read_only(target) {
        return fail(
            "embed",
            format_args!("{} is read-only; nothing changed", target.display()),
        );
    }
    let app = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut m = guest_hints::profile::derive_manifest(&p, &app);
    // What a profile cannot measure, the binary's own manifest keeps.
    if let Ok(Some(old)) = guest_hints::note::find_in_elf(&data) {
        m.placement = old.placement;
        if old.phases.iter().any(Option::is_some) {
            m.phases = old.phases;
        }
        if m.io.is_none() {
            m.io = old.io;
        }
    }
    let (out, placed) = match elf::embed(&data, &m) {
        Ok(r) => r,
        Err(e) => return fail("embed", format_args!("{}: {e}", binary.display())),
    };
    let mode = std::fs::metadata(binary)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o755);
    if let Err(e) = files::write_atomic(target, &out, mode) {
        return fail("embed", format_args!("{e}; nothing changed"));
    }
    let how = match placed {
        elf::Placed::InPlace => "in its .note.perfhint section",
        elf::Placed::Replaced => "replacing its .note.perfhint section",
        elf::Placed::Added => "in a new .note.perfhint section",
    };
    println!(
        "perfhint embed: {} phases of {} written into {} {how}",
        m.schedule.iter().flatten().count(),
        profile.display(),
        target.display()
    );
    ExitCode::SUCCESS
}

fn cmd_flood(count: u32, batch: u32) -> ExitCode {
    let start = std::time::Instant::now();
    let (mut sent, mut busy, mut other, mut writes) = (0u64, 0u64, 0u64, 0u64);
    let mut i = 0u32;
    while i < count {
        let n = batch.min(count - i);
        // I/O hints: they exercise the whole path without driving
        // allocation decisions.
        let hints: Vec<Hint> = (i..i + n)
            .map(|k| hint::io(IoClass::Random, u64::from(k)))
            .collect();
        match guest_hints::try_send(&hints) {
            Ok(_) => {
                sent += u64::from(n);
                writes += 1;
            }
            Err(SendError::Busy) => busy += u64::from(n),
            Err(_) => other += u64::from(n),
        }
        i += n;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "flood: count={count} batch={batch} writes={writes} sent={sent} busy={busy} failed={other} \
         seconds={secs:.3} sent_per_sec={:.0}",
        sent as f64 / secs.max(1e-9)
    );
    ExitCode::SUCCESS
}

fn cmd_status() -> ExitCode {
    if guest_hints::is_connected() {
        println!("connected");
    } else {
        println!("no perf-hint device");
    }
    ExitCode::SUCCESS
}
