//! perfhintd: watches process starts in the guest and, for every program
//! whose binary embeds a perf-hint manifest (`guest_hints::manifest!` at
//! build time, or `perfhint embed` afterwards), sends that manifest through
//! `/dev/perfhint` — so an unmodified, un-relinked program has its needs,
//! and its profile-derived schedule, announced as it starts.
//!
//! Process starts come from the kernel's process-events connector (netlink,
//! `PROC_EVENT_EXEC`; needs root). Where that is unavailable perfhintd
//! polls `/proc` for new processes instead, and says so.

#![deny(unsafe_code)]

/// One line on standard error in a single write, so that it is not torn
/// apart by other programs writing to the same console.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

mod proc_events;
mod scan;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use scan::Announcer;

/// Announces the perf-hint manifests of programs as they start.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Poll /proc every this many milliseconds instead of listening to the
    /// kernel's process events (also the fallback when those are unavailable).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    poll_ms: Option<u64>,
    /// Print a line for every manifest sent.
    #[arg(short, long)]
    verbose: bool,
    /// Create this file once perfhintd is watching, so that a caller can
    /// wait for it before starting programs.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<std::path::PathBuf>,
}

/// Says perfhintd is watching (a file, and a line with --verbose).
fn ready(args: &Args, how: &str) {
    if args.verbose {
        say!("perfhintd: watching process starts ({how})");
    }
    if let Some(path) = &args.ready_file {
        if let Err(e) = std::fs::write(path, b"") {
            say!("perfhintd: {}: {e}", path.display());
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut announcer = Announcer::new(args.verbose);
    let events = match args.poll_ms {
        Some(_) => None,
        None => match proc_events::Listener::open() {
            Ok(l) => Some(l),
            Err(e) => {
                say!("perfhintd: process events unavailable ({e}); polling /proc");
                None
            }
        },
    };
    match events {
        Some(mut listener) => {
            ready(&args, "process events");
            loop {
                match listener.next_exec() {
                    Ok(pid) => announcer.started(pid),
                    Err(e) => {
                        say!("perfhintd: process events: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
        }
        None => {
            let period = Duration::from_millis(args.poll_ms.unwrap_or(20));
            let mut poller = scan::Poller::new();
            ready(&args, "polling /proc");
            loop {
                for pid in poller.new_processes() {
                    announcer.started(pid);
                }
                std::thread::sleep(period);
            }
        }
    }
}
