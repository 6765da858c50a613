//! Boot benchmark: boots the demo guest several times (nested where the
//! host's KVM cannot run Linux) and prints perfvmm's boot-timer figures:
//! start → first guest instruction, start → guest /init, and perfvmm's own
//! memory (RSS beyond the guest pages it maps).
//!
//!   cargo run --release -p perfvmm-tests --bin boot-bench -- [RUNS] [--cpus N] [--memory SIZE]

use perfvmm_tests::GuestRun;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let runs: usize = match args.peek().and_then(|a| a.parse().ok()) {
        Some(n) => {
            args.next();
            n
        }
        None => 5,
    };
    let extra: Vec<String> = args.collect();
    let mut perfvmm_args = vec!["--boot-timer".to_string()];
    perfvmm_args.extend(extra.iter().cloned());
    if !extra.iter().any(|a| a == "--memory") {
        perfvmm_args.extend(["--memory".into(), "256M".into()]);
    }
    let refs: Vec<&str> = perfvmm_args.iter().map(String::as_str).collect();

    println!(
        "boot-bench: mode {:?}, {runs} runs, perfvmm {}",
        perfvmm_tests::mode(),
        refs.join(" ")
    );
    let (mut first, mut init, mut own, mut peak) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let out = GuestRun::demo("pvrun=poweroff", &refs).run();
        let Some(line) = out
            .console
            .lines()
            .find(|l| l.contains("perfvmm: boot-timer:"))
        else {
            eprintln!(
                "run {i}: no boot-timer line; console tail:\n{}",
                out.tail(20)
            );
            std::process::exit(1);
        };
        let get = |k| field(line, k).unwrap_or(f64::NAN);
        println!(
            "run {i}: first_instruction {:.1} ms, /init {:.1} ms, vmm own {:.0} KiB, peak RSS {:.0} KiB",
            get("first_instruction_ms"),
            get("init_ms"),
            get("vmm_own_kib"),
            get("peak_rss_kib")
        );
        first.push(get("first_instruction_ms"));
        init.push(get("init_ms"));
        own.push(get("vmm_own_kib"));
        peak.push(get("peak_rss_kib"));
    }
    println!(
        "median: start→first instruction {:.1} ms",
        median(&mut first)
    );
    println!("median: start→guest /init      {:.1} ms", median(&mut init));
    println!(
        "median: perfvmm own memory     {:.0} KiB (RSS beyond guest pages)",
        median(&mut own)
    );
    println!(
        "median: peak RSS               {:.0} KiB (guest-touched pages included)",
        median(&mut peak)
    );
}
