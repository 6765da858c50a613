//! The `perfvmm` command line: parsing and validation of user input. Nothing
//! here touches KVM; semantic limits that depend on the host (such as the
//! number of vCPUs KVM allows) are checked when the VM is built.

use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;

use crate::layout::MAX_APIC_ID;

const AFTER_HELP: &str = "\
SIZE is a number with an optional K, M, G or T suffix (powers of 1024, a
trailing \"B\" or \"iB\" is accepted); a bare number means MiB.

The guest's console is COM1 (ttyS0): its output goes to standard output, and
when standard input is a terminal, keystrokes go to the guest.

Exit status:
  0    the guest powered off or rebooted (a reboot ends the VM too), or
       the VM stopped after a snapshot (`perfvmm ctl snapshot --stop`), or
       it migrated and runs on at its target (`perfvmm ctl migrate`)
  1    perfvmm could not start the VM (bad input, no /dev/kvm, ...)
  2    the command line could not be parsed
  3    the guest crashed: triple fault or a KVM internal error
  130  stopped by SIGINT; 143 stopped by SIGTERM";

const SIMULATE_AFTER_HELP: &str = "\
The trace's hints go to the policy engine at their times and the engine
ticks every 200 ms, as in perfvmm; each decision reaches the guest after a
latency drawn from the model (uniformly, seeded). Slack is the unused share
of what was allocated, shortage the share of demand samples above the
allocation, deficit the unmet share of demand. Where the trace records what
the VM really had (`measured`), those figures are shown beside the
simulated ones, with the difference in points.

perfvmm's source tree ships a synthetic trace of the demo workload:
  perfvmm simulate --trace policy/traces/demo-nested.jsonl

Exit status: 0 the report was printed; 1 a file could not be read or used;
2 the command line could not be parsed.";

const PREDICT_AFTER_HELP: &str = "\
Profiles come from `perfhint profile -o FILE -- CMD` in the guest (or any
Linux machine); give profiles taken on two or more CPU counts for a fitted
scaling model, one for an estimate (docs/predict.md says which assumptions
each takes).

What-ifs (--what-if, repeatable):
  function=NAME:-10%   the function's own time 10 % shorter
  phase=NAME:-10%      the phase's time 10 % shorter
  cpu-speed:+20%       every CPU 20 % faster
  io:+50%              storage 50 % faster

Hosts and prices (TOML, [[host]] name, cores, memory, cpu_speed,
io_bandwidth, price_per_hour): --hosts FILE for your machines, --prices
builtin for a dated table of a few public cloud instance prices shipped
with perfvmm, or --prices FILE for your own.

Examples:
  perfvmm predict run-1cpu.json run-4cpu.json --vcpus 1,2,4,8
  perfvmm predict run.json --what-if 'function=sweep:-10%' --svg out.svg
  perfvmm predict run.json --prices builtin --deadline 10m --runs-per-day 24

Exit status: 0 the prediction was printed; 1 a file could not be read or
used, or a what-if names what the profiles lack; 2 the command line could
not be parsed.";

/// A minimal KVM virtual machine monitor that boots a stock Linux guest.
#[derive(Debug, Parser)]
#[command(
    name = "perfvmm",
    version,
    about,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Guest kernel: a bzImage or an uncompressed ELF vmlinux. perfvmm
    /// unpacks a bzImage whose payload is LZ4 itself, which leaves fewer
    /// guest pages touched than the guest's decompressor does (see
    /// --guest-decompress).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present_any = ["restore", "incoming"]
    )]
    pub kernel: Option<PathBuf>,

    /// Restore the VM a snapshot saved (`perfvmm ctl snapshot`) and run it
    /// on: its vCPUs, memory and devices come from DIR, so --kernel,
    /// --initrd, --cmdline, --cpus and --memory are not given. The policy,
    /// logs and API socket are this command line's.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["kernel", "initrd", "cmdline", "cpus", "memory", "guest_decompress"]
    )]
    pub restore: Option<PathBuf>,

    /// Wait at unix:PATH or tcp:IP:PORT for a VM another perfvmm sends
    /// (`perfvmm ctl migrate`) and run it on: as with --restore, the
    /// machine comes from the source and the policy, logs and API socket
    /// from this command line. A VM with more vCPUs than this policy's
    /// maximum, or that may have more memory, is refused, and runs on at
    /// its source.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with_all = ["kernel", "initrd", "cmdline", "cpus", "memory", "guest_decompress", "restore"]
    )]
    pub incoming: Option<Endpoint>,

    /// Let `perfvmm ctl migrate` send this VM to another perfvmm (off
    /// without it: the API refuses). The main thread's seccomp filter then
    /// allows connecting a socket.
    #[arg(long)]
    pub allow_migrate: bool,

    /// Where `perfvmm ctl snapshot NAME` writes snapshots, one directory
    /// each (NAME is one plain name, never a path); without it the API
    /// refuses snapshots. The main thread may then create files, in its
    /// seccomp filter.
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,

    /// Let the guest's own decompressor unpack a bzImage, as with any
    /// bootloader: more guest memory touched at boot, but the kernel
    /// randomises its address (KASLR), which a kernel unpacked by perfvmm
    /// does not.
    #[arg(long)]
    pub guest_decompress: bool,

    /// Initial ramdisk loaded for the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Extra kernel command-line arguments, appended to the default
    /// "console=ttyS0".
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,

    /// vCPUs at boot, and optionally the most the VM may grow to
    /// (the extra ones are declared to the guest but not enabled).
    #[arg(long, value_name = "N[,max=M]", default_value = "1")]
    pub cpus: CpuSpec,

    /// Guest memory at boot, and optionally the most it may grow to: the
    /// balloon shrinks it below the boot size, virtio-mem grows it up to max.
    #[arg(long, value_name = "SIZE[,max=SIZE]", default_value = "512M")]
    pub memory: MemSpec,

    /// Serve the control API (HTTP over this Unix socket): status
    /// (allocations and the hinted demand), recent decisions, Prometheus
    /// metrics, manual resize, policy reload. See `perfvmm ctl --help`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,

    /// Let this group's members use the API socket too (mode 0660); without
    /// it the socket is 0600 and serves perfvmm's own user and root only.
    #[arg(long, value_name = "GID", requires = "api_sock")]
    pub api_sock_group: Option<u32>,

    /// A directory whose policy files `perfvmm ctl reload FILE` may read;
    /// without it a reload reads only the --policy file perfvmm started with.
    #[arg(long, value_name = "DIR")]
    pub policy_dir: Option<PathBuf>,

    /// Write every hint the guest sends through the perf-hint device as one
    /// JSON line to this file (time, sequence number, kind, fields, outcome),
    /// and the device's counters as the last line when the VM ends.
    #[arg(long, value_name = "PATH")]
    pub hint_log: Option<PathBuf>,

    /// Policy file (TOML) saying how hints become vCPU and memory allocations; without
    /// it the built-in policy applies (`perfvmm policy --print-default`).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Write every policy decision (time, hints behind it, old and new
    /// allocation, reason, clamping and rate limiting) as one JSON line.
    #[arg(long, value_name = "PATH")]
    pub decision_log: Option<PathBuf>,

    /// Largest size of each of --hint-log and --decision-log: past it, lines
    /// are counted instead of written, and a last line says how many were
    /// dropped (a guest cannot fill the host's disk).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub log_limit: u64,

    /// Print boot timings (perfvmm start to first guest instruction and to
    /// the guest's /init, and when each setup step ended: memory mapped,
    /// policy and logs ready, kernel loaded, KVM VM created, devices
    /// attached, vCPUs created) and perfvmm's own memory use on standard
    /// error, as `setup_ms=step:ms,...`; with --restore, when the restore
    /// was ready (the guest runs on) and, in the same form, when its steps
    /// ended (state read, memory mapped, KVM set up, devices and vCPUs
    /// restored).
    #[arg(long)]
    pub boot_timer: bool,

    /// Run without seccomp filters. By default every thread (main, vCPU,
    /// API) may make only the system calls its work needs; a forbidden one
    /// ends perfvmm with status 159 and a line naming the thread and the
    /// call. For debugging only.
    #[arg(long)]
    pub no_seccomp: bool,

    /// More log output on standard error (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show or check policy files.
    Policy {
        /// Print the built-in policy as TOML.
        #[arg(long, conflicts_with = "check")]
        print_default: bool,
        /// Check a policy file and report the first problem with its line.
        #[arg(long, value_name = "FILE")]
        check: Option<PathBuf>,
    },
    /// Replay a recorded trace (the guest's demand samples and hints)
    /// through perfvmm's own policy engine, with resize latencies drawn from
    /// a model, and report allocation slack and shortage as resize-bench
    /// does. Touches no VM. See docs/simulator.md.
    #[command(after_help = SIMULATE_AFTER_HELP)]
    Simulate {
        /// The trace: perfvmm-trace JSON lines (docs/simulator.md).
        #[arg(long, value_name = "FILE")]
        trace: PathBuf,
        /// Policy file (TOML, as for --policy; its `mode` decides how
        /// allocations follow); the built-in policy without it.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Resize latencies: `nested` (measured by resize-bench in the
        /// nested harness), `hardware` (an estimate for hardware KVM), or a
        /// JSON file {"vcpus_ms":[..],"memory_ms":[..]} (a file named like a
        /// built-in model needs a path such as ./nested).
        #[arg(long, value_name = "nested|hardware|FILE", default_value = "nested")]
        latency: String,
        /// Seed of the latency draws: the same seed gives the same report.
        #[arg(long, value_name = "N", default_value_t = 1)]
        seed: u64,
        /// Print the report as JSON (shares from 0 to 1; differences in
        /// percentage points) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Predict a program's run time on more or fewer vCPUs, its memory,
    /// the hosts it fits and what a run costs — as profiled, or after a
    /// what-if change — from the profiles of earlier runs. Touches no VM.
    #[command(after_help = PREDICT_AFTER_HELP)]
    Predict(PredictArgs),
    /// Talk to a running perfvmm through its control API.
    Ctl {
        /// The VM's --api-sock.
        #[arg(long, value_name = "PATH")]
        api_sock: PathBuf,
        #[command(subcommand)]
        request: CtlRequest,
    },
}

/// The options of `perfvmm predict`.
#[derive(Debug, Clone, clap::Args)]
pub struct PredictArgs {
    /// Profiles of one program (`perfhint profile`), at one or more
    /// CPU counts.
    #[arg(required = true, value_name = "PROFILE")]
    pub profiles: Vec<PathBuf>,
    /// vCPU counts to predict for, comma-separated.
    #[arg(long, value_name = "LIST", default_value = "1,2,4,8,16")]
    pub vcpus: String,
    /// A change to predict the effect of (repeatable; see below).
    #[arg(long = "what-if", value_name = "CHANGE")]
    pub what_if: Vec<String>,
    /// Hosts the program could run on (TOML; see below).
    #[arg(long, value_name = "FILE")]
    pub hosts: Option<PathBuf>,
    /// Instance prices: `builtin` (shipped, dated) or a TOML file.
    #[arg(long, value_name = "builtin|FILE")]
    pub prices: Option<String>,
    /// The run must end within this (e.g. 90s, 10m, 2h).
    #[arg(long, value_name = "DURATION")]
    pub deadline: Option<String>,
    /// Runs a day, for the cost per month (30 days).
    #[arg(long, value_name = "N", default_value_t = 1.0)]
    pub runs_per_day: f64,
    /// Physical cores of the machine the VMs run on, profiled and
    /// predicted alike: vCPUs beyond them run no faster (default: as
    /// many as vCPUs).
    #[arg(long, value_name = "N")]
    pub host_cores: Option<u32>,
    /// What vCPUs are worth on that machine, measured: effective CPUs per
    /// vCPU count, e.g. `2=1.6,4=1.9` (as `--calibrate` prints it).
    #[arg(long, value_name = "N=CPUS,...")]
    pub host_scaling: Option<String>,
    /// The profiles are of a parallel calibration program, on 1 vCPU and
    /// on more: print what vCPUs are worth on the machine they ran on, as
    /// a `--host-scaling` value, instead of predicting.
    #[arg(long)]
    pub calibrate: bool,
    /// Memory added to the largest peak, in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 10.0)]
    pub memory_margin: f64,
    /// Print the prediction as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also draw it as an SVG picture.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlRequest {
    /// Allocation, bounds, hinted demand, open phases, memory devices and
    /// the guest's memory statistics (JSON).
    Status,
    /// The most recent policy decisions, oldest first (JSON).
    Decisions,
    /// Prometheus metrics (text exposition format).
    Metrics,
    /// Set the VM's size now, within the policy's bounds; logged as a decision.
    Resize {
        /// vCPU count.
        #[arg(long, value_name = "N", required_unless_present = "memory")]
        vcpus: Option<u32>,
        /// Guest memory.
        #[arg(long, value_name = "SIZE")]
        memory: Option<String>,
    },
    /// Read the policy file again (or FILE) and put it in force.
    Reload {
        #[arg(value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Pause the VM, write its state and memory to NAME under perfvmm's
    /// --snapshot-dir, and let it run on (or end it with --stop); restore
    /// with `perfvmm --restore DIR/NAME`.
    Snapshot {
        /// The snapshot's name: letters, digits, '-', '_' and '.'.
        #[arg(value_name = "NAME")]
        name: String,
        /// End the VM once the snapshot is written (exit status 0).
        #[arg(long)]
        stop: bool,
    },
    /// Move the running VM to a `perfvmm --incoming` waiting at TO (this
    /// perfvmm needs --allow-migrate): memory is copied while the guest
    /// runs, then the guest stops for at most about DOWNTIME for the rest.
    /// This perfvmm exits 0 once it has handed the VM over to the target,
    /// which then runs it; if anything fails before, the VM runs on here.
    Migrate {
        /// unix:PATH or tcp:IP:PORT.
        #[arg(long, value_name = "TO")]
        to: String,
        /// The pause the guest may notice, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 300)]
        downtime_ms: u64,
    },
}

pub use crate::policy::endpoint::Endpoint;

/// `--cpus N[,max=M]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuSpec {
    pub boot: u32,
    pub max: u32,
}

impl FromStr for CpuSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let boot_str = parts.next().unwrap_or_default().trim();
        let boot: u32 = boot_str
            .parse()
            .map_err(|_| format!("'{boot_str}' is not a vCPU count"))?;
        let mut max = boot;
        for part in parts {
            match part.trim().split_once('=') {
                Some(("max", v)) => {
                    max = v
                        .parse()
                        .map_err(|_| format!("'{v}' is not a vCPU count"))?;
                }
                _ => return Err(format!("unknown option '{part}' (expected max=M)")),
            }
        }
        if boot == 0 {
            return Err("a VM needs at least 1 vCPU".into());
        }
        if max < boot {
            return Err(format!("max={max} is below the boot count {boot}"));
        }
        if max > MAX_APIC_ID + 1 {
            return Err(format!(
                "max={max} is above the {} vCPUs perfvmm supports",
                MAX_APIC_ID + 1
            ));
        }
        Ok(CpuSpec { boot, max })
    }
}

/// `--memory SIZE[,max=SIZE]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemSpec {
    pub boot: u64,
    pub max: u64,
}

impl FromStr for MemSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let boot: MemSize = parts.next().unwrap_or_default().parse()?;
        let mut max = boot;
        for part in parts {
            match part.trim().split_once('=') {
                Some(("max", v)) => max = v.parse()?,
                _ => return Err(format!("unknown option '{part}' (expected max=SIZE)")),
            }
        }
        if max.0 < boot.0 {
            return Err(format!(
                "max={} MiB is below the boot size of {} MiB",
                max.0 >> 20,
                boot.0 >> 20
            ));
        }
        Ok(MemSpec {
            boot: boot.0,
            max: max.0,
        })
    }
}

/// A memory size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemSize(pub u64);

/// Smallest guest perfvmm will build: below this a Linux guest cannot boot.
pub const MIN_MEMORY: u64 = 32 << 20;
/// Largest guest perfvmm will build.
pub const MAX_MEMORY: u64 = 1 << 40;

impl FromStr for MemSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = parse_size(s)?;
        if bytes < MIN_MEMORY {
            return Err(format!(
                "{s} is below the minimum of {} MiB",
                MIN_MEMORY >> 20
            ));
        }
        if bytes > MAX_MEMORY {
            return Err(format!(
                "{s} is above the maximum of {} GiB",
                MAX_MEMORY >> 30
            ));
        }
        if bytes % 4096 != 0 {
            return Err(format!("{s} is not a multiple of 4 KiB"));
        }
        Ok(MemSize(bytes))
    }
}

/// Parses SIZE (see the help text): `512M`, `1G`, `1GiB`, `2048` (MiB).
pub fn parse_size(s: &str) -> Result<u64, String> {
    guest_hints::size::parse_size(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        // The size syntax itself is tested in guest_hints::size.
        let e = "12XB".parse::<MemSize>().unwrap_err();
        assert!(e.contains("'12XB'") && e.contains("unknown unit"), "{e}");
        assert!("1K".parse::<MemSize>().is_err());
        assert!("4T".parse::<MemSize>().is_err());
        assert_eq!("1G".parse::<MemSize>(), Ok(MemSize(1 << 30)));
        assert_eq!(
            "512M,max=1G".parse::<MemSpec>(),
            Ok(MemSpec {
                boot: 512 << 20,
                max: 1 << 30
            })
        );
        assert_eq!(
            "1G".parse::<MemSpec>(),
            Ok(MemSpec {
                boot: 1 << 30,
                max: 1 << 30
            })
        );
        assert!("1G,max=512M".parse::<MemSpec>().is_err());
        assert!("1G,min=2G".parse::<MemSpec>().is_err());
        assert!("1G,max=4T".parse::<MemSpec>().is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!("4".parse::<CpuSpec>(), Ok(CpuSpec { boot: 4, max: 4 }));
        assert_eq!(
            "2,max=8".parse::<CpuSpec>(),
            Ok(CpuSpec { boot: 2, max: 8 })
        );
        assert!("0".parse::<CpuSpec>().is_err());
        assert!("4,max=2".parse::<CpuSpec>().is_err());
        assert!("2,min=1".parse::<CpuSpec>().is_err());
        assert!("x".parse::<CpuSpec>().is_err());
        assert!("1,max=256".parse::<CpuSpec>().is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
