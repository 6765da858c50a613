//! A program with two phases, for `perfhint profile`: "two" keeps two
//! threads busy; "one" keeps one thread busy while it touches a buffer
//! (64 MiB unless told otherwise) over and over.
//!
//!   cargo build -p guest-hints --example phases_demo
//!   perfhint profile -o demo.profile.json -- target/debug/examples/phases_demo
//!
//! Arguments: `MS`, how long each phase lasts (default 600); `--mib N`, the
//! buffer of phase "one"; `--no-hints`, to announce no phases (then the
//! profiler has to find them). With `PHASES_DEMO_REPORT=1` it prints the
//! CPU time and wall time it measured for each phase.

use std::time::{Duration, Instant};

/// Busy for `d`, writing to every page of `buf` in turn.
fn spin(d: Duration, buf: &mut [u8]) -> u64 {
    let end = Instant::now() + d;
    let mut n = 0u64;
    let mut at = 0;
    while Instant::now() < end {
        n = std::hint::black_box(n.wrapping_add(1));
        if !buf.is_empty() {
            buf[at] = buf[at].wrapping_add(1);
            at = (at + 4096) % buf.len();
        }
    }
    n
}

/// This process's CPU time so far (all threads), in milliseconds, from
/// /proc/self/stat (clock ticks of 10 ms).
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|r| r.1).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() * 10
}

fn main() {
    let (mut ms, mut mib, mut hints) = (600u64, 64usize, true);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let parsed = match a.as_str() {
            "--no-hints" => {
                hints = false;
                Some(())
            }
            "--mib" => args.next().and_then(|v| v.parse().ok()).map(|v| mib = v),
            n => n.parse().ok().map(|v| ms = v),
        };
        if parsed.is_none() {
            eprintln!("phases_demo: usage: phases_demo [MS] [--mib N] [--no-hints]");
            std::process::exit(2);
        }
    }
    let report = std::env::var_os("PHASES_DEMO_REPORT").is_some();
    let d = Duration::from_millis(ms);
    let measure = |name: &str, f: &mut dyn FnMut()| {
        let (c0, t0) = (cpu_ms(), Instant::now());
        f();
        if report {
            println!(
                "phase {name} cpu_ms={} wall_ms={}",
                cpu_ms() - c0,
                t0.elapsed().as_millis()
            );
        }
    };
    measure("two", &mut || {
        let _two = hints.then(|| guest_hints::Phase::new("two").parallelism(2).begin());
        let helper = std::thread::spawn(move || spin(d, &mut []));
        spin(d, &mut []);
        let _ = helper.join();
    });
    measure("one", &mut || {
        let _one = hints.then(|| {
            guest_hints::Phase::new("one")
                .parallelism(1)
                .working_set((mib as u64) << 20)
                .begin()
        });
        // Filled at once (every page touched now), then touched over and over.
        let mut buf = vec![1u8; mib << 20];
        spin(d, &mut buf);
    });
}
