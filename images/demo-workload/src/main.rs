//! The demo guest's workload: four announced phases — serial, parallel over
//! N threads, memory-heavy (a working set of M MiB that may peak at twice
//! that) and I/O-heavy — each declaring its needs through guest-hints as it
//! starts. Its manifest is embedded at compile time (`perfhint inspect
//! demo-workload`); `perfhint profile` + `perfhint embed` add a per-phase
//! schedule so the host can provision each phase before it begins.
//!
//! Phase lengths (at `--scale 1`): serial 2.5 s, parallel 2 s, memory 1.5 s,
//! I/O 0.5 s. Under nested TCG a vCPU hot-add takes 0.3–1.2 s to show in
//! the guest, so the serial phase is about twice the slowest resize: long
//! enough for a schedule to have the parallel phase's vCPUs online in time.
//!
//!   demo-workload [--threads N] [--memory-mib M] [--io-mib K] [--scale F]

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use guest_hints::wire::{IoClass, Locality};
use guest_hints::{manifest, ManifestBuilder, Phase};

manifest!(ManifestBuilder::new("demo-workload")
    .parallelism(4, 4, 0.2)
    .memory(64 << 20, 96 << 20)
    .io(IoClass::Sequential, 32 << 20)
    .placement(true, false, Locality::SharedCache)
    .phase(1, "serial", SERIAL_MS as u32)
    .phase(2, "parallel", PARALLEL_MS as u32)
    .phase(3, "memory", MEMORY_MS as u32)
    .phase(4, "io", IO_MS as u32)
    .build());

const SERIAL_MS: u64 = 2_500;
const PARALLEL_MS: u64 = 2_000;
const MEMORY_MS: u64 = 1_500;
const IO_MS: u64 = 500;

/// CPUs online in the guest now.
fn cpus_online() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

struct Args {
    threads: u32,
    memory_mib: u64,
    io_mib: u64,
    scale: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        threads: 4,
        memory_mib: 256,
        io_mib: 16,
        scale: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag}: '{value}' is not a number");
        match flag.as_str() {
            "--threads" => a.threads = value.parse().map_err(bad)?,
            "--memory-mib" => a.memory_mib = value.parse().map_err(bad)?,
            "--io-mib" => a.io_mib = value.parse().map_err(bad)?,
            "--scale" => {
                a.scale = value
                    .parse()
                    .map_err(|_| format!("{flag}: '{value}' is not a number"))?
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if a.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    Ok(a)
}

/// Integer busy work for about `d`.
fn spin(d: Duration) -> u64 {
    let start = Instant::now();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while start.elapsed() < d {
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
    }
    black_box(x)
}

/// The guest's MemTotal in MiB (0 where /proc/meminfo cannot be read).
fn mem_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 10)
}

fn ms(base: u64, scale: f64) -> Duration {
    Duration::from_millis((base as f64 * scale) as u64)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo-workload: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "demo-workload: perf-hint device {}",
        if guest_hints::is_connected() {
            "present"
        } else {
            "absent"
        }
    );
    guest_hints::announce_manifest();
    let started = Instant::now();

    {
        let _p = Phase::new("serial")
            .expected(ms(SERIAL_MS, args.scale))
            .parallelism(1)
            .begin();
        println!("demo-workload: phase serial");
        spin(ms(SERIAL_MS, args.scale));
    }
    {
        let n = args.threads;
        let _p = Phase::new("parallel")
            .expected(ms(PARALLEL_MS, args.scale))
            .parallelism(n)
            .begin();
        println!(
            "demo-workload: phase parallel ({n} threads) starts with {} CPU(s) online",
            cpus_online()
        );
        let d = ms(PARALLEL_MS, args.scale);
        let handles: Vec<_> = (0..n)
            .map(|_| std::thread::spawn(move || spin(d)))
            .collect();
        for h in handles {
            let _ = h.join();
        }
        println!(
            "demo-workload: parallel phase ends with {} CPU(s) online",
            cpus_online()
        );
    }
    {
        let bytes = args.memory_mib << 20;
        let _p = Phase::new("memory")
            .expected(ms(MEMORY_MS, args.scale))
            .memory(bytes, 2 * bytes)
            .begin();
        println!("demo-workload: phase memory ({} MiB)", args.memory_mib);
        let mut v = vec![0u8; bytes as usize];
        let start = Instant::now();
        let mut pass = 0u8;
        while start.elapsed() < ms(MEMORY_MS, args.scale) || pass == 0 {
            for i in (0..v.len()).step_by(4096) {
                v[i] = v[i].wrapping_add(pass | 1);
            }
            pass = pass.wrapping_add(1);
        }
        black_box(&v);
        println!(
            "demo-workload: memory phase ends with MemTotal {} MiB",
            mem_total_mib()
        );
    }
    {
        let bytes = args.io_mib << 20;
        let _p = Phase::new("io")
            .expected(ms(IO_MS, args.scale))
            .io(IoClass::Sequential, bytes)
            .begin();
        println!("demo-workload: phase io ({} MiB)", args.io_mib);
        let path = std::env::temp_dir().join("demo-workload.io");
        let block = vec![0x5au8; 1 << 20];
        let r = (|| -> std::io::Result<u64> {
            let mut f = std::fs::File::create(&path)?;
            for _ in 0..args.io_mib {
                f.write_all(&block)?;
            }
            f.sync_all()?;
            let mut back = Vec::new();
            std::fs::File::open(&path)?.read_to_end(&mut back)?;
            std::fs::remove_file(&path)?;
            Ok(back.len() as u64)
        })();
        if let Err(e) = r {
            eprintln!("demo-workload: io phase: {e}");
        }
    }
    println!(
        "demo-workload: work done in {} ms",
        started.elapsed().as_millis()
    );
    // Idle from here on: this hint (outside any phase) overrides the
    // manifest's typical parallelism, so the host can take back what the
    // parallel phase got.
    guest_hints::parallelism(1);
    println!("demo-workload: idle");
    // Long enough for the host's 2 s shrink window and the balloon to act.
    std::thread::sleep(ms(6_000, args.scale));
    println!(
        "demo-workload: idle ends with {} CPU(s) online, MemTotal {} MiB",
        cpus_online(),
        mem_total_mib()
    );
    let s = guest_hints::stats();
    println!(
        "demo-workload: done, hints sent={} dropped={}",
        s.sent, s.dropped
    );
}
